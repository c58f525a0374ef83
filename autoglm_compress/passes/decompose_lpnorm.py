"""decompose_lpnorm: ``LpNormalization`` written out as the ops every arm format has.

Sentence-embedding heads end in ``x / ‖x‖`` along the feature axis; the loader's simplifier
turns that ``ReduceL2`` + ``Div`` into one ``LpNormalization`` node, which neither TFLite nor ncnn
has as a kernel. This pass writes it back as ``Div(x, Sqrt(ReduceSum(x · x, [axis], keepdims)))``
for p = 2 and ``Div(x, ReduceSum(Abs(x), [axis], keepdims))`` for p = 1 — the same numbers (ONNX
defines LpNormalization as exactly that quotient, with no epsilon). The output keeps the node's
output name (calibration statistics are keyed by it). The arm formats list it among their
prepare passes; x86 keeps the one node (onnxruntime has the kernel).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.passes.base import CompressPass, PassConfig, register
from autoglm_compress.passes.fuse_gelu import replace_pattern, run_counted

__all__ = ["DecomposeLpNormPass", "DecomposeLpNormConfig", "decompose_lpnorm"]


@dataclasses.dataclass(frozen=True)
class DecomposeLpNormConfig(PassConfig):
    """decompose_lpnorm has no options: every LpNormalization with p 1 or 2 and a known rank."""


def _decompose(g: ir.Graph, n: ir.Node) -> bool:
    x, y = n.inputs[0], n.outputs[0]
    p = n.attributes.get_int("p", 2)
    if x is None or x.shape is None or p not in (1, 2):
        return False
    axis = n.attributes.get_int("axis", -1) % len(x.shape)
    base = n.name or y.name
    axes = ir.Value(name=f"{base}_axes", shape=ir.Shape([1]), type=ir.TensorType(ir.DataType.INT64),
                    const_value=ir.tensor(np.asarray([axis], np.int64)))
    g.register_initializer(axes)
    if p == 2:
        first = ir.Node("", "Mul", [x, x], name=f"{base}_square", num_outputs=1)
    else:
        first = ir.Node("", "Abs", [x], name=f"{base}_abs", num_outputs=1)
    red = ir.Node("", "ReduceSum", [first.outputs[0], axes], attributes=[ir.AttrInt64("keepdims", 1)],
                  name=f"{base}_sum", num_outputs=1)
    nodes = [first, red]
    norm = red.outputs[0]
    if p == 2:
        sq = ir.Node("", "Sqrt", [norm], name=f"{base}_sqrt", num_outputs=1)
        nodes.append(sq)
        norm = sq.outputs[0]
    div = ir.Node("", "Div", [x, norm], name=f"{base}_div", num_outputs=1)
    nodes.append(div)
    kept = [*x.shape]
    kept[axis] = 1
    for k, node in enumerate(nodes[:-1]):
        v = node.outputs[0]
        v.name, v.type = f"{base}_{node.name.rsplit('_', 1)[-1]}{k}", x.type
        v.shape = ir.Shape(x.shape) if node is first else ir.Shape(kept)
    replace_pattern(g, y, [n], nodes, div.outputs[0])
    return True


@register
class DecomposeLpNormPass(CompressPass):
    """LpNormalization (p 1 or 2) → Mul/Abs, ReduceSum, Sqrt, Div."""

    name = "decompose_lpnorm"
    config_class = DecomposeLpNormConfig

    def call(self, model: ir.Model) -> PassResult:
        done = sum(_decompose(model.graph, n) for n in [n for n in model.graph
                                                         if n.op_type == "LpNormalization"])
        self.stats.update(decomposed=done)
        return PassResult(model, modified=bool(done))


def decompose_lpnorm(model: ir.Model) -> int:
    """How many LpNormalization nodes were written out (in place)."""
    return run_counted(DecomposeLpNormPass, model, "decomposed")

"""fuse_layernorm: a LayerNorm written out op by op becomes one ``LayerNormalization`` node.

Exporters that predate ONNX's LayerNormalization (paddle2onnx, torch below opset 17) spell it
``d = x − ReduceMean(x); (d / Sqrt(ReduceMean(d²) + ε)) · γ + β`` over the last axis — nine
nodes, two reductions. Targets with a LayerNorm kernel (ncnn's LayerNorm) want it whole. The match
needs the reductions on the last axis only (keepdims), d² as ``Pow(d, 2)`` or ``d · d``, a constant
ε, and γ / β constant vectors of the last axis' size (each optional: ones / zeros). The output
keeps the name of the pattern's last value. A match whose inner values are read elsewhere is
left alone. The fused node is ONNX's LayerNormalization, which needs opset ≥ 17: on an older
model the pass changes nothing (raising the opset would touch every other op) — the ncnn lowering
uses ``match_layernorm`` directly and writes its LayerNorm layer whatever the opset.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.ir_ops import const_array
from autoglm_compress.passes.base import CompressPass, PassConfig, register
from autoglm_compress.passes.fuse_gelu import (
    _only_use,
    _other,
    _scalar,
    replace_pattern,
    run_counted,
)

__all__ = ["FuseLayerNormPass", "FuseLayerNormConfig", "fuse_layernorm", "match_layernorm"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FuseLayerNormConfig(PassConfig):
    """fuse_layernorm has no options: every last-axis LayerNorm pattern whose parts have no
    other reader."""


def _last_axis_mean(node: ir.Node | None, rank: int) -> bool:
    if node is None or node.op_type != "ReduceMean" or not node.attributes.get_int("keepdims", 1):
        return False
    axes = node.attributes.get_ints("axes", None)
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        arr = const_array(node.inputs[1])
        axes = None if arr is None else arr.reshape(-1).tolist()
    return axes is not None and [int(a) % rank for a in axes] == [rank - 1]


def _vector(v: ir.Value | None, size: int) -> np.ndarray | None:
    arr = const_array(v)
    if arr is None or arr.size != size or any(d != 1 for d in arr.shape[:-1]):
        return None
    return arr.astype(np.float32).reshape(-1)


def match_layernorm(div: ir.Node):
    """(x, the pattern's output, its nodes, ε, γ, β) for the final Div of a LayerNorm, or None."""
    if div.op_type != "Div":
        return None
    d, std = div.inputs
    sub, sq = d.producer(), std.producer()
    if sub is None or sub.op_type != "Sub" or sq is None or sq.op_type != "Sqrt" \
            or _only_use(std, "Div") is not div:
        return None
    x, mean = sub.inputs
    rank = len(x.shape or ())
    if rank < 2 or not isinstance(x.shape[-1], int) or not _last_axis_mean(mean.producer(), rank) \
            or mean.producer().inputs[0] is not x or _only_use(mean, "Sub") is not sub:
        return None
    add = sq.inputs[0].producer()
    if add is None or add.op_type != "Add" or _only_use(add.outputs[0], "Sqrt") is not sq:
        return None
    var = next((v for v in add.inputs if const_array(v) is None), None)
    eps = _scalar(_other(add, var)) if var is not None else None
    red = var.producer() if var is not None else None
    if eps is None or not _last_axis_mean(red, rank) or _only_use(var, "Add") is not add:
        return None
    power = red.inputs[0].producer()
    if power is None or _only_use(power.outputs[0], "ReduceMean") is not red:
        return None
    square = (power.op_type == "Pow" and power.inputs[0] is d and _scalar(power.inputs[1]) == 2.0) \
        or (power.op_type == "Mul" and power.inputs[0] is d and power.inputs[1] is d)
    readers = {id(u) for u, _ in d.uses()}
    if not square or readers != {id(power), id(div)} or d.is_graph_output():
        return None
    nodes = [mean.producer(), sub, power, red, add, sq, div]
    size = int(x.shape[-1])
    y, gamma, beta = div.outputs[0], np.ones(size, np.float32), np.zeros(size, np.float32)
    mul = _only_use(y, "Mul")
    g = _vector(_other(mul, y), size) if mul is not None else None
    if g is not None:
        nodes.append(mul)
        y, gamma = mul.outputs[0], g
        plus = _only_use(y, "Add")
        b = _vector(_other(plus, y), size) if plus is not None else None
        if b is not None:
            nodes.append(plus)
            y, beta = plus.outputs[0], b
    return x, y, nodes, eps, gamma, beta


@register
class FuseLayerNormPass(CompressPass):
    name = "fuse_layernorm"
    config_class = FuseLayerNormConfig

    def call(self, model: ir.Model) -> PassResult:
        g = model.graph
        fused = 0
        if model.opset_imports.get("", 0) < 17:
            self.stats.update(layernorm_fused=0, skipped="opset < 17 has no LayerNormalization")
            return PassResult(model, modified=False)
        for div in [n for n in g if n.op_type == "Div"]:
            if div.graph is None:
                continue
            m = match_layernorm(div)
            if m is None:
                continue
            x, y, nodes, eps, gamma, beta = m
            name = y.name
            consts = []
            for tag, arr in (("scale", gamma), ("bias", beta)):
                v = ir.Value(name=f"{name}_ln_{tag}", shape=ir.Shape(arr.shape),
                             type=ir.TensorType(ir.DataType.FLOAT),
                             const_value=ir.tensor(arr, name=f"{name}_ln_{tag}"))
                g.register_initializer(v)
                consts.append(v)
            node = ir.Node("", "LayerNormalization", [x, *consts],
                           attributes=[ir.AttrInt64("axis", -1), ir.AttrFloat32("epsilon", eps)],
                           name=f"{div.name or 'layernorm'}_fused", num_outputs=1)
            replace_pattern(g, y, nodes, [node], node.outputs[0])
            fused += 1
        self.stats.update(layernorm_fused=fused)
        logger.info("fuse_layernorm: %d fused", fused)
        return PassResult(model, modified=bool(fused))


def fuse_layernorm(model: ir.Model) -> int:
    """How many LayerNorm patterns were fused (in place)."""
    return run_counted(FuseLayerNormPass, model, "layernorm_fused")

"""fuse_gelu: the exact GELU written out with Erf becomes one ``com.microsoft.Gelu`` node.

Exporters spell GELU as ``0.5 · x · (1 + erf(x / √2))`` — five nodes (Div or Mul by 1/√2, Erf, Add 1,
two Muls, in any of the three orders torch and Keras exporters use); paddle2onnx folds the 0.5 into
the next layer and writes ``x · (1 + erf(x / √2))``, which becomes Gelu then Mul 2. Targets with a GELU kernel
(TFLite GELU, TensorRT, onnxruntime's fused contrib op) want it whole: one kernel instead of five,
and under INT8 one quantized op instead of an int8 Add/Mul chain around a float Erf. The fused node
is onnxruntime's contrib ``Gelu`` (domain ``com.microsoft``), so the IR still runs in onnxruntime and
in our executor. The output keeps the name of the pattern's last value (calibration statistics are
keyed by it). A match whose inner values are read elsewhere is left alone. In the paddle spelling
the Gelu's output is a new value before the Mul 2: when the run has calibration statistics (the
pass runs after calibration, as a target's prepare pass) it gets the observed range of the
pattern's output halved, so the quantizer puts a Q after the Gelu too and it runs as one int8 op.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.calibration.observers import Observer
from autoglm_compress.ir_ops import const_array
from autoglm_compress.passes.base import CompressPass, PassConfig, register

__all__ = ["FuseGeluPass", "FuseGeluConfig", "GELU_DOMAIN", "fuse_gelu", "match_gelu",
           "replace_pattern", "run_counted"]

logger = logging.getLogger(__name__)

GELU_DOMAIN = "com.microsoft"


@dataclasses.dataclass(frozen=True)
class FuseGeluConfig(PassConfig):
    """fuse_gelu has no options: every exact-GELU pattern whose parts have no other reader."""


def _scalar(v: ir.Value | None) -> float | None:
    a = const_array(v)
    return float(a.reshape(-1)[0]) if a is not None and a.size == 1 else None


def _other(node: ir.Node, v: ir.Value) -> ir.Value | None:
    """The input of a binary ``node`` that is not ``v``."""
    a, b = node.inputs[0], node.inputs[1]
    return b if a is v else a if b is v else None


def _only_use(v: ir.Value, op: str) -> ir.Node | None:
    uses = list(v.uses())
    if len(uses) != 1 or v.is_graph_output():
        return None
    n = uses[0][0]
    return n if n.op_type == op else None


def match_gelu(erf: ir.Node) -> tuple[ir.Value, ir.Value, list[ir.Node], float] | None:
    """(x, the pattern's output value, its nodes, the factor on GELU: 1, or 2 where the 0.5 was
    folded away) for the Erf of a GELU, else None."""
    scaled = erf.inputs[0]
    pre = scaled.producer() if scaled is not None else None
    if pre is None or pre.op_type not in ("Div", "Mul") or _only_use(scaled, "Erf") is None:
        return None
    c = _scalar(pre.inputs[1])
    want = np.sqrt(2.0) if pre.op_type == "Div" else 1.0 / np.sqrt(2.0)
    if c is None or abs(c - want) > 1e-3 * want:
        return None
    x = pre.inputs[0]
    add = _only_use(erf.outputs[0], "Add")
    if add is None or _scalar(_other(add, erf.outputs[0])) != 1.0:
        return None
    a = add.outputs[0]
    m1 = _only_use(a, "Mul")
    if m1 is None:
        return None
    nodes = [pre, erf, add, m1]
    other = _other(m1, a)
    if other is x:  # (x · (1 + erf)) · 0.5, or x · (1 + erf) = 2·GELU (paddle2onnx)
        m2 = _only_use(m1.outputs[0], "Mul")
        if m2 is None or _scalar(_other(m2, m1.outputs[0])) != 0.5:
            return x, m1.outputs[0], nodes, 2.0
        return x, m2.outputs[0], nodes + [m2], 1.0
    if _scalar(other) == 0.5:  # x · ((1 + erf) · 0.5)
        m2 = _only_use(m1.outputs[0], "Mul")
        if m2 is None or _other(m2, m1.outputs[0]) is not x:
            return None
        return x, m2.outputs[0], nodes + [m2], 1.0
    half = other.producer() if other is not None else None  # (0.5 · x) · (1 + erf)
    if (half is not None and half.op_type == "Mul" and _only_use(other, "Mul") is m1
            and x in half.inputs and _scalar(_other(half, x)) == 0.5):
        return x, m1.outputs[0], nodes + [half], 1.0
    return None


class ScaledRange(Observer):
    """The range of the tensor ``base`` observes divided by ``factor`` > 0: a value calibration
    never saw that is ``y / factor`` exactly (the Gelu before the paddle spelling's Mul 2)."""

    def __init__(self, base: Observer, factor: float, name: str):
        super().__init__(name)
        self.base, self.factor = base, float(factor)

    def range(self, symmetric: bool | None = None, bits: int = 8):
        lo, hi = self.base.range(symmetric=symmetric, bits=bits)
        return lo / self.factor, hi / self.factor


@register
class FuseGeluPass(CompressPass):
    name = "fuse_gelu"
    config_class = FuseGeluConfig

    def _derive_range(self, y: str, gelu: str, factor: float) -> None:
        """Calibration statistics for the new Gelu output: y's range / factor."""
        observers = getattr(getattr(self.ctx, "stats", None), "observers", None)
        if observers is not None and y in observers:
            observers[gelu] = ScaledRange(observers[y], factor, gelu)
            self.count("gelu_ranges_derived")

    def call(self, model: ir.Model) -> PassResult:
        g = model.graph
        fused = 0
        for erf in [n for n in g if n.op_type == "Erf"]:
            m = match_gelu(erf)
            if m is None:
                continue
            x, y, nodes, factor = m
            name = y.name
            node = ir.Node(GELU_DOMAIN, "Gelu", [x], name=f"{erf.name or 'gelu'}_fused",
                           num_outputs=1)
            new_nodes, new = [node], node.outputs[0]
            if factor != 1.0:  # x · (1 + erf(x/√2)) = 2 · GELU(x)
                new.shape, new.type, new.name = y.shape, y.type, f"{name}_gelu"
                two = ir.Value(name=f"{name}_two", shape=ir.Shape([]), type=y.type,
                               const_value=ir.tensor(np.asarray(factor, np.float32)))
                g.register_initializer(two)
                self._derive_range(name, new.name, factor)
                mul = ir.Node("", "Mul", [new, two], name=f"{erf.name or 'gelu'}_x2",
                              num_outputs=1)
                new_nodes.append(mul)
                new = mul.outputs[0]
            replace_pattern(g, y, nodes, new_nodes, new)
            fused += 1
        if fused and GELU_DOMAIN not in model.opset_imports:
            model.opset_imports[GELU_DOMAIN] = 1
        self.stats.update(gelu_fused=fused)
        logger.info("fuse_gelu: %d fused", fused)
        return PassResult(model, modified=bool(fused))


def replace_pattern(graph: ir.Graph, y: ir.Value, nodes, new_nodes, new: ir.Value) -> None:
    """Put ``new_nodes`` (ending in ``new``) in place of the pattern ``nodes`` whose output is
    ``y``; ``new`` takes y's name, shape and type (calibration statistics are keyed by name)."""
    name = y.name
    new.shape, new.type = y.shape, y.type
    ir.convenience.replace_nodes_and_values(graph, y.producer(), nodes, new_nodes, [y], [new])
    new.name = name


def run_counted(pass_class, model: ir.Model, key: str) -> int:
    """Run a fusion pass in place (a target's ``prepare``); its ``key`` count."""
    p = pass_class()
    p(model)
    return int(p.stats.get(key, 0))


def fuse_gelu(model: ir.Model) -> int:
    """How many GELU patterns were fused (in place)."""
    return run_counted(FuseGeluPass, model, "gelu_fused")

"""equalize: cross-layer equalization of consecutive convolutions (Nagel et al. 2019, data-free).

For conv1 → [Relu] → conv2, per channel i of conv1's output:
    r1_i = max|W1[i, …]|,  r2_i = max|W2[:, i, …]| (depthwise conv2: max|W2[i, …]|)
    s_i  = √(r1_i / r2_i)
    W1[i] ← W1[i] / s_i,  b1[i] ← b1[i] / s_i,  W2[:, i] ← W2[:, i] · s_i
Exact in FP32 because relu(z / s) = relu(z) / s for s > 0; afterwards both ranges equal √(r1_i·r2_i),
which evens out per-channel weight ranges (depthwise-separable nets: per-tensor weights and the
activation range between the two convs become usable). Activations that are not positively
homogeneous (Clip/ReLU6, HardSwish, Sigmoid, …) break the identity: such pairs are skipped and
counted ``skipped_nonhomogeneous``. Repeated for ``iterations`` rounds (chains converge).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.ir_ops import (
    bias_input,
    bias_value,
    const_array,
    groups,
    in_channel_axis,
    out_channel_axis,
    weight_input,
    weight_value,
)
from autoglm_compress.ir_utils import add_initializer
from autoglm_compress.passes.base import CompressPass, PassConfig, field, register

__all__ = ["CrossLayerEqualizationPass", "EqualizeConfig"]

logger = logging.getLogger(__name__)
_HOMOGENEOUS = {"Relu"}


@dataclasses.dataclass(frozen=True)
class EqualizeConfig(PassConfig):
    iterations: int = field(3, help="equalization rounds over the whole graph")


def _single_reader(v: ir.Value) -> ir.Node | None:
    uses = list(v.uses())
    if len(uses) != 1 or v.is_graph_output():
        return None
    return uses[0][0]


def _set(g: ir.Graph, node: ir.Node, idx: int, arr: np.ndarray) -> None:
    old = node.inputs[idx]
    stem = old.name.split("_eq")[0] if old is not None else f"{node.name}_bias"
    node.replace_input_with(idx, add_initializer(g, f"{stem}_eq", arr.astype(np.float32)))


def _absmax(w: np.ndarray, axis: int) -> np.ndarray:
    """max|W| per index of ``axis``."""
    return np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)


def _along(s: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """``s`` shaped to broadcast along ``axis`` of an ``ndim``-d weight."""
    return s.reshape([-1 if i == axis else 1 for i in range(ndim)])


def _weight(node: ir.Node) -> np.ndarray | None:
    return const_array(weight_value(node))


def _channel_ratio(node: ir.Node) -> float:
    w = _weight(node)
    r = _absmax(w, out_channel_axis(node, w.ndim))
    return float(r.max() / max(r.min(), 1e-12))


def _reading_axis(c2: ir.Node, w2: np.ndarray) -> int:
    """Axis of conv2's weight indexed by conv1's output channels: its input-channel axis, or, for a
    depthwise conv2 (one input channel per group), its output-channel axis."""
    return out_channel_axis(c2, w2.ndim) if groups(c2) != 1 else in_channel_axis(c2, w2.ndim)


@register
class CrossLayerEqualizationPass(CompressPass):
    name = "equalize"
    config_class = EqualizeConfig

    def call(self, model: ir.Model) -> PassResult:
        pairs = self._pairs(model.graph)
        if pairs:
            self.stats["range_ratio_before"] = round(
                float(np.mean([_channel_ratio(a) for a, _ in pairs])), 3
            )
        for _ in range(max(1, self.config.iterations)):
            for c1, c2 in pairs:
                self._equalize(model.graph, c1, c2)
        if pairs:
            ir.passes.common.RemoveUnusedNodesPass()(model)  # drops the replaced initializers
            self.stats["pairs_equalized"] = len(pairs)
            self.stats["range_ratio_after"] = round(
                float(np.mean([_channel_ratio(a) for a, _ in pairs])), 3
            )
        logger.info("equalize: %s", self.stats)
        return PassResult(model, modified=bool(pairs))

    def _pairs(self, g: ir.Graph) -> list[tuple[ir.Node, ir.Node]]:
        pairs = []
        for c1 in g:
            if c1.op_type != "Conv" or _weight(c1) is None:
                continue
            nxt = _single_reader(c1.outputs[0])
            if nxt is not None and nxt.op_type not in ("Conv",) and len(nxt.outputs) == 1:
                if nxt.op_type not in _HOMOGENEOUS:
                    after = _single_reader(nxt.outputs[0])
                    if after is not None and after.op_type == "Conv":
                        self.count("skipped_nonhomogeneous")
                    continue
                nxt = _single_reader(nxt.outputs[0])
            if nxt is None or nxt.op_type != "Conv" or _weight(nxt) is None:
                continue
            if self._compatible(c1, nxt):
                pairs.append((c1, nxt))
        return pairs

    def _compatible(self, c1: ir.Node, c2: ir.Node) -> bool:
        w1, w2 = _weight(c1), _weight(c2)
        n1 = w1.shape[out_channel_axis(c1, w1.ndim)]
        g2, in2 = groups(c2), in_channel_axis(c2, w2.ndim)
        depthwise = (
            g2 == n1 and w2.shape[in2] == 1 and w2.shape[out_channel_axis(c2, w2.ndim)] == n1
        )
        return g2 == 1 and w2.shape[in2] == n1 or depthwise

    def _equalize(self, g: ir.Graph, c1: ir.Node, c2: ir.Node) -> None:
        w1, w2 = _weight(c1), _weight(c2)
        ax1, ax2 = out_channel_axis(c1, w1.ndim), _reading_axis(c2, w2)
        r1, r2 = _absmax(w1, ax1), _absmax(w2, ax2)
        ok = (r1 > 0) & (r2 > 0)
        s = np.where(ok, np.sqrt(np.where(ok, r1, 1) / np.where(ok, r2, 1)), 1.0)
        _set(g, c1, weight_input(c1), w1 / _along(s, ax1, w1.ndim))
        b1 = const_array(bias_value(c1))
        if b1 is not None:
            _set(g, c1, bias_input(c1), b1 / s)
        _set(g, c2, weight_input(c2), w2 * _along(s, ax2, w2.ndim))

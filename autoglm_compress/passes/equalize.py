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

from autoglm_compress.ir_utils import add_initializer
from autoglm_compress.passes.base import CompressPass, PassConfig, field, register
from autoglm_compress.quantization.qdq import const_array

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


def _channel_ratio(w: np.ndarray) -> float:
    r = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    return float(r.max() / max(r.min(), 1e-12))


@register
class CrossLayerEqualizationPass(CompressPass):
    name = "equalize"
    config_class = EqualizeConfig

    def call(self, model: ir.Model) -> PassResult:
        pairs = self._pairs(model.graph)
        if pairs:
            self.stats["range_ratio_before"] = round(
                float(np.mean([_channel_ratio(const_array(a.inputs[1])) for a, _ in pairs])), 3
            )
        for _ in range(max(1, self.config.iterations)):
            for c1, c2 in pairs:
                self._equalize(model.graph, c1, c2)
        if pairs:
            ir.passes.common.RemoveUnusedNodesPass()(model)  # drops the replaced initializers
            self.stats["pairs_equalized"] = len(pairs)
            self.stats["range_ratio_after"] = round(
                float(np.mean([_channel_ratio(const_array(a.inputs[1])) for a, _ in pairs])), 3
            )
        logger.info("equalize: %s", self.stats)
        return PassResult(model, modified=bool(pairs))

    def _pairs(self, g: ir.Graph) -> list[tuple[ir.Node, ir.Node]]:
        pairs = []
        for c1 in g:
            if c1.op_type != "Conv" or const_array(c1.inputs[1]) is None:
                continue
            nxt = _single_reader(c1.outputs[0])
            if nxt is not None and nxt.op_type not in ("Conv",) and len(nxt.outputs) == 1:
                if nxt.op_type not in _HOMOGENEOUS:
                    after = _single_reader(nxt.outputs[0])
                    if after is not None and after.op_type == "Conv":
                        self.count("skipped_nonhomogeneous")
                    continue
                nxt = _single_reader(nxt.outputs[0])
            if nxt is None or nxt.op_type != "Conv" or const_array(nxt.inputs[1]) is None:
                continue
            if self._compatible(c1, nxt):
                pairs.append((c1, nxt))
        return pairs

    def _compatible(self, c1: ir.Node, c2: ir.Node) -> bool:
        w1, w2 = const_array(c1.inputs[1]), const_array(c2.inputs[1])
        g2 = c2.attributes.get_int("group", 1)
        depthwise = g2 == w1.shape[0] and w2.shape[1] == 1 and w2.shape[0] == w1.shape[0]
        return g2 == 1 and w2.shape[1] == w1.shape[0] or depthwise

    def _equalize(self, g: ir.Graph, c1: ir.Node, c2: ir.Node) -> None:
        w1, w2 = const_array(c1.inputs[1]), const_array(c2.inputs[1])
        depthwise = c2.attributes.get_int("group", 1) != 1
        r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1)
        w2c = w2 if depthwise else np.swapaxes(w2, 0, 1)  # channel i of conv1's output first
        r2 = np.abs(w2c.reshape(w2c.shape[0], -1)).max(axis=1)
        ok = (r1 > 0) & (r2 > 0)
        s = np.where(ok, np.sqrt(np.where(ok, r1, 1) / np.where(ok, r2, 1)), 1.0)
        shape1 = [-1] + [1] * (w1.ndim - 1)
        _set(g, c1, 1, w1 / s.reshape(shape1))
        b1 = const_array(c1.inputs[2]) if len(c1.inputs) > 2 else None
        if b1 is not None:
            _set(g, c1, 2, b1 / s)
        shape2 = shape1 if depthwise else [1, -1] + [1] * (w2.ndim - 2)
        _set(g, c2, 1, w2 * s.reshape(shape2))

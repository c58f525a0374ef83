"""smoothquant: migrate activation outliers into the weights of the MatMuls that read them
(Xiao et al. 2023), exactly in FP32.

For Y = LayerNorm(x; γ, β) (possibly through a Reshape that keeps the channel dim) read only by
MatMul/Gemm nodes Y·W_m with constant W_m [K, N_m] (Q/K/V projections,
the MLP's first layer), per input channel j:
    s_j = max|Y_j|^α / max_m max_n |W_m[j, n]|^(1−α)      (clamped to [1e-5, 1e5])
    γ'_j = γ_j / s_j,  β'_j = β_j / s_j,  W'_m[j, :] = s_j · W_m[j, :]
so Y'·W'_m = Y·W_m: outlier channels of Y shrink (easier per-tensor activation ranges) and the weights,
quantized per output channel, absorb the scale. max|Y_j| comes from a calibration pre-pass
(``act_absmax``). When the LayerNorm output also feeds a residual Add (post-norm), a Mul(Y, 1/s)
is inserted in front of the MatMuls instead of folding (counted as ``mul_inserted``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.ir_ops import activation_channel_axis, const_array, in_channel_axis
from autoglm_compress.ir_utils import add_initializer
from autoglm_compress.passes.base import CompressPass, PassConfig, field, register

__all__ = ["SmoothQuantPass", "SmoothQuantConfig"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SmoothQuantConfig(PassConfig):
    alpha: float = field(
        0.5, help="migration strength: 0 keeps activations, 1 moves all into weights"
    )
    act_absmax: dict | None = field(None, help="tensor name -> per-channel max|x| from calibration")


def _weight_kn(node: ir.Node, idx: int) -> np.ndarray | None:
    """The constant weight of a MatMul/Gemm reading the activation as input 0, laid out [K, N]."""
    if idx != 0 or node.op_type not in ("MatMul", "Gemm") or activation_channel_axis(node) != -1:
        return None
    w = const_array(node.inputs[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return None
    return np.moveaxis(w, in_channel_axis(node, 2), 0)  # ir_ops: Gemm transB=1 holds [N, K]


def _feature_tensor(y: ir.Value) -> ir.Value:
    """``y``, or the output of a lone Reshape of ``y`` that keeps the channel (last) dim."""
    uses = list(y.uses())
    if len(uses) == 1 and uses[0][0].op_type == "Reshape" and not y.is_graph_output():
        r = uses[0][0].outputs[0]
        if y.shape is not None and r.shape is not None and r.shape[-1] == y.shape[-1]:
            return r
    return y


def _matmul_readers(t: ir.Value) -> tuple[list[ir.Node], bool]:
    """MatMul/Gemm nodes reading ``t`` with a constant weight; and whether they are all readers."""
    readers, others = [], 0
    for user, idx in ((u[0], u[1]) for u in t.uses()):
        if _weight_kn(user, idx) is None:
            others += 1
        else:
            readers.append(user)
    return readers, others == 0 and not t.is_graph_output()


def _new_const(g: ir.Graph, name: str, arr: np.ndarray) -> ir.Value:
    return add_initializer(g, name, arr.astype(np.float32))


@register
class SmoothQuantPass(CompressPass):
    name = "smoothquant"
    config_class = SmoothQuantConfig
    needs = frozenset({"data"})
    PRE_SAMPLES = 32  # calibration samples for the per-channel max|x| pre-pass

    def required(self) -> frozenset[str]:
        return frozenset() if self.config.act_absmax is not None else self.needs

    def call(self, model: ir.Model) -> PassResult:
        absmax = self.config.act_absmax
        if absmax is None:  # a short max|x| pre-pass on the context's calibration data
            from autoglm_compress.quantization.collect import collect_stats

            n = self.PRE_SAMPLES
            absmax = collect_stats(model, self.ctx.data.take(n), "minmax", limit=n).channel_absmax
            self.stats["pre_pass_samples"] = n
        for ln in [n for n in model.graph if n.op_type == "LayerNormalization"]:
            t = _feature_tensor(ln.outputs[0])
            readers, only = _matmul_readers(t)
            gamma = const_array(ln.inputs[1]) if len(ln.inputs) > 1 else None
            if not readers or t.name not in absmax or gamma is None:
                self.count("layernorms_skipped")
                continue
            self._smooth(model.graph, ln, t, readers, np.asarray(absmax[t.name], np.float64), only)
        logger.info("smoothquant: %s", self.stats)
        return PassResult(model, modified=bool(self.stats.get("matmuls_smoothed")))

    def _smooth(self, g, ln, t: ir.Value, readers, xmax: np.ndarray, fold: bool) -> None:
        ws = [_weight_kn(r, 0).astype(np.float64) for r in readers]
        wmax = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)
        a = self.config.alpha
        s = np.clip(np.maximum(xmax, 1e-8) ** a / np.maximum(wmax, 1e-8) ** (1 - a), 1e-5, 1e5)
        if fold:
            self._fold_into_layernorm(g, ln, s)
        else:
            self._insert_mul(g, t, readers, s)
        for r, w in zip(readers, ws):
            w2 = np.moveaxis(w * s[:, None], 0, in_channel_axis(r, 2))  # back to r's layout
            r.replace_input_with(1, _new_const(g, f"{r.name}_weight_smoothed", w2))
        self.count("matmuls_smoothed", len(readers))
        self._ratios(xmax, s)

    def _fold_into_layernorm(self, g: ir.Graph, ln: ir.Node, s: np.ndarray) -> None:
        gamma = const_array(ln.inputs[1]).astype(np.float64)
        ln.replace_input_with(1, _new_const(g, f"{ln.name}_scale_smoothed", gamma / s))
        if len(ln.inputs) > 2 and ln.inputs[2] is not None:
            beta = const_array(ln.inputs[2]).astype(np.float64)
            ln.replace_input_with(2, _new_const(g, f"{ln.name}_bias_smoothed", beta / s))
        self.count("layernorms_folded")

    def _insert_mul(self, g: ir.Graph, y: ir.Value, readers: list[ir.Node], s: np.ndarray) -> None:
        """The LayerNorm output also feeds a residual: scale only the MatMul branch, Y·(1/s)."""
        inv = _new_const(g, f"{y.name}_smooth_inv", 1.0 / s)
        mul = ir.node("Mul", [y, inv], name=f"{y.name}_smooth")
        mul.outputs[0].name, mul.outputs[0].shape = mul.name, y.shape
        mul.outputs[0].dtype = y.dtype or ir.DataType.FLOAT
        g.insert_after(y.producer(), mul)
        for r in readers:
            r.replace_input_with(0, mul.outputs[0])
        self.count("mul_inserted")

    def _ratios(self, xmax: np.ndarray, s: np.ndarray) -> None:
        self.stats["max_channel_ratio_before"] = max(
            self.stats.get("max_channel_ratio_before", 0.0),
            float(xmax.max() / max(np.median(xmax), 1e-12)),
        )
        xs = xmax / s
        self.stats["max_channel_ratio_after"] = max(
            self.stats.get("max_channel_ratio_after", 0.0),
            float(xs.max() / max(np.median(xs), 1e-12)),
        )

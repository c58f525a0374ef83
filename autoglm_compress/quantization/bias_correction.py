"""Bias correction (Nagel et al. 2019, empirical-mean form): remove the mean output shift that
weight quantization introduces.

For y = W·x + b with quantized weights Ŵ = DQ(Q(W)) and ε = Ŵ − W, the expected output error per
output channel o is E[ε·x]_o = Σ_{i,k} ε[o, i, k] · E[x_i] (convolution: i over the input channels
of o's group, k over the kernel window; padding is ignored, so border outputs are corrected by the
interior mean). Setting b' = b − E[ε·x] makes the quantized layer unbiased on the calibration data.
E[x_i] is the per-channel input mean recorded during calibration (``CalibrationStats.channel_means``).
Gemm (y = α·A·B + β·C) shifts by α·E[ε·x] and sets C ← C − α·E[ε·x] / β (skipped when β = 0).
Weight and bias inputs and the output/input channel axes come from :mod:`autoglm_compress.ir_ops`.
Runs on the FP32 IR before QDQ insertion; nodes left in float are not touched.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import (
    bias_input,
    const_array,
    groups,
    in_channel_axis,
    out_channel_axis,
    weight_value,
)
from autoglm_compress.ir_utils import add_initializer
from autoglm_compress.quantization.qdq import along, rounded_weight
from autoglm_compress.quantization.saturation import weight_quant_for
from autoglm_compress.quantization.scheme import TensorQuant

__all__ = ["CORRECTED_OPS", "correct_biases"]

logger = logging.getLogger(__name__)
# Ops whose output shift is Σ ε·E[x] per output channel. ConvTranspose is left out: its output
# positions sum a stride-dependent number of kernel taps, so one shift per channel is not exact.
CORRECTED_OPS = ("Conv", "Gemm")


def _weight_error(w: np.ndarray, axis: int, tq: TensorQuant) -> np.ndarray:
    """ε = DQ(Q(W)) − W under ``tq`` (per channel along ``axis`` when ``tq`` says so)."""
    return rounded_weight(w, axis if tq.per_channel else None, tq) - w


def _rounded_error(w: np.ndarray, r: dict) -> np.ndarray:
    """ε of reconstructed int8 weights ``r`` (:mod:`~autoglm_compress.quantization.reconstruct`)."""
    return r["q"].astype(np.float32) * along(r["scale"], r["axis"], w.ndim) - w


def _shift(node: ir.Node, eps: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """E[ε·x] per output channel: ε as [O, I/g, taps] (axes from ir_ops), summed over the taps and
    contracted with the group's input means; Gemm's ``alpha`` scales it."""
    out_ax, in_ax = out_channel_axis(node, eps.ndim), in_channel_axis(node, eps.ndim)
    if mean.shape != (eps.shape[in_ax] * groups(node),):
        return None
    if eps.ndim == 2:  # Gemm: contract the input-channel axis with the means
        shift = eps @ mean if out_ax == 0 else mean @ eps
        return shift * node.attributes.get_float("alpha", 1.0)
    e = np.moveaxis(eps, (out_ax, in_ax), (0, 1))
    o, cin_g = e.shape[:2]
    g = groups(node)
    if o % g:
        return None
    per_out = e.reshape(o, cin_g, -1).sum(axis=2).reshape(g, o // g, cin_g)
    return np.einsum("gpc,gc->gp", per_out, mean.reshape(g, cin_g)).reshape(o)


def correct_biases(
    model: ir.Model, channel_means: dict, weight_quant: TensorQuant, skip: set[str] = frozenset(),
    widths: dict | None = None, rounded: dict | None = None,
) -> dict:
    """Shift the biases of Conv/Gemm nodes; returns {"biases_corrected", "max_shift"}.
    ``widths``: the weight width picked per node (x86 saturation rule) overrides ``weight_quant``'s."""
    stats = {"biases_corrected": 0, "max_shift": 0.0}
    for node in model.graph:
        if node.op_type not in CORRECTED_OPS or node.name in skip or _bias_scale(node) == 0:
            continue
        x = node.inputs[0]
        w = const_array(weight_value(node))
        mean = channel_means.get(x.name) if x is not None else None
        if w is None or mean is None or w.dtype != np.float32 or w.ndim < 2:
            continue
        axis = out_channel_axis(node, w.ndim)
        tq = weight_quant_for(weight_quant, widths, node.name)
        r = (rounded or {}).get(node.name)
        eps = _weight_error(w, axis, tq) if r is None else _rounded_error(w, r)
        shift = _shift(node, eps, mean.astype(np.float32))
        if shift is None or shift.shape != (w.shape[axis],) or not np.isfinite(shift).all():
            continue
        if not _set_bias(model.graph, node, shift / _bias_scale(node)):
            continue
        stats["biases_corrected"] += 1
        stats["max_shift"] = max(stats["max_shift"], float(np.abs(shift).max()))
    logger.info("bias correction: %s", stats)
    return stats


def _bias_scale(node: ir.Node) -> float:
    """What the op multiplies its bias by: Gemm's ``beta`` (y = α·A·B + β·C), else 1."""
    return node.attributes.get_float("beta", 1.0) if node.op_type == "Gemm" else 1.0


def _set_bias(g: ir.Graph, node: ir.Node, shift: np.ndarray) -> bool:
    """b ← b − shift (a missing bias is zeros); False when the bias is not one value per channel."""
    b_idx = bias_input(node)
    b_val = node.inputs[b_idx] if len(node.inputs) > b_idx else None
    b = const_array(b_val)
    if b_val is not None and b is None:
        return False
    b = np.zeros(shift.shape, np.float32) if b is None else b.reshape(-1)
    if b.size not in (1, shift.size):
        return False
    v = add_initializer(g, f"{node.name or 'node'}_bias_corrected", (b - shift).astype(np.float32))
    if len(node.inputs) <= b_idx:
        node.resize_inputs(b_idx + 1)
    node.replace_input_with(b_idx, v)
    return True

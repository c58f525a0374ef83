"""Bias correction (Nagel et al. 2019, empirical-mean form): remove the mean output shift that
weight quantization introduces.

For y = W·x + b with quantized weights Ŵ = DQ(Q(W)) and ε = Ŵ − W, the expected output error per
output channel o is E[ε·x]_o = Σ_{i,k} ε[o, i, k] · E[x_i] (convolution: i over the input channels
of o's group, k over the kernel window; padding is ignored, so border outputs are corrected by the
interior mean). Setting b' = b − E[ε·x] makes the quantized layer unbiased on the calibration data.
E[x_i] is the per-channel input mean recorded during calibration (``CalibrationStats.channel_means``).
Runs on the FP32 IR before QDQ insertion; nodes left in float are not touched.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_utils import add_initializer
from autoglm_compress.quantization.qdq import const_array, _quantize_array, weight_qparams
from autoglm_compress.quantization.scheme import TensorQuant

__all__ = ["correct_biases"]

logger = logging.getLogger(__name__)


def _weight_error(w: np.ndarray, axis: int, tq: TensorQuant) -> np.ndarray:
    ax = axis if tq.per_channel else None
    scale, _ = weight_qparams(w, ax, tq)
    q = _quantize_array(w, scale, ax, tq).astype(np.float32)
    s = scale if ax is None else scale.reshape([-1 if i == ax else 1 for i in range(w.ndim)])
    return q * s - w


def _shift(node: ir.Node, eps: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    if node.op_type == "Conv":
        groups = node.attributes.get_int("group", 1)
        o, cin_g = eps.shape[:2]
        per_out = eps.reshape(o, cin_g, -1).sum(axis=2)  # [O, Cin/g]
        m = mean.reshape(groups, cin_g)
        return np.einsum("gpc,gc->gp", per_out.reshape(groups, o // groups, cin_g), m).reshape(o)
    if node.op_type == "Gemm":
        return eps @ mean if node.attributes.get_int("transB", 0) else mean @ eps
    return None


def correct_biases(
    model: ir.Model, channel_means: dict, weight_quant: TensorQuant, skip: set[str] = frozenset()
) -> dict:
    """Shift the biases of Conv/Gemm nodes; returns {"biases_corrected", "max_shift"}."""
    stats = {"biases_corrected": 0, "max_shift": 0.0}
    for node in model.graph:
        if node.op_type not in ("Conv", "Gemm") or node.name in skip:
            continue
        x, w_val = node.inputs[0], node.inputs[1]
        w = const_array(w_val)
        mean = channel_means.get(x.name) if x is not None else None
        if w is None or mean is None or w.dtype != np.float32:
            continue
        axis = 0 if node.op_type == "Conv" or node.attributes.get_int("transB", 0) else 1
        shift = _shift(node, _weight_error(w, axis, weight_quant), mean.astype(np.float32))
        if shift is None or shift.shape != (w.shape[axis],) or not np.isfinite(shift).all():
            continue
        _set_bias(model.graph, node, shift)
        stats["biases_corrected"] += 1
        stats["max_shift"] = max(stats["max_shift"], float(np.abs(shift).max()))
    logger.info("bias correction: %s", stats)
    return stats


def _set_bias(g: ir.Graph, node: ir.Node, shift: np.ndarray) -> None:
    b_val = node.inputs[2] if len(node.inputs) > 2 else None
    b = const_array(b_val)
    b = np.zeros(shift.shape, np.float32) if b is None else b.reshape(-1)
    v = add_initializer(g, f"{node.name or 'node'}_bias_corrected", (b - shift).astype(np.float32))
    if len(node.inputs) < 3:
        node.resize_inputs(3)
    node.replace_input_with(2, v)

"""TensorRT explicit-quantization rules, checked on a QDQ ONNX graph without TensorRT.

What TensorRT's ONNX parser and its Q/DQ placement guide ask (formats.md, TensorRT section):
  zero points 0 and int8 (uint8 is only "treated as int8" with a warning); scales positive and finite;
  activation scales per-tensor; weights per-channel int8 in [-127, 127] on the output-channel axis —
  Conv 0, ConvTranspose 1, Gemm 0 with transB=1 else 1, MatMul [K, N] weight 1; ``axis`` needs opset ≥ 13;
  no QLinear*/…Integer ops. A weighted op whose activation input is not quantized runs in float there:
  allowed, but reported by name.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array, is_weighted, out_channel_axis, weight_input

__all__ = ["check_tensorrt_rules"]

_UNSUPPORTED = frozenset(
    {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
)


def _check_qdq(node: ir.Node, errors: list[str]) -> None:
    scale = const_array(node.inputs[1])
    zp = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
    if scale is None or not (np.isfinite(scale).all() and (scale > 0).all()):
        errors.append(f"{node.name}: scale must be a positive finite constant")
    if zp is not None and (zp.dtype != np.int8 or zp.any()):
        errors.append(f"{node.name}: zero point must be int8 0 (got {zp.dtype} {zp.ravel()[:3]})")


def _check_weight(node: ir.Node, errors: list[str]) -> bool:
    """True when the node's weight comes through a DequantizeLinear (a quantized layer)."""
    w_idx = weight_input(node)
    w = node.inputs[w_idx] if len(node.inputs) > w_idx else None
    dq = w.producer() if w is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return False
    q, scale = const_array(dq.inputs[0]), const_array(dq.inputs[1])
    if q is None:
        return False
    if q.dtype == np.int8 and (q == -128).any():
        errors.append(f"{node.name}: weights must lie in [-127, 127] (narrow range)")
    if scale is not None and scale.size > 1:
        axis, want = dq.attributes.get_int("axis", 1) % q.ndim, out_channel_axis(node, q.ndim)
        if node.op_type == "MatMul" and q.ndim != 2:
            errors.append(f"{node.name}: per-channel MatMul weights must be 2-D [K, N]")
        elif axis != want % q.ndim or scale.size != q.shape[axis]:
            errors.append(
                f"{node.name}: {node.op_type} weight scales on axis {axis} "
                f"({scale.size} values); TensorRT wants axis {want} ({q.shape[want]} channels)"
            )
    return True


def check_tensorrt_rules(model: ir.Model) -> dict:
    """Violations (each 'node: what'), quantized layers, and weighted ops left in float."""
    errors: list[str] = []
    opset = model.opset_imports.get("", 0)
    layers, float_ops, per_channel = 0, [], False
    for node in model.graph:
        if node.op_type in _UNSUPPORTED:
            errors.append(f"{node.name}: {node.op_type} is not parsed by TensorRT; use Q/DQ")
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            _check_qdq(node, errors)
            scale = const_array(node.inputs[1])
            per_channel |= scale is not None and scale.size > 1
            w = node.inputs[0]
            is_act_q = node.op_type == "QuantizeLinear" and const_array(w) is None
            if is_act_q and scale is not None and scale.size > 1:
                errors.append(f"{node.name}: activation scales must be per-tensor")
        elif is_weighted(node) and _check_weight(node, errors):
            layers += 1
            x = node.inputs[0]
            p = x.producer() if x is not None else None
            if p is None or p.op_type != "DequantizeLinear":
                float_ops.append(node.name)
    if per_channel and opset < 13:
        errors.append(f"graph: per-channel Q/DQ needs opset ≥ 13 (model has {opset})")
    return {"violations": errors, "quantized_layers": layers, "float_input_layers": float_ops}

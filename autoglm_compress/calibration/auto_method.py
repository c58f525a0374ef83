"""The ``auto`` calibration method: the range estimator chosen per tensor from the graph.

A tensor whose values an op bounds by construction (Clip with both bounds — ReLU6 —, Sigmoid,
HardSigmoid, Softmax, Tanh, and what value-preserving ops, Relu, MaxPool or a Concat of such
tensors make of them) and the graph's float inputs (normalized data, whose extremes are real
values, not outliers) keep their min/max range: clipping a saturating activation's bound cuts the
units that carry the signal. Every other activation — a conv or matmul output, SiLU/GELU, a
residual sum, LayerNorm — has an unbounded, heavy tail that 128 samples measure poorly: there the
histogram's minimum-MSE range (``mse``) is used, never narrower than ``1/MAX_CLIP`` of the min/max
range per side (docs/decisions/0018-auto-calibration-ranges.md: unclipped, it wrecked PP-OCR's
DBNet). Measured against the old
min/max default (bench/RESULTS.md, x86, 128 samples): nudenet YOLOv8n (SiLU) detection agreement
0.729 → 0.755, EfficientNet-Lite1 top-1 0.953 → 0.961, Lite2 unchanged, a BERT encoder's cosine
0.99984 → 0.99990.

Only the histogram tensors are streamed out of onnxruntime; the rest are reduced in the graph (on
the EfficientNets the expanded ReLU6 tensors, most of the bytes, never leave it).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = ["AUTO", "HISTOGRAM_METHOD", "MAX_CLIP", "histogram_tensors", "bounded_tensors"]

AUTO = "auto"
HISTOGRAM_METHOD = "mse"
MAX_CLIP = 1.5  # the mse range keeps at least 2/3 of each side of the min/max range
_BOUNDING = frozenset({"Sigmoid", "HardSigmoid", "Softmax", "Tanh"})
_KEEPS_BOUND = frozenset(
    {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Relu", "MaxPool",
     "Concat", "Split", "Slice", "Gather", "Resize", "Upsample", "AveragePool",
     "GlobalAveragePool", "GlobalMaxPool", "DepthToSpace", "SpaceToDepth"}
)


def _const(v: ir.Value | None) -> float | None:
    if v is None or v.const_value is None:
        return None
    a = np.asarray(v.const_value.numpy()).reshape(-1)
    return float(a[0]) if a.size == 1 else None


def _clip_bounded(node: ir.Node) -> bool:
    if len(node.inputs) == 1:  # opset < 11: attributes
        lo = node.attributes.get_float("min", None)
        hi = node.attributes.get_float("max", None)
    else:
        lo = _const(node.inputs[1]) if len(node.inputs) > 1 else None
        hi = _const(node.inputs[2]) if len(node.inputs) > 2 else None
    return lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi)


def bounded_tensors(model: ir.Model) -> set[str]:
    """Names of the tensors whose range an op bounds by construction (see the module doc)."""
    out: set[str] = set()
    for node in model.graph:  # topological order: a producer is judged before its readers
        op = node.op_type
        if op in _BOUNDING or (op == "Clip" and _clip_bounded(node)):
            ok = True
        elif op in _KEEPS_BOUND and not (op == "Resize" and node.attributes.get_string("mode", "nearest") == "cubic"):
            data = [v for v in node.inputs[: None if op == "Concat" else 1] if v is not None]
            ok = bool(data) and all(v.name in out or v.const_value is not None for v in data)
        else:
            ok = False
        if ok:
            out.update(v.name for v in node.outputs if v.name)
    return out


def histogram_tensors(model: ir.Model) -> set[str]:
    """The node outputs ``auto`` calibrates with a histogram: those not bounded by construction
    (graph inputs never are)."""
    bounded = bounded_tensors(model)
    return {v.name for n in model.graph for v in n.outputs if v.name and v.name not in bounded}

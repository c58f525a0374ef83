"""Writing QDQ into the IR: activation Q/DQ pairs, int8 weights + DQ, int32 biases, shared scales.

Activations: s, z from the calibrated range by :func:`compute_qparams` under the scheme's
activation :class:`TensorQuant`. Weights: symmetric, s[c] = max(max|W_c| / q_max, MIN_SCALE) per
output channel c (the axis from :mod:`autoglm_compress.ir_ops`), W_q = clamp(round(W / s), q_min,
q_max) with (q_min, q_max) = :func:`quant_range`. Biases: b_q = round(b / (s_x · s_w[c])) in int32.
:mod:`.qdq_read` reads these parameters back from any QDQ graph.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.calibration.qparams import MIN_SCALE, compute_qparams, quant_range
from autoglm_compress.errors import ModelLoadError
from autoglm_compress.ir_ops import (
    bias_input,
    const_array,
    out_channel_axis,
    weight_input,
    weight_value,
)
from autoglm_compress.ir_utils import add_initializer
from autoglm_compress.quantization.saturation import stores_uint8, weight_quant_for
from autoglm_compress.quantization.scheme import QuantScheme, TensorQuant

__all__ = [
    "QDQWriter",
    "int32_bias",
    "shared_scale_groups",
    "weight_qparams",
    "quantize_array",
    "weight_quant_axis",
    "const_array",
]

logger = logging.getLogger(__name__)
_NP = {"int8": np.int8, "uint8": np.uint8}


def weight_quant_axis(node: ir.Node, w: np.ndarray, tq: TensorQuant) -> int | None:
    """Axis of ``node``'s weight scales under ``tq``: the output-channel axis when per-channel
    (MatMul only for a 2-D [K, N] weight), None (one scale) otherwise."""
    if not tq.per_channel or w.ndim < 2 or (node.op_type == "MatMul" and w.ndim != 2):
        return None
    return out_channel_axis(node, w.ndim)


def weight_qparams(
    w: np.ndarray, axis: int | None, tq: TensorQuant
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric weight scales: s[c] = max|W_c| / q_max (per channel along ``axis``, or one)."""
    _, qmax = quant_range(tq)
    if axis is None:
        amax = np.abs(w).max(keepdims=False).reshape(())
    else:
        amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    scale = np.maximum(amax / qmax, MIN_SCALE).astype(np.float32)
    return scale, np.zeros(scale.shape, dtype=_NP[tq.dtype])


def along(scale: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    """``scale`` shaped to broadcast along ``axis`` of an ``ndim``-d tensor (as is when None)."""
    return scale if axis is None else scale.reshape([-1 if i == axis else 1 for i in range(ndim)])


def quantize_array(
    w: np.ndarray, scale: np.ndarray, axis: int | None, tq: TensorQuant
) -> np.ndarray:
    """q = clamp(round(w / s), q_min, q_max) with ``s`` broadcast along ``axis`` (zero point 0)."""
    lo, hi = quant_range(tq)
    return np.clip(np.round(w / along(scale, axis, w.ndim)), lo, hi).astype(_NP[tq.dtype])


def rounded_weight(w: np.ndarray, axis: int | None, tq: TensorQuant) -> np.ndarray:
    """DQ(Q(W)): ``w`` rounded to its own symmetric int grid (scales along ``axis``), as float."""
    scale, _ = weight_qparams(w, axis, tq)
    return quantize_array(w, scale, axis, tq).astype(np.float32) * along(scale, axis, w.ndim)


def shared_scale_groups(
    g: ir.Graph, scheme: QuantScheme, ranges: dict, targets: dict, pinned=frozenset()
) -> dict:
    """Union of ranges over tensors tied by shared-scale ops (concat/pool/reshape in/out); a
    group holding a ``pinned`` tensor (a kernel's fixed output range) takes that one's range."""
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.get(a, a) != a:
            a = parent[a]
        return a

    for node in g:
        if node.op_type not in scheme.shared_scale_ops:
            continue
        names = [
            v.name
            for v in (*node.inputs[: 1 if node.op_type != "Concat" else None],
                      *node.outputs[: None if node.op_type == "Split" else 1])
            if v is not None and v.const_value is None
            # a fixed-range input of a Concat keeps its range (the kernel rescales it) instead of
            # forcing it on the other inputs (YOLO's boxes concatenated with sigmoid scores)
            and not (node.op_type == "Concat" and v.name in pinned)
        ]
        for other in names[1:]:
            parent[find(other)] = find(names[0])
    merged: dict = {}
    for name in pinned:
        if name in ranges:
            merged[find(name)] = tuple(float(x) for x in ranges[name])
    for name, (lo, hi) in ranges.items():
        root = find(name)
        if any(find(p) == root for p in pinned if p in ranges):
            continue
        if root in merged:
            merged[root] = (min(merged[root][0], float(lo)), max(merged[root][1], float(hi)))
        else:
            merged[root] = (float(lo), float(hi))
    return {name: merged[find(name)] for name in ranges}


def int32_bias(b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """round(b / scale) clipped to int32; 0 where the scale is 0 (a dead channel: 0/0 would cast
    to INT_MIN)."""
    scale = np.asarray(scale, np.float64)
    q = np.divide(np.asarray(b, np.float64), scale, out=np.zeros(np.shape(b)), where=scale > 0)
    return np.clip(np.rint(q), -(2**31), 2**31 - 1).astype(np.int32)


class QDQWriter:
    def __init__(
        self, graph: ir.Graph, scheme: QuantScheme, fake_weights: bool = False,
        widths: dict | None = None, rounded: dict | None = None,
    ):
        """``fake_weights``: float weights behind a QuantizeLinear (the QAT training form: the
        weights stay trainable) instead of int8 initializers; biases then stay float.
        ``widths``: node name -> picked weight width (:mod:`~autoglm_compress.quantization.saturation`)."""
        self.g, self.scheme, self.fake_weights = graph, scheme, fake_weights
        self.widths, self.rounded = widths, rounded
        self.stats: dict[str, int] = {}
        self.act_qparams: dict[str, tuple[float, int]] = {}  # DQ output name -> (scale, zp)
        self.layers: list[dict] = []
        self._wcache: dict[tuple[str, int | None], ir.Value] = {}

    def _count(self, k: str, n: int = 1) -> None:
        self.stats[k] = self.stats.get(k, 0) + n

    def _const(self, name: str, arr: np.ndarray) -> ir.Value:
        return add_initializer(self.g, name, arr)

    def quantize_activation(self, value: ir.Value, lo: float, hi: float) -> ir.Value:
        tq = self.scheme.activation
        scale, zp = compute_qparams(np.float32(lo), np.float32(hi), tq, name=value.name)
        out_name = value.name if value.is_graph_output() else None
        if out_name is not None:  # the DQ takes the output's place and name
            value.name = f"{out_name}_float"
        s = self._const(f"{value.name}_scale", np.asarray(scale, np.float32).reshape(()))
        z = self._const(f"{value.name}_zp", np.asarray(zp).astype(_NP[tq.dtype]).reshape(()))
        q = ir.node("QuantizeLinear", [value, s, z], name=f"{value.name}_Q")
        dq = ir.node("DequantizeLinear", [q.outputs[0], s, z], name=f"{value.name}_DQ")
        q.outputs[0].name, dq.outputs[0].name = f"{value.name}_q", f"{value.name}_dq"
        q.outputs[0].dtype = _dtype(tq.dtype)
        q.outputs[0].shape = dq.outputs[0].shape = value.shape
        dq.outputs[0].dtype = ir.DataType.FLOAT
        uses = [(u[0], u[1]) for u in value.uses() if u[0] is not q]
        prod = value.producer()
        if prod is not None:
            self.g.insert_after(prod, [q, dq])
        else:
            self.g.insert_before(next(iter(self.g)), [q, dq])
        for user, idx in uses:
            user.replace_input_with(idx, dq.outputs[0])
        if out_name is not None:
            outs = self.g.outputs
            outs[[o is value for o in outs].index(True)] = dq.outputs[0]
            dq.outputs[0].name = out_name
        self.act_qparams[dq.outputs[0].name] = (
            float(np.asarray(scale).reshape(-1)[0]),
            int(np.asarray(zp).reshape(-1)[0]),
        )
        self._count("qdq_inserted")
        return dq.outputs[0]

    def quantize_weights(self, node: ir.Node) -> None:
        w_idx, b_idx = weight_input(node), bias_input(node)
        w_val = weight_value(node)
        w = const_array(w_val)
        if w is None or w.dtype != np.float32:
            return
        if not np.isfinite(w).all():
            raise ModelLoadError(
                f"weights {w_val.name!r} of node {node.name!r} hold NaN or Inf; "
                "fix the model before quantizing"
            )
        tq = weight_quant_for(self.scheme.weight, self.widths, node.name)
        ax = weight_quant_axis(node, w, tq)
        u8 = stores_uint8(self.widths, node.name) and not self.fake_weights
        key = (w_val.name, ax, tq.reduce_range, u8)
        if key not in self._wcache:
            scale, zp = weight_qparams(w, ax, tq)
            scale, widened = self._fit_bias(node, b_idx, scale)
            if u8:  # the same int8 grid stored as q + 128 (onnxruntime's U8U8 kernel)
                zp = np.full(zp.shape, 128, np.uint8)
            suffix = "_u8" if u8 else ""
            s = self._const(f"{w_val.name}_scale", scale)
            z = self._const(f"{w_val.name}_zp{suffix}", zp)
            attrs = {"axis": ax} if ax is not None else {}
            rounded = None if widened else self._rounded(node, ax)
            wq = self._weight_source(w_val, w, s, z, ax, attrs, node, tq, rounded, u8)
            dq = ir.node("DequantizeLinear", [wq, s, z], attributes=attrs, name=f"{w_val.name}_DQ")
            dq.outputs[0].name, dq.outputs[0].dtype = f"{w_val.name}_dq", ir.DataType.FLOAT
            dq.outputs[0].shape = ir.Shape(w.shape)
            self.g.insert_before(node, dq)
            self._wcache[key] = dq.outputs[0]
            self._count("weights_quantized")
        node.replace_input_with(w_idx, self._wcache[key])
        scale = self._wcache[key].producer().inputs[1].const_value.numpy()
        layer = {
            "node": node.name,
            "op": node.op_type,
            "weight": w_val.name,
            "weight_scale_min": float(scale.min()),
            "weight_scale_max": float(scale.max()),
            "per_channel": ax is not None,
            "weight_bits": 7 if tq.reduce_range else 8,
            **({"weight_dtype": "uint8"} if u8 else {}),
        }
        if self.widths and node.name in self.widths:
            w_info = self.widths[node.name]
            layer["weight_width_rule"] = w_info["rule"]
            layer.update({k: v for k, v in w_info.items() if k not in ("bits", "rule")})
        x = node.inputs[0]
        if x is not None and x.name in self.act_qparams:
            layer["input_scale"], layer["input_zero_point"] = self.act_qparams[x.name]
            if (
                b_idx is not None
                and self.scheme.bias_int32
                and not self.fake_weights
                and len(node.inputs) > b_idx
            ):
                self._quantize_bias(node, b_idx, layer["input_scale"], scale)
        self.layers.append(layer)

    def quantize_embedding(self, node: ir.Node, min_size: int = 1024) -> bool:
        """Gather(table, ids) with a constant float table: int8 rows, one scale per row (8 bits,
        symmetric: weight-only, no u8·s8 product to saturate), DequantizeLinear → Gather."""
        t_val = node.inputs[0]
        t = const_array(t_val)
        if (t is None or t.dtype != np.float32 or t.ndim != 2 or t.size < min_size
                or node.attributes.get_int("axis", 0) != 0 or not np.isfinite(t).all()):
            return False
        key = (t_val.name, "rows")
        if key not in self._wcache:
            tq = TensorQuant("int8", symmetric=True, per_channel=True, narrow_range=True)
            scale, zp = weight_qparams(t, 0, tq)
            q = self._const(f"{t_val.name}_quantized", quantize_array(t, scale, 0, tq))
            s = self._const(f"{t_val.name}_scale", scale)
            z = self._const(f"{t_val.name}_zp", zp)
            dq = ir.node("DequantizeLinear", [q, s, z], attributes={"axis": 0},
                         name=f"{t_val.name}_DQ")
            dq.outputs[0].name, dq.outputs[0].dtype = f"{t_val.name}_dq", ir.DataType.FLOAT
            dq.outputs[0].shape = ir.Shape(t.shape)
            self.g.insert_before(node, dq)
            self._wcache[key] = dq.outputs[0]
            self._count("embeddings_quantized")
        node.replace_input_with(0, self._wcache[key])
        return True

    def _fit_bias(self, node: ir.Node, b_idx, scale: np.ndarray) -> tuple[np.ndarray, int]:
        """Weight scales raised where the int32 bias b / (s_x · s_w) would not fit (a dead
        channel: weights ~1e-10 beside a bias of a few units saturated at ±2³¹, the wrong constant
        out): s_w ≥ |b| / (s_x · 2³⁰). Such a channel's weights round to ~0 either way. Returns
        (scales, channels widened)."""
        x = node.inputs[0]
        if (b_idx is None or not self.scheme.bias_int32 or self.fake_weights or x is None
                or x.name not in self.act_qparams or len(node.inputs) <= b_idx):
            return scale, 0
        b = const_array(node.inputs[b_idx])
        if b is None or b.ndim != 1 or scale.size not in (1, b.shape[0]):
            return scale, 0
        need = np.abs(b.astype(np.float64)) / (self.act_qparams[x.name][0] * 2.0**30)
        need = need if scale.size == b.shape[0] else np.asarray([need.max()])
        widened = need.reshape(scale.shape) > scale
        if not widened.any():
            return scale, 0
        self._count("weight_scales_widened_for_bias", int(widened.sum()))
        return np.where(widened, need.reshape(scale.shape), scale).astype(scale.dtype), int(widened.sum())

    def _rounded(self, node: ir.Node, ax) -> np.ndarray | None:
        """The reconstructed int8 weights of ``node`` when they were made for this axis."""
        r = (self.rounded or {}).get(node.name)
        if r is None or r["axis"] != ax or self.fake_weights:
            return None
        self._count("weights_reconstructed")
        return r["q"]

    def _weight_source(self, w_val, w, s, z, ax, attrs, node, tq, q=None, u8=False) -> ir.Value:
        """int8 initializer W_q (``q`` when given: reconstructed rounding; ``u8``: stored as
        uint8 q + 128), or (fake_weights) the float W through a QuantizeLinear node."""
        if not self.fake_weights:
            if q is None:
                q = quantize_array(w, s.const_value.numpy(), ax, tq)
            if u8:
                return self._const(f"{w_val.name}_quantized_u8",
                                   (q.astype(np.int16) + 128).astype(np.uint8))
            return self._const(f"{w_val.name}_quantized", q)
        q = ir.node("QuantizeLinear", [w_val, s, z], attributes=attrs, name=f"{w_val.name}_Q")
        q.outputs[0].name, q.outputs[0].dtype = f"{w_val.name}_q", _dtype(tq.dtype)
        q.outputs[0].shape = ir.Shape(w.shape)
        self.g.insert_before(node, q)
        return q.outputs[0]

    def _quantize_bias(self, node: ir.Node, b_idx: int, s_x: float, s_w: np.ndarray) -> None:
        """b_q = round(b / (s_x · s_w[c])) in int32, for a 1-D bias of one value per channel."""
        b_val = node.inputs[b_idx]
        b = const_array(b_val)
        if b is None or b.ndim != 1 or (s_w.ndim == 1 and b.shape[0] != s_w.shape[0]):
            return
        bs = (np.float32(s_x) * np.broadcast_to(s_w, b.shape)).astype(np.float32)
        bq = int32_bias(b, bs)
        qv = self._const(f"{b_val.name}_quantized", bq)
        sv = self._const(f"{b_val.name}_scale", bs)
        zv = self._const(f"{b_val.name}_zp", np.zeros(b.shape, np.int32))
        dq = ir.node(
            "DequantizeLinear", [qv, sv, zv], attributes={"axis": 0}, name=f"{node.name}_bias_DQ"
        )
        dq.outputs[0].name, dq.outputs[0].dtype = f"{b_val.name}_{node.name}_dq", ir.DataType.FLOAT
        dq.outputs[0].shape = ir.Shape(b.shape)
        self.g.insert_before(node, dq)
        node.replace_input_with(b_idx, dq.outputs[0])
        self._count("biases_int32")


def _dtype(name: str) -> ir.DataType:
    return {"int8": ir.DataType.INT8, "uint8": ir.DataType.UINT8}[name]

"""Reads of the IR that every emitter makes: shapes, attributes, constants, pads, axes.

One definition each (they were copied per emitter and had drifted apart: an unknown dimension read
as 1 in one and −1 in another). Where emitters really differ the difference is a parameter
(``dims(v, unknown=…)``), not another copy.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array

__all__ = ["dims", "ints", "scalar", "wconst", "onnx_pads", "clip_bounds", "reduce_axes",
           "input_or_none"]


def dims(v: ir.Value, unknown: int = -1) -> list[int]:
    """The value's shape as ints, ``unknown`` for a symbolic or missing dimension (ncnn refuses
    −1; TFLite writes 1 for a dynamic batch)."""
    return [d if isinstance(d, int) else unknown for d in (v.shape or [])]


def ints(node: ir.Node, name: str, default) -> list[int]:
    """An ints attribute, or ``default``."""
    a = node.attributes.get(name)
    return list(a.as_ints()) if a is not None else list(default)


def scalar(v: ir.Value | None, limit: float | None = None) -> float | None:
    """A one-element constant as float (clipped to ±``limit`` when given), else None."""
    arr = const_array(v)
    if arr is None or arr.size != 1:
        return None
    x = float(arr.reshape(-1)[0])
    return float(np.clip(x, -limit, limit)) if limit is not None else x


def input_or_none(node: ir.Node, i: int) -> ir.Value | None:
    """``node.inputs[i]``, None where absent or omitted (an empty name)."""
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i] is not None else None


def wconst(v: ir.Value | None) -> np.ndarray | None:
    """A constant input as float: an initializer, or the dequantized constant behind a
    DequantizeLinear (weights of a QDQ graph)."""
    a = const_array(v)
    p = v.producer() if v is not None and a is None else None
    if p is not None and p.op_type == "DequantizeLinear":
        from autoglm_compress.quantization.qdq_read import read_qparams

        q = read_qparams(p)
        a = q.dequantize() if q is not None else None
    return a


def onnx_pads(n: ir.Node, in_hw, k, s, d) -> list[int]:
    """[top, left, bottom, right] of a conv/pool, with auto_pad resolved (SAME_UPPER puts the odd
    pixel at the end, as TFLite's SAME does; SAME_LOWER at the start)."""
    auto = n.attributes.get_string("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return ints(n, "pads", [0, 0, 0, 0])
    if auto == "VALID":
        return [0, 0, 0, 0]
    pads = [0, 0, 0, 0]
    for i in range(2):
        out = -(-in_hw[i] // s[i])
        total = max((out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - in_hw[i], 0)
        small, big = total // 2, total - total // 2
        pads[i], pads[i + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
    return pads


def clip_bounds(node: ir.Node) -> tuple[float | None, float | None]:
    """Clip's constant (min, max); None where that bound is absent."""
    def bound(i):
        v = node.inputs[i] if len(node.inputs) > i else None
        return float(const_array(v)) if v is not None and v.name else None

    return bound(1), bound(2)


def reduce_axes(n: ir.Node, rank: int) -> list[int] | None:
    """The reduced axes (non-negative), all axes when none are given, None when not constant."""
    a = n.attributes.get("axes")
    if a is not None:
        axes = list(a.as_ints())
    elif len(n.inputs) > 1 and n.inputs[1] is not None:
        arr = const_array(n.inputs[1])
        if arr is None:
            return None
        axes = [int(x) for x in arr.reshape(-1)]
    else:
        axes = []
    if not axes:
        if n.attributes.get_int("noop_with_empty_axes", 0):
            return []
        axes = list(range(rank))
    return sorted(int(x) % rank for x in axes)

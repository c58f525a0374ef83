"""Executor pooling ops: MaxPool (with its Indices output), AveragePool, global pools.

Window o of a spatial axis of length L covers x[o·s − p_b + j·d], j < k (stride s, dilation d,
begin pad p_b). The output length is ⌊(L + p_b + p_e − d(k−1) − 1)/s⌋ + 1, or the ceiling with
``ceil_mode`` — minus one if the last window would then start past the begin-padded input.
Max ignores padding; AveragePool divides by the number of covered elements that are inside the
input, or inside input + explicit pads with ``count_include_pad`` (the ceil-mode overhang never
counts). MaxPool's Indices are offsets into X flattened in row-major order (column-major for the
spatial part with ``storage_order`` = 1).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from autoglm_compress.runtime.ops_math import _i, _ints

__all__ = ["POOL_OPS", "explicit_pads", "torch_pad"]

logger = logging.getLogger(__name__)

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def explicit_pads(
    n, x: torch.Tensor, kernel: list[int], strides: list[int], dil: list[int]
) -> list[int]:
    """ONNX pads [b1, b2, .., e1, e2, ..] honouring auto_pad."""
    nd = len(kernel)
    auto = n.attributes.get_string("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads_b, pads_e = [], []
        for i in range(nd):
            size = x.shape[2 + i]
            out = math.ceil(size / strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads_b.append(small if auto == "SAME_UPPER" else big)
            pads_e.append(big if auto == "SAME_UPPER" else small)
        return pads_b + pads_e
    if auto == "VALID":
        return [0] * (2 * nd)
    return _ints(n, "pads", [0] * (2 * nd))


def torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1, .., bn, e1, .., en] → F.pad's [bn, en, .., b1, e1]."""
    nd = len(pads) // 2
    out = []
    for i in reversed(range(nd)):
        out += [pads[i], pads[i + nd]]
    return out


def _geometry(n, t):
    kernel = _ints(n, "kernel_shape")
    nd = len(kernel)
    strides, dil = _ints(n, "strides", [1] * nd), _ints(n, "dilations", [1] * nd)
    return kernel, strides, dil, explicit_pads(n, t, kernel, strides, dil)


def _max_pool(x, n):
    t = x[0]
    kernel, strides, dil, pads = _geometry(n, t)
    nd, ceil = len(kernel), bool(_i(n, "ceil_mode", 0))
    begin = [0] * nd
    if pads[:nd] != pads[nd:] or any(p > k // 2 for p, k in zip(pads, kernel * 2)):
        t, begin = F.pad(t, torch_pad(pads), value=float("-inf")), pads[:nd]
        pads = [0] * (2 * nd)
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    if len(n.outputs) < 2 or not n.outputs[1].name:
        return fn(t, kernel, strides, pads[:nd], dil, ceil_mode=ceil)
    y, idx = fn(t, kernel, strides, pads[:nd], dil, ceil_mode=ceil, return_indices=True)
    return y, _onnx_indices(idx, list(t.shape[2:]), begin, x[0].shape, _i(n, "storage_order", 0))


def _onnx_indices(idx, searched: list[int], begin: list[int], shape, storage_order: int):
    """torch's per-plane indices into the (maybe padded) plane → ONNX offsets into X."""
    coords = []
    for size in reversed(searched):
        coords.append(idx % size)
        idx = torch.div(idx, size, rounding_mode="floor")
    coords = [c - b for c, b in zip(reversed(coords), begin)]
    spatial = list(shape[2:])
    order = range(len(spatial)) if storage_order else reversed(range(len(spatial)))
    flat, step = torch.zeros_like(coords[0]), 1
    for d in order:
        flat, step = flat + coords[d] * step, step * spatial[d]
    planes = torch.arange(shape[0] * shape[1], device=idx.device).reshape(
        shape[0], shape[1], *([1] * len(spatial))
    )
    return flat + planes * step


def _avg_pool(x, n):
    t = x[0]
    kernel, strides, dil, pads = _geometry(n, t)
    nd, ceil = len(kernel), bool(_i(n, "ceil_mode", 0))
    include = bool(_i(n, "count_include_pad", 0))
    if any(d != 1 for d in dil):
        return _avg_pool_general(t, kernel, strides, dil, pads, ceil, include)
    if pads[:nd] != pads[nd:] or any(p > k // 2 for p, k in zip(pads, kernel * 2)):
        if not include:
            return _avg_pool_general(t, kernel, strides, dil, pads, ceil, include)
        t, pads = F.pad(t, torch_pad(pads)), [0] * (2 * nd)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    return fn(t, kernel, strides, pads[:nd], ceil_mode=ceil, count_include_pad=include)


def _out_len(size, k, s, d, pb, pe, ceil) -> int:
    span = (size + pb + pe - d * (k - 1) - 1) / s + 1
    out = math.ceil(span) if ceil else math.floor(span)
    return out - 1 if ceil and (out - 1) * s >= size + pb else out


def _avg_pool_general(t, kernel, strides, dil, pads, ceil, include):
    """Window sums and element counts as depthwise convolutions with a dilated all-ones kernel."""
    nd, spatial = len(kernel), list(t.shape[2:])
    outs = [
        _out_len(spatial[i], kernel[i], strides[i], dil[i], pads[i], pads[nd + i], ceil)
        for i in range(nd)
    ]
    need = [(o - 1) * s + d * (k - 1) + 1 for o, s, d, k in zip(outs, strides, dil, kernel)]
    extra = [max(0, need[i] - spatial[i] - pads[i] - pads[nd + i]) for i in range(nd)]
    full = pads[:nd] + [pads[nd + i] + extra[i] for i in range(nd)]
    conv = _CONV[nd]
    channels = t.shape[1]
    ones = torch.ones(channels, 1, *kernel, dtype=t.dtype, device=t.device)
    total = conv(F.pad(t, torch_pad(full)), ones, stride=strides, dilation=dil, groups=channels)
    mask = torch.ones(1, 1, *spatial, dtype=t.dtype, device=t.device)
    if include:
        mask = F.pad(mask, torch_pad(pads), value=1.0)
        full = [0] * nd + extra
    count = conv(F.pad(mask, torch_pad(full)), ones[:1], stride=strides, dilation=dil)
    y = total / count
    return y[(slice(None), slice(None), *(slice(0, o) for o in outs))]


def _global(fn):
    return lambda x, n: fn(x[0], dim=list(range(2, x[0].dim())), keepdim=True)


POOL_OPS = {
    "MaxPool": _max_pool,
    "AveragePool": _avg_pool,
    "GlobalAveragePool": _global(torch.mean),
    "GlobalMaxPool": _global(torch.amax),
}

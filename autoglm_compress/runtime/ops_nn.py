"""Executor op table, part 2: convolution, normalization, Gemm, Pad, QDQ, depth/space moves;
the pooling (ops_pool.py) and Resize (ops_resize.py) tables are merged in here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autoglm_compress.runtime.ops_math import _f, _i, _ints
from autoglm_compress.runtime.ops_pool import POOL_OPS, explicit_pads, torch_pad
from autoglm_compress.runtime.ops_resize import RESIZE_OPS
from autoglm_compress.runtime.ops_tensor import torch_dtype

__all__ = ["NN_OPS"]


def _conv(x, n):
    t, w = x[0], x[1]
    b = x[2] if len(x) > 2 else None
    nd = w.dim() - 2
    kernel = _ints(n, "kernel_shape", list(w.shape[2:]))
    strides, dil = _ints(n, "strides", [1] * nd), _ints(n, "dilations", [1] * nd)
    pads = explicit_pads(n, t, kernel, strides, dil)
    if pads[:nd] == pads[nd:]:
        padding = pads[:nd]
    else:
        t, padding = F.pad(t, torch_pad(pads)), [0] * nd
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(t, w, b, stride=strides, padding=padding, dilation=dil, groups=_i(n, "group", 1))


def _convt_pads(n, t, w, strides, dil, outpad) -> list[int]:
    """Begin/end crop of the full transposed convolution; from ``output_shape`` or SAME_* when
    set: total = s(L − 1) + output_padding + d(k − 1) + 1 − out, the odd one at the end for
    SAME_UPPER (at the begin otherwise). Negative values extend the output."""
    nd = w.dim() - 2
    kernel = _ints(n, "kernel_shape", list(w.shape[2:]))
    auto = n.attributes.get_string("auto_pad", "NOTSET")
    out = _ints(n, "output_shape")
    if out is None and auto not in ("SAME_UPPER", "SAME_LOWER"):
        return _ints(n, "pads", [0] * (2 * nd))
    out = out[-nd:] if out is not None else [t.shape[2 + i] * strides[i] for i in range(nd)]
    total = [
        strides[i] * (t.shape[2 + i] - 1) + outpad[i] + (kernel[i] - 1) * dil[i] + 1 - out[i]
        for i in range(nd)
    ]
    if auto == "SAME_UPPER":
        return [p // 2 for p in total] + [p - p // 2 for p in total]
    return [p - p // 2 for p in total] + [p // 2 for p in total]


def _conv_transpose(x, n):
    t, w = x[0], x[1]
    b = x[2] if len(x) > 2 else None
    nd = w.dim() - 2
    strides, dil = _ints(n, "strides", [1] * nd), _ints(n, "dilations", [1] * nd)
    outpad = _ints(n, "output_padding", [0] * nd)
    pads = _convt_pads(n, t, w, strides, dil, outpad)
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    y = fn(t, w, None, stride=strides, padding=0, groups=_i(n, "group", 1), dilation=dil)
    crop = [-p for p in pads[:nd]] + [outpad[i] - pads[nd + i] for i in range(nd)]
    y = F.pad(y, torch_pad(crop))
    return y if b is None else y + b.reshape([1, -1] + [1] * nd)


def _batchnorm(x, n):
    """Inference: (x − mean)/√(var + ε)·scale + bias. With training_mode the batch statistics
    (population variance) normalise and the outputs add the updated running mean / var:
    running = input · momentum + batch · (1 − momentum)."""
    t, scale, bias, mean, var = x[:5]
    shape = [1, -1] + [1] * (t.dim() - 2)  # written out so gradients may reach mean/var too
    eps = _f(n, "epsilon", 1e-5)
    if not _i(n, "training_mode", 0):
        inv = torch.rsqrt(var + eps) * scale
        return (t - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)
    dims = [0] + list(range(2, t.dim()))
    bmean, bvar = t.mean(dims), t.var(dims, unbiased=False)
    inv = torch.rsqrt(bvar + eps) * scale
    y = (t - bmean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)
    m = _f(n, "momentum", 0.9)
    return y, mean * m + bmean * (1 - m), var * m + bvar * (1 - m)


def _gemm(x, n):
    a, b = x[0], x[1]
    if _i(n, "transA", 0):
        a = a.t()
    if _i(n, "transB", 0):
        b = b.t()
    y = _f(n, "alpha", 1.0) * (a @ b)
    if len(x) > 2 and x[2] is not None:
        y = y + _f(n, "beta", 1.0) * x[2]
    return y


def _pad(x, n):
    t = x[0]
    pads = [int(p) for p in x[1].tolist()] if len(x) > 1 and x[1] is not None else _ints(n, "pads")
    value = (
        float(x[2].reshape(-1)[0])
        if len(x) > 2 and x[2] is not None and x[2].numel()
        else _f(n, "value", 0.0)
    )
    rank = t.dim()
    axes = (
        [int(a) % rank for a in x[3].tolist()]
        if len(x) > 3 and x[3] is not None
        else list(range(rank))
    )
    full = [0] * (2 * rank)
    for k, a in enumerate(axes):
        full[a], full[a + rank] = pads[k], pads[k + len(axes)]
    mode = n.attributes.get_string("mode", "constant")
    tp = torch_pad(full)
    while len(tp) > 2 and tp[-1] == 0 and tp[-2] == 0 and mode != "constant":
        tp = tp[:-2]
    if mode == "constant":
        return F.pad(t, tp, value=value)
    return F.pad(t, tp, mode={"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode])


def _round_ste(x):
    """round() with a straight-through gradient (identity), written so torch.func.vmap batches it."""
    return x + (torch.round(x) - x).detach()


def _qshape(scale, t, axis, block: int = 0):
    """Scale / zero point broadcastable to ``t``: scalar, per-axis, or blocked (each entry covers
    ``block`` consecutive elements along ``axis``)."""
    if scale.dim() == 0 or scale.numel() == 1:
        return scale.reshape(())
    axis %= t.dim()
    if block > 0:
        return scale.repeat_interleave(block, dim=axis).narrow(axis, 0, t.shape[axis])
    shape = [1] * t.dim()
    shape[axis] = -1
    return scale.reshape(shape)


_QLIMITS = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int32: (-(2**31), 2**31 - 1)}


def _quantize(x, n):
    """Affine quantization. With gradients on, the result stays float (fake-quant: integer tensors
    carry no gradient) and the rounding is straight-through; clamping zeroes the gradient outside."""
    t, scale = x[0], x[1]
    zp = x[2] if len(x) > 2 and x[2] is not None else None
    if zp is None:
        zp = torch.zeros((), dtype=torch_dtype(_i(n, "output_dtype", 0) or 2), device=t.device)
    axis, block = _i(n, "axis", 1), _i(n, "block_size", 0)
    s, z = _qshape(scale.to(t.dtype), t, axis, block), _qshape(zp, t, axis, block)
    lo, hi = _QLIMITS[zp.dtype]
    q = torch.clamp(_round_ste(t / s) + z.to(t.dtype), lo, hi)
    return q if torch.is_grad_enabled() else q.to(zp.dtype)


def _dequantize(x, n):
    q, scale = x[0], x[1]
    zp = x[2] if len(x) > 2 and x[2] is not None else None
    axis, block = _i(n, "axis", 1), _i(n, "block_size", 0)
    s = _qshape(scale, q, axis, block)
    y = q.to(scale.dtype)
    if zp is not None:
        y = y - _qshape(zp, q, axis, block).to(scale.dtype)
    return y * s


def _depth_to_space(x, n):
    t, b = x[0], _i(n, "blocksize", 1)
    N, C, H, W = t.shape
    if n.attributes.get_string("mode", "DCR") == "DCR":
        y = t.reshape(N, b, b, C // (b * b), H, W).permute(0, 3, 4, 1, 5, 2)
    else:
        y = t.reshape(N, C // (b * b), b, b, H, W).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(N, C // (b * b), H * b, W * b)


def _space_to_depth(x, n):
    t, b = x[0], _i(n, "blocksize", 1)
    N, C, H, W = t.shape
    y = t.reshape(N, C, H // b, b, W // b, b)
    if n.attributes.get_string("mode", "DCR") == "DCR":
        y = y.permute(0, 3, 5, 1, 2, 4)
    else:
        y = y.permute(0, 1, 3, 5, 2, 4)
    return y.reshape(N, C * b * b, H // b, W // b)


NN_OPS = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "BatchNormalization": _batchnorm,
    **POOL_OPS,
    "Gemm": _gemm,
    **RESIZE_OPS,
    "Pad": _pad,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
}

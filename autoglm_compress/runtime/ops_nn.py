"""Executor op table, part 2: convolution, pooling, normalization, Gemm, Resize, Pad, QDQ."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from autoglm_compress.runtime.ops_math import _f, _i, _ints

__all__ = ["NN_OPS"]


def _explicit_pads(
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


def _torch_pad(pads: list[int]) -> list[int]:
    nd = len(pads) // 2
    out = []
    for i in reversed(range(nd)):
        out += [pads[i], pads[i + nd]]
    return out


def _conv(x, n):
    t, w = x[0], x[1]
    b = x[2] if len(x) > 2 else None
    nd = w.dim() - 2
    kernel = _ints(n, "kernel_shape", list(w.shape[2:]))
    strides, dil = _ints(n, "strides", [1] * nd), _ints(n, "dilations", [1] * nd)
    pads = _explicit_pads(n, t, kernel, strides, dil)
    if pads[:nd] == pads[nd:]:
        padding = pads[:nd]
    else:
        t, padding = F.pad(t, _torch_pad(pads)), [0] * nd
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(t, w, b, stride=strides, padding=padding, dilation=dil, groups=_i(n, "group", 1))


def _conv_transpose(x, n):
    t, w = x[0], x[1]
    b = x[2] if len(x) > 2 else None
    nd = w.dim() - 2
    strides, dil = _ints(n, "strides", [1] * nd), _ints(n, "dilations", [1] * nd)
    pads = _ints(n, "pads", [0] * (2 * nd))
    outpad = _ints(n, "output_padding", [0] * nd)
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    y = fn(
        t,
        w,
        b,
        stride=strides,
        padding=0,
        output_padding=outpad,
        groups=_i(n, "group", 1),
        dilation=dil,
    )
    slices = [slice(None), slice(None)] + [
        slice(pads[i], y.shape[2 + i] - pads[i + nd]) for i in range(nd)
    ]
    return y[tuple(slices)]


def _batchnorm(x, n):
    t, scale, bias, mean, var = x[:5]
    shape = [1, -1] + [1] * (t.dim() - 2)  # written out so gradients may reach mean/var too
    inv = torch.rsqrt(var + _f(n, "epsilon", 1e-5)) * scale
    return (t - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)


def _pool(kind):
    def run(x, n):
        t = x[0]
        kernel = _ints(n, "kernel_shape")
        nd = len(kernel)
        strides, dil = _ints(n, "strides", [1] * nd), _ints(n, "dilations", [1] * nd)
        pads = _explicit_pads(n, t, kernel, strides, dil)
        ceil = bool(_i(n, "ceil_mode", 0))
        if kind == "max":
            if pads[:nd] != pads[nd:] or any(p > k // 2 for p, k in zip(pads, kernel * 2)):
                t = F.pad(t, _torch_pad(pads), value=float("-inf"))
                pads = [0] * (2 * nd)
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
            return fn(t, kernel, strides, pads[:nd], dil, ceil_mode=ceil)
        include = bool(_i(n, "count_include_pad", 0))
        if pads[:nd] != pads[nd:] or any(p > k // 2 for p, k in zip(pads, kernel * 2)):
            if include:
                t = F.pad(t, _torch_pad(pads))
                pads = [0] * (2 * nd)
            else:
                return _avg_pool_exclusive(t, kernel, strides, pads, ceil)
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
        return fn(t, kernel, strides, pads[:nd], ceil_mode=ceil, count_include_pad=include)

    return run


def _avg_pool_exclusive(t, kernel, strides, pads, ceil):
    nd = len(kernel)
    ones = torch.ones_like(t[:1, :1])
    tp, op = F.pad(t, _torch_pad(pads)), F.pad(ones, _torch_pad(pads))
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    return fn(tp, kernel, strides, 0, ceil_mode=ceil) / fn(op, kernel, strides, 0, ceil_mode=ceil)


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


def _resize_sizes(x, n, t):
    """(output sizes, spatial scales) — scales as given, else output/input (ONNX semantics)."""
    if len(x) > 3 and x[3] is not None and x[3].numel():
        sizes = [int(s) for s in x[3].tolist()]
        return sizes, [o / d for o, d in zip(sizes[2:], t.shape[2:])]
    scales = [float(s) for s in x[2].tolist()]
    return [int(math.floor(d * s)) for d, s in zip(t.shape, scales)], scales[2:]


def _resize(x, n):
    t = x[0]
    sizes, scales = _resize_sizes(x, n, t)
    mode = n.attributes.get_string("mode", "nearest")
    ctm = n.attributes.get_string("coordinate_transformation_mode", "half_pixel")
    out = sizes[2:]
    if mode == "nearest":
        nm = n.attributes.get_string("nearest_mode", "round_prefer_floor")
        return _nearest(t, out, ctm, nm, scales)
    torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(out)]
    if mode == "cubic":
        torch_mode = "bicubic"
    if ctm == "align_corners":
        return F.interpolate(t, size=out, mode=torch_mode, align_corners=True)
    return F.interpolate(
        t, scale_factor=scales, mode=torch_mode, align_corners=False, recompute_scale_factor=False
    )


def _nearest(t, out, ctm, nm, scales=None):
    idx = []
    for i, o in enumerate(out):
        size = t.shape[2 + i]
        scale = scales[i] if scales else o / size
        d = torch.arange(o, dtype=torch.float64)
        if ctm == "asymmetric":
            src = d / scale
        elif ctm == "align_corners":
            src = d * (size - 1) / max(o - 1, 1)
        else:  # half_pixel / pytorch_half_pixel
            src = (d + 0.5) / scale - 0.5
        if nm == "floor":
            s = torch.floor(src)
        elif nm == "ceil":
            s = torch.ceil(src)
        elif nm == "round_prefer_ceil":
            s = torch.floor(src + 0.5)
        else:
            s = torch.ceil(src - 0.5)
        idx.append(s.clamp(0, size - 1).long().to(t.device))
    y = t
    for i, ix in enumerate(idx):
        y = torch.index_select(y, 2 + i, ix)
    return y


def _upsample(x, n):
    mode = n.attributes.get_string("mode", "nearest")
    sizes = [int(math.floor(d * float(s))) for d, s in zip(x[0].shape, x[1].tolist())]
    if mode == "nearest":
        return _nearest(
            x[0], sizes[2:], "asymmetric", "floor", [float(s) for s in x[1].tolist()[2:]]
        )
    return F.interpolate(x[0], size=sizes[2:], mode="bilinear", align_corners=False)


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
    tp = _torch_pad(full)
    while len(tp) > 2 and tp[-1] == 0 and tp[-2] == 0 and mode != "constant":
        tp = tp[:-2]
    if mode == "constant":
        return F.pad(t, tp, value=value)
    return F.pad(t, tp, mode={"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode])


def _round_ste(x):
    """round() with a straight-through gradient (identity), written so torch.func.vmap batches it."""
    return x + (torch.round(x) - x).detach()


def _qshape(scale, t, axis):
    if scale.dim() == 0 or scale.numel() == 1:
        return scale.reshape(())
    shape = [1] * t.dim()
    shape[axis % t.dim()] = -1
    return scale.reshape(shape)


_QLIMITS = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int32: (-(2**31), 2**31 - 1)}


def _quantize(x, n):
    """Affine quantization. With gradients on, the result stays float (fake-quant: integer tensors
    carry no gradient) and the rounding is straight-through; clamping zeroes the gradient outside."""
    t, scale = x[0], x[1]
    zp = x[2] if len(x) > 2 and x[2] is not None else torch.zeros((), dtype=torch.uint8)
    axis = _i(n, "axis", 1)
    s, z = _qshape(scale.to(t.dtype), t, axis), _qshape(zp, t, axis)
    lo, hi = _QLIMITS[zp.dtype]
    q = torch.clamp(_round_ste(t / s) + z.to(t.dtype), lo, hi)
    return q if torch.is_grad_enabled() else q.to(zp.dtype)


def _dequantize(x, n):
    q, scale = x[0], x[1]
    zp = x[2] if len(x) > 2 and x[2] is not None else None
    axis = _i(n, "axis", 1)
    s = _qshape(scale, q, axis)
    y = q.to(scale.dtype)
    if zp is not None:
        y = y - _qshape(zp, q, axis).to(scale.dtype)
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
    y = t.reshape(N, C, H // b, b, W // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(N, C * b * b, H // b, W // b)


def _global(fn):
    return lambda x, n: fn(x[0], dim=list(range(2, x[0].dim())), keepdim=True)


NN_OPS = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "BatchNormalization": _batchnorm,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global(torch.mean),
    "GlobalMaxPool": _global(torch.amax),
    "Gemm": _gemm,
    "Resize": _resize,
    "Upsample": _upsample,
    "Pad": _pad,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
}

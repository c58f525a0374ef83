"""im2col rows of a Conv input in onnxruntime's channels-last K order (kh, kw, c), at sampled output
positions: what the x86 saturation rule and layer-wise weight reconstruction read."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = ["im2col", "layer_rows", "same_pads"]


def im2col(node: ir.Node, kernel, t: np.ndarray, fill, rows, n_groups: int, rng=None,
            limit: int | None = None) -> np.ndarray | None:
    """im2col rows ``[P, taps·C_g]`` in (kh, kw, c) order of the group holding output channels
    ``rows``: every output position, or ``limit`` of them drawn by ``rng``."""
    if t.ndim == 3:
        t = t[:, :, None, :]
    nd = len(kernel)
    if t.ndim != 4 or nd not in (1, 2):
        return None
    ks = [1, *kernel] if nd == 1 else list(kernel)
    a = node.attributes
    strides = list(a.get_ints("strides", [1] * nd))
    dil = list(a.get_ints("dilations", [1] * nd))
    pads = list(a.get_ints("pads", [0] * 2 * nd))
    if nd == 1:
        strides, dil, pads = [1] + strides, [1] + dil, [0, pads[0], 0, pads[1]]
    n, c, h, w = t.shape
    auto = a.get_string("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = same_pads((h, w), ks, strides, dil, auto == "SAME_UPPER")
    oh = (h + pads[0] + pads[2] - dil[0] * (ks[0] - 1) - 1) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - dil[1] * (ks[1] - 1) - 1) // strides[1] + 1
    total = n * oh * ow
    sel = (np.arange(total) if limit is None or total <= limit
           else np.sort(rng.choice(total, limit, replace=False)))
    cg = c // n_groups
    gi = int(rows[0]) // max(1, len(rows))
    ni, rem = np.divmod(sel, oh * ow)
    oy, ox = np.divmod(rem, ow)
    if ks == [1, 1] and strides == [1, 1] and not any(pads):  # pointwise: rows are pixels
        return t[ni, gi * cg:(gi + 1) * cg, oy, ox]
    ky, kx = (k.ravel() for k in np.meshgrid(np.arange(ks[0]), np.arange(ks[1]), indexing="ij"))
    iy = oy[:, None] * strides[0] - pads[0] + ky[None] * dil[0]  # [P, taps]
    ix = ox[:, None] * strides[1] - pads[1] + kx[None] * dil[1]
    valid = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    tg = t[:, gi * cg:(gi + 1) * cg]
    got = tg[ni[:, None], :, np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)]  # [P, taps, C_g]
    got = np.where(valid[..., None], got, fill)
    return got.reshape(len(sel), -1)


def layer_rows(node: ir.Node, t: np.ndarray, rng, limit: int) -> np.ndarray | None:
    """``[P, G, K]``: the input rows of a Conv/Gemm/MatMul ``node`` reading activation ``t``, per
    group, K in (kh, kw, c) order (a conv's weight as ``[G, O_g, K]`` multiplies them), at most
    ``limit`` rows drawn by ``rng``; padding reads 0."""
    if node.op_type == "Conv":
        kernel = tuple(node.inputs[1].shape[2:])
        g = node.attributes.get_int("group", 1)
        x = im2col(node, kernel, t, 0.0, [0], 1, rng, limit)  # all channels: [P, taps·C]
        if x is None:
            return None
        taps = int(np.prod(kernel))
        x = x.reshape(len(x), taps, g, -1).transpose(0, 2, 1, 3)  # [P, G, taps, C_g]
        return x.reshape(len(x), g, -1)
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        t = t.T
    x = t.reshape(-1, t.shape[-1])
    if len(x) > limit:
        x = x[rng.choice(len(x), limit, replace=False)]
    return x[:, None, :]


def same_pads(spatial, ks, strides, dil, upper: bool) -> list[int]:
    begin, end = [], []
    for size, k, s, d in zip(spatial, ks, strides, dil):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if upper else big)
        end.append(big if upper else small)
    return begin + end

"""Executor ops Resize and Upsample, with the full ONNX (opset 10-19) semantics.

Resize is separable: each resized axis of length L → O is an (O, L) linear map applied in turn.
For output index o the source coordinate x(o) comes from ``coordinate_transformation_mode``
(s = the axis scale, given or O/L):

    half_pixel            x = (o + ½)/s − ½
    pytorch_half_pixel    same, 0 (−½ in the reference, ≡ edge) when O == 1
    half_pixel_symmetric  x = L/2·(1 − O/(sL)) + (o + ½)/s − ½
    align_corners         x = o·(L − 1)/(O − 1)
    asymmetric            x = o/s
    tf_crop_and_resize    x = roi₀(L − 1) + o·(roi₁ − roi₀)(L − 1)/(O − 1); outside [0, L−1] the
                          output is ``extrapolation_value``

``nearest`` picks one source index (rounding by ``nearest_mode``, clamped); ``linear`` and
``cubic`` (Keys kernel with a = ``cubic_coeff_a``) weight the n = 2 or 4 neighbours of x, indices
clamped to the edge (or dropped and renormalised with ``exclude_outside``). With ``antialias`` and
s < 1 the kernel is stretched by 1/s (more taps, renormalised). The common cases (bi/trilinear and
bicubic with half-pixel / align-corners mapping on the spatial axes) use ``F.interpolate``;
everything else is n gathers per axis weighted and summed, so both stay differentiable and
vmap-able.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["RESIZE_OPS"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Spec:
    """The Resize attributes that shape the weights (Upsample / opset 10: asymmetric, floor)."""

    mode: str = "nearest"
    ctm: str = "half_pixel"
    nearest: str = "round_prefer_floor"
    cubic_a: float = -0.75
    exclude_outside: bool = False
    antialias: bool = False
    extrapolation: float = 0.0

    @classmethod
    def of(cls, n) -> _Spec:
        a = n.attributes
        return cls(
            a.get_string("mode", "nearest"),
            a.get_string("coordinate_transformation_mode", "half_pixel"),
            a.get_string("nearest_mode", "round_prefer_floor"),
            a.get_float("cubic_coeff_a", -0.75),
            bool(a.get_int("exclude_outside", 0)),
            bool(a.get_int("antialias", 0)),
            a.get_float("extrapolation_value", 0.0),
        )


def _source_coords(ctm: str, out: int, size: int, scale: float, roi: tuple[float, float]):
    """x(o) for o = 0..out-1 (float64) and the tf_crop_and_resize extrapolation mask (or None).

    align_corners divides by the integer output length minus one, as the spec text and
    onnxruntime do (the onnx reference uses the fractional ``scale * size``; the two differ only
    when that is not an integer). tf_crop_and_resize uses ``scale * size`` like both."""
    o = torch.arange(out, dtype=torch.float64)
    length = scale * size
    if ctm == "align_corners":
        return (o * 0 if out == 1 else o * (size - 1) / (out - 1)), None
    if ctm == "asymmetric":
        return o / scale, None
    if ctm == "pytorch_half_pixel":
        return (o * 0 - 0.5 if length == 1 else (o + 0.5) / scale - 0.5), None
    if ctm == "half_pixel_symmetric":
        offset = size / 2 * (1 - out / length)
        return offset + (o + 0.5) / scale - 0.5, None
    if ctm == "tf_crop_and_resize":
        lo, hi = roi
        x = (
            o * 0 + (hi - lo) * (size - 1) / 2
            if length == 1
            else o * (hi - lo) * (size - 1) / (length - 1)
        )
        x = x + lo * (size - 1)
        return x, (x < 0) | (x > size - 1)
    return (o + 0.5) / scale - 0.5, None  # half_pixel


def _nearest_index(x: torch.Tensor, mode: str, size: int) -> torch.Tensor:
    if mode == "floor":
        i = torch.floor(x)
    elif mode == "ceil":
        i = torch.ceil(x)
    elif mode == "round_prefer_ceil":
        i = torch.floor(x + 0.5)
    else:  # round_prefer_floor
        i = torch.ceil(x - 0.5)
    return i.clamp(0, size - 1).long()


def _keys(d: torch.Tensor, a: float) -> torch.Tensor:
    """Keys cubic convolution kernel at distance |d|."""
    d = d.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def _taps(ratio: torch.Tensor, sp: _Spec, scale: float):
    """(coefficients (O, n), first tap offset relative to floor(x)) for linear / cubic."""
    s = min(scale, 1.0) if sp.antialias else 1.0
    start = int(math.floor(-(1 if sp.mode == "linear" else 2) / s) + 1)
    d = (torch.arange(start, 2 - start, dtype=torch.float64)[None, :] - ratio[:, None]) * s
    w = (1 - d.abs()).clamp(0, 1) if sp.mode == "linear" else _keys(d, sp.cubic_a)
    if sp.antialias:
        w = w / w.sum(1, keepdim=True)
    return w, start


def _taps_of_axis(sp: _Spec, out: int, size: int, scale: float, roi) -> tuple:
    """Source indices (O, n) (clamped to the edge), their weights (O, n) (None for nearest) and
    the extrapolation mask (O,) (or None) of one axis."""
    x, extra = _source_coords(sp.ctm, out, size, scale, roi)
    if sp.mode == "nearest":
        return _nearest_index(x, sp.nearest, size)[:, None], None, extra
    fl = torch.floor(x)
    exact = fl == x
    ratio = torch.where(exact, torch.ones_like(x), x - fl)  # in (0, 1]: prefer the left pixel
    coeff, start = _taps(ratio, sp, scale)
    base = torch.where(exact, fl - 1, fl).long()
    idx = base[:, None] + torch.arange(start, start + coeff.shape[1])[None, :]
    if sp.exclude_outside:
        coeff = torch.where((idx < 0) | (idx >= size), torch.zeros_like(coeff), coeff)
        total = coeff.sum(1, keepdim=True)
        coeff = coeff / torch.where(total == 0, torch.ones_like(total), total)
    return idx.clamp(0, size - 1), coeff, extra


def _apply_axis(t: torch.Tensor, axis: int, idx, coeff, extra, value: float) -> torch.Tensor:
    """y[.., o, ..] = Σ_k coeff[o, k] · t[.., idx[o, k], ..] (a gather for nearest)."""
    shape = [1] * t.dim()
    shape[axis] = -1
    idx = idx.to(t.device)
    if coeff is None:
        y = torch.index_select(t, axis, idx[:, 0])
    else:
        w = coeff.to(device=t.device, dtype=t.dtype)
        y = sum(
            torch.index_select(t, axis, idx[:, k]) * w[:, k].reshape(shape)
            for k in range(idx.shape[1])
        )
    if extra is not None and bool(extra.any()):
        fill = torch.full((), value, dtype=y.dtype, device=y.device)
        y = torch.where(extra.to(t.device).reshape(shape), fill, y)
    return y


def _geometry(x, n, t):
    """Full-rank (output sizes, scales, roi pairs) from the inputs and the ``axes`` attribute."""
    rank, shape = t.dim(), list(t.shape)
    a = n.attributes.get("axes")
    axes = [int(v) % rank for v in a.as_ints()] if a is not None else list(range(rank))
    roi = [(0.0, 1.0)] * rank
    if len(x) > 1 and x[1] is not None and x[1].numel():
        r = [float(v) for v in x[1].tolist()]
        for i, d in enumerate(axes):
            roi[d] = (r[i], r[i + len(axes)])
    if not (len(x) > 3 and x[3] is not None and x[3].numel()):
        scales = [1.0] * rank
        for d, s in zip(axes, x[2].tolist()):
            scales[d] = float(s)
        return [int(d * s) for d, s in zip(shape, scales)], scales, roi
    sizes = list(shape)
    for d, s in zip(axes, x[3].tolist()):
        sizes[d] = int(s)
    scales = [o / d if d else 1.0 for o, d in zip(sizes, shape)]
    policy = n.attributes.get_string("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        s = (min if policy == "not_larger" else max)(scales[d] for d in axes)
        scales = [s if i in axes else 1.0 for i in range(rank)]
        sizes = [int(s * shape[i] + 0.5) if i in axes else shape[i] for i in range(rank)]
    return sizes, scales, roi


def _fast(t: torch.Tensor, sp: _Spec, sizes, scales):
    """F.interpolate for the cases where it is exactly the ONNX result, else None."""
    nd = t.dim() - 2
    if (
        not t.is_floating_point()
        or sp.mode == "nearest"
        or not 1 <= nd <= 3
        or sizes[:2] != list(t.shape[:2])
        or sp.antialias
        or sp.ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners")
        or (sp.ctm == "pytorch_half_pixel" and min(sizes[2:]) == 1)
        or (sp.mode == "cubic" and (nd != 2 or sp.ctm == "align_corners"))
        or (sp.mode == "cubic" and (sp.cubic_a != -0.75 or sp.exclude_outside))
    ):
        return None
    tm = "bicubic" if sp.mode == "cubic" else ("linear", "bilinear", "trilinear")[nd - 1]
    if sp.ctm == "align_corners" or any(
        int(d * s) != o for d, s, o in zip(t.shape[2:], scales[2:], sizes[2:])
    ):
        return F.interpolate(t, size=sizes[2:], mode=tm, align_corners=sp.ctm == "align_corners")
    return F.interpolate(
        t, scale_factor=scales[2:], mode=tm, align_corners=False, recompute_scale_factor=False
    )


def resize(t: torch.Tensor, sp: _Spec, sizes, scales, roi=None) -> torch.Tensor:
    """Resize ``t`` to ``sizes`` (full rank) with the per-axis ``scales`` and ``roi`` pairs."""
    y = _fast(t, sp, sizes, scales)
    if y is not None:
        return y
    roi = roi or [(0.0, 1.0)] * t.dim()
    upcast = sp.mode != "nearest" and t.dtype not in (torch.float32, torch.float64)
    y = t.to(torch.float32) if upcast else t
    for axis, (o, size) in enumerate(zip(sizes, t.shape)):
        if o == size and scales[axis] == 1.0 and roi[axis] == (0.0, 1.0):
            continue
        idx, coeff, extra = _taps_of_axis(sp, o, size, scales[axis], roi[axis])
        y = _apply_axis(y, axis, idx, coeff, extra, sp.extrapolation)
    if upcast and not t.is_floating_point():
        info = torch.iinfo(t.dtype)
        y = torch.round(y).clamp(info.min, info.max)
    return y.to(t.dtype)


def _legacy(t: torch.Tensor, n, scales: list[float]) -> torch.Tensor:
    """Upsample / opset-10 Resize: asymmetric mapping, nearest rounds down."""
    mode = n.attributes.get_string("mode", "nearest")
    sp = _Spec("linear" if mode in ("linear", "bilinear") else mode, "asymmetric", "floor")
    return resize(t, sp, [int(d * s) for d, s in zip(t.shape, scales)], scales)


def _resize(x, n):
    if len(x) == 2:  # opset 10: (X, scales)
        return _legacy(x[0], n, [float(s) for s in x[1].tolist()])
    sizes, scales, roi = _geometry(x, n, x[0])
    return resize(x[0], _Spec.of(n), sizes, scales, roi)


def _upsample(x, n):
    scales = x[1].tolist() if len(x) > 1 else n.attributes.get_floats("scales")  # opset 9 / 7
    return _legacy(x[0], n, [float(s) for s in scales])


RESIZE_OPS = {"Resize": _resize, "Upsample": _upsample}

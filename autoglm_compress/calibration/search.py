"""Clipping-range searches over a :class:`StreamingHistogram`: percentile, entropy (KL), MSE.

Every search returns ``(lo, hi)`` as floats clamped to the values actually seen. ``symmetric=True``
searches one threshold ``t`` on ``|x|`` and returns ``(-t, t)`` (clamped, so a non-negative tensor
gives ``(0, t)``); ``symmetric=False`` searches the two sides of the signed distribution.
``bits`` is the integer width the range will be quantized to (8, or 7 with ``reduce_range``).
"""

from __future__ import annotations

import logging
import math

import torch

from autoglm_compress.calibration.histogram import StreamingHistogram

__all__ = ["inverse_cdf", "percentile_range", "entropy_threshold", "entropy_range", "mse_range"]

logger = logging.getLogger(__name__)

_F64 = torch.float64
_KL_CHUNK = 64  # candidate thresholds evaluated at once (memory: _KL_CHUNK x bins float64)


def _clamp(h: StreamingHistogram, lo: float, hi: float) -> tuple[float, float]:
    return max(lo, min(h.min_val, 0.0)), min(hi, max(h.max_val, 0.0))


def inverse_cdf(counts: torch.Tensor, lo: float, width: float, q: float) -> float:
    """Value below which a fraction ``q`` of the mass lies, linear inside the crossing bin."""
    cum = torch.cumsum(counts, 0)
    target = q * float(cum[-1])
    i = int(torch.searchsorted(cum, torch.tensor([target], dtype=_F64))[0])
    i = min(i, len(counts) - 1)
    before = float(cum[i - 1]) if i > 0 else 0.0
    frac = (target - before) / float(counts[i]) if counts[i] > 0 else 0.0
    return lo + (i + min(max(frac, 0.0), 1.0)) * width


def percentile_range(
    h: StreamingHistogram, percentile: float, symmetric: bool
) -> tuple[float, float]:
    """``t = P_p(|x|)`` (symmetric) or ``[P_(100-p)(x), P_p(x)]`` read off the histogram's CDF
    (exact zeros included, as a point mass in the bin holding 0)."""
    q = percentile / 100.0
    if symmetric:
        counts, w = h.fold("abs")
        counts[0] += h.zeros
        t = inverse_cdf(counts, 0.0, w, q) if w > 0 else 0.0
        return _clamp(h, -t, t)
    counts = h.with_zeros()
    lo = inverse_cdf(counts, h.lo, h.width, 1.0 - q) if h.min_val < 0 else h.min_val
    hi = inverse_cdf(counts, h.lo, h.width, q) if h.max_val > 0 else h.max_val
    return max(lo, h.min_val), min(hi, h.max_val)  # a one-signed side is moot: 0 joins the range


def _kl_chunk(
    counts: torch.Tensor, cands: torch.Tensor, quant_bins: int, outliers: torch.Tensor
) -> torch.Tensor:
    """KL(P || Q) for each candidate bin count ``i`` in ``cands`` (see entropy_threshold)."""
    n = counts.numel()
    j = torch.arange(n)
    valid = j[None, :] < cands[:, None]
    group = torch.where(valid, (j[None, :] * quant_bins) // cands[:, None], quant_bins)
    h = counts[None, :] * valid
    nz = ((counts > 0)[None, :] & valid).to(_F64)
    gsum = torch.zeros(len(cands), quant_bins + 1, dtype=_F64).scatter_add_(1, group, h)
    gcnt = torch.zeros(len(cands), quant_bins + 1, dtype=_F64).scatter_add_(1, group, nz)
    q = torch.gather(gsum / gcnt.clamp_min(1.0), 1, group) * nz
    p = h.clone()
    p[torch.arange(len(cands)), cands - 1] += outliers[cands]
    p = p / p.sum(1, keepdim=True)
    q = q / q.sum(1, keepdim=True).clamp_min(1e-300)
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros((), dtype=_F64))
    return terms.sum(1)


def entropy_threshold(counts: torch.Tensor, width: float, quant_bins: int = 128) -> float:
    """TensorRT's entropy calibration: the ``|x|`` threshold minimizing KL(P || Q).

    For each candidate ``i`` in ``quant_bins .. n`` (threshold ``t_i = i · width``):

    * ``P`` = the first ``i`` bins of the ``|x|`` histogram, with all counts beyond ``t_i`` (the
      outliers that will be clipped) added to bin ``i - 1``;
    * ``Q`` = the first ``i`` bins (without the outliers) merged into ``quant_bins`` groups
      (bin ``j`` → group ``floor(j · quant_bins / i)``) and expanded back: each group's count is
      spread evenly over its *non-empty* bins, empty bins stay 0 — the distribution the quantized
      tensor can express;
    * ``KL = Σ P_j log(P_j / Q_j)`` with both normalized; a bin where ``P > 0`` but ``Q = 0``
      makes it infinite.

    The candidate with the smallest KL wins (ties: the smallest threshold). Vectorized over chunks
    of candidates; ``O(n²)`` work for ``n`` bins.
    """
    n = counts.numel()
    if width <= 0 or float(counts.sum()) <= 0:
        return 0.0
    if n <= quant_bins:
        return n * width
    outliers = torch.cat([counts.flip(0).cumsum(0).flip(0), torch.zeros(1, dtype=_F64)])
    best_kl, best_i = math.inf, n
    for start in range(quant_bins, n + 1, _KL_CHUNK):
        cands = torch.arange(start, min(start + _KL_CHUNK, n + 1))
        kl = _kl_chunk(
            counts[: int(cands[-1])], cands, quant_bins, outliers
        )  # bins past t_i: P/Q 0
        k = int(torch.argmin(kl))
        if float(kl[k]) < best_kl:
            best_kl, best_i = float(kl[k]), int(cands[k])
    return best_i * width


def entropy_range(h: StreamingHistogram, bits: int, symmetric: bool) -> tuple[float, float]:
    """KL thresholds: on ``|x|`` with ``2^(bits-1)`` levels (symmetric), on ``[0, max]`` with
    ``2^bits`` levels (asymmetric, non-negative tensor), else one threshold per side. Exact zeros
    are left out: they quantize without error whatever the threshold."""
    nonneg = h.min_val >= 0.0
    if symmetric or nonneg:
        levels = 2**bits if (nonneg and not symmetric) else 2 ** (bits - 1)
        t = entropy_threshold(*h.fold("abs"), levels)
        return _clamp(h, -t, t)
    t_pos = entropy_threshold(*h.fold("pos"), 2 ** (bits - 1))
    t_neg = entropy_threshold(*h.fold("neg"), 2 ** (bits - 1))
    return _clamp(h, -t_neg, t_pos)


def _prefix(h: StreamingHistogram) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin centers and prefix sums ``[Σ m, Σ m·c, Σ m·c²]`` (shape 3 x (bins + 1))."""
    c, m = h.centers(), h.counts
    sums = torch.stack([m, m * c, m * c * c]).cumsum(1)
    return c, torch.cat([torch.zeros(3, 1, dtype=_F64), sums], 1)


def _clip_errors(h: StreamingHistogram, lo: torch.Tensor, hi: torch.Tensor):
    """Squared clipping error below ``lo`` / above ``hi`` and the counts clipped on each side.

    With bins at centers ``c`` holding ``m`` values: ``Σ_{c<a} m (a - c)² = a²S₀ - 2aS₁ + S₂`` from
    prefix sums, and the mirror image above ``b`` from suffix sums — O(1) per candidate.
    """
    c, pre = _prefix(h)
    kl = torch.searchsorted(c, lo)
    s0, s1, s2 = pre[:, kl]
    err_lo, n_lo = lo * lo * s0 - 2 * lo * s1 + s2, s0
    ku = torch.searchsorted(c, hi, right=True)
    t0, t1, t2 = pre[:, -1:] - pre[:, ku]
    err_hi, n_hi = t2 - 2 * hi * t1 + hi * hi * t0, t0
    return err_lo, n_lo, err_hi, n_hi


def mse_range(
    h: StreamingHistogram, bits: int, symmetric: bool, candidates: int = 512
) -> tuple[float, float]:
    """Range ``[a, b]`` minimizing the expected squared quantization error read from the histogram.

    ``E(a, b) = Σ_{c<a} m (a - c)² + Σ_{c>b} m (c - b)² + N_in · Δ² / 12``: clipped values move
    to the bound; the ``N_in`` values inside get uniform rounding noise of step
    ``Δ = (b - a) / (2^bits - 1)`` (asymmetric) or ``Δ = t / (2^(bits-1) - 1)`` for ``[-t, t]``
    (symmetric); exact zeros, which quantize without error, are not in the histogram's bins.
    Candidates: ``candidates`` evenly spaced thresholds on ``(0, max|x|]`` (symmetric), or a
    ``candidates²`` grid ``a ∈ [min(x_min, 0), 0]`` x ``b ∈ [0, max(x_max, 0)]`` (asymmetric,
    evaluated at once).
    """
    total = float(h.counts.sum())
    if symmetric:
        amax = max(abs(h.min_val), abs(h.max_val))
        if amax <= 0.0:
            return 0.0, 0.0
        t = torch.linspace(amax / candidates, amax, candidates, dtype=_F64)
        e_lo, n_lo, e_hi, n_hi = _clip_errors(h, -t, t)
        err = e_lo + e_hi + (total - n_lo - n_hi) * (t / (2 ** (bits - 1) - 1)) ** 2 / 12
        best = float(t[int(torch.argmin(err))])
        return _clamp(h, -best, best)
    a = torch.linspace(min(h.min_val, 0.0), 0.0, candidates, dtype=_F64)
    b = torch.linspace(0.0, max(h.max_val, 0.0), candidates, dtype=_F64)
    e_lo, n_lo, _, _ = _clip_errors(h, a, a)
    _, _, e_hi, n_hi = _clip_errors(h, b, b)
    step = (b[None, :] - a[:, None]) / (2**bits - 1)
    err = e_lo[:, None] + e_hi[None, :] + (total - n_lo[:, None] - n_hi[None, :]) * step**2 / 12
    k = int(torch.argmin(err))
    return max(float(a[k // candidates]), h.min_val), min(float(b[k % candidates]), h.max_val)

"""A streaming histogram with a growing range, and the density model the range searches read.

The histogram keeps ``bins`` float64 counts over ``[lo, hi]`` (bin width ``w = (hi - lo) / bins``),
starting at the first batch's exact ``[min, max]``. When a later batch falls outside, the range is
widened to cover it (plus ``GROW`` of the new width as headroom, so a slowly drifting range is
re-binned a few times instead of every batch) and the existing counts are *re-histogrammed* into the
new bins with proportional spreading: treating the density as uniform inside each old bin, the
piecewise-linear CDF ``F`` is evaluated at the new edges and differenced, ``c'_k = F(e'_{k+1}) -
F(e'_k)``. That conserves the total count exactly (the sum telescopes) and memory stays ``O(bins)``
whatever the number of samples. A value past the range by at most ``SLACK`` of the width (float
rounding: two runtimes, or a batched and a per-sample run, differ in the last bits) is counted in
the edge bin instead, so re-binning does not depend on rounding. The exact running min/max are
kept beside it, so estimates can be clamped to values that were actually seen.

Exact zeros (ReLU outputs, padding) are counted apart in ``zeros`` rather than binned: 0 is always
exactly representable, so that spike must not steer a clipping search (it would drag a KL threshold
down); percentiles add it back as a point mass at 0.

``fold`` derives one-sided histograms on ``[0, a]`` from ``F``: ``|x|`` via ``G(t) = F(t) - F(-t)``,
the positive part via ``F(t) - F(0)`` and the negative part via ``F(0) - F(-t)``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

__all__ = ["GROW", "SLACK", "StreamingHistogram", "as_numpy"]

logger = logging.getLogger(__name__)

GROW = 0.1  # headroom (fraction of the new width) added to a side that had to grow
SLACK = 1e-5  # overshoot (fraction of the width) counted in the edge bin instead of re-binning
_F64 = torch.float64


class StreamingHistogram:
    """``bins`` counts over ``[lo, hi]`` updated batch by batch; see the module docstring."""

    def __init__(self, bins: int = 2048):
        self.bins = int(bins)
        self.counts: torch.Tensor | None = None
        self.lo = self.hi = 0.0
        self.min_val, self.max_val = float("inf"), float("-inf")
        self.zeros = 0.0
        self.rebins = 0

    @property
    def total(self) -> float:
        """All values seen: binned ones plus exact zeros."""
        return self.zeros + (0.0 if self.counts is None else float(self.counts.sum()))

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.bins

    def edges(self) -> torch.Tensor:
        return torch.linspace(self.lo, self.hi, self.bins + 1, dtype=_F64)

    def centers(self) -> torch.Tensor:
        e = self.edges()
        return (e[:-1] + e[1:]) / 2

    def update(self, x: torch.Tensor | np.ndarray, bmin: float, bmax: float) -> None:
        """Add the values of ``x`` (whose min/max the caller computed and checked finite)."""
        x = as_numpy(x)
        if self.counts is None:
            self.lo, self.hi = bmin, bmax if bmax > bmin else bmin + _tiny(bmin)
            self.counts = torch.zeros(self.bins, dtype=_F64)
        elif bmin < self.lo - SLACK * (self.hi - self.lo) or bmax > self.hi + SLACK * (
            self.hi - self.lo
        ):
            self._grow(bmin, bmax)
        self.min_val, self.max_val = min(self.min_val, bmin), max(self.max_val, bmax)
        if isinstance(x, np.ndarray):
            x = x.reshape(-1).astype(np.float32, copy=False)
            counts = torch.from_numpy(np.bincount(self._bin(x), minlength=self.bins))
            zeros = int(np.count_nonzero(x == 0))
        else:  # a device tensor: binned where it is
            x = x.reshape(-1).float()
            counts = torch.bincount(self._bin(x), minlength=self.bins)
            zeros = int(torch.count_nonzero(x == 0))
        if zeros:  # exact zeros are kept apart: out of the bin they were counted in
            counts[self._zero_bin()] -= zeros
            self.zeros += float(zeros)
        self.counts += counts.to("cpu", _F64)

    def _bin(self, x):
        """Bin index of each value (float32 arithmetic, numpy or torch alike); values within SLACK
        outside [lo, hi] go to the edge bins."""
        idx = (x - np.float32(self.lo)) * np.float32(self.bins / (self.hi - self.lo))
        if isinstance(idx, np.ndarray):
            return np.clip(idx.astype(np.int32), 0, self.bins - 1)
        return idx.to(torch.int32).clamp_(0, self.bins - 1)

    def _zero_bin(self) -> int:
        return int(self._bin(np.zeros(1, dtype=np.float32))[0])

    def _grow(self, bmin: float, bmax: float) -> None:
        lo, hi = min(self.lo, bmin), max(self.hi, bmax)
        pad = GROW * (hi - lo)
        lo, hi = lo - (pad if bmin < self.lo else 0.0), hi + (pad if bmax > self.hi else 0.0)
        new_edges = torch.linspace(lo, hi, self.bins + 1, dtype=_F64)
        self.counts = torch.diff(self.cdf(new_edges)).clamp_min_(0.0)
        self.lo, self.hi = lo, hi
        self.rebins += 1

    def cdf(self, points: torch.Tensor) -> torch.Tensor:
        """``F(p)``: count of non-zero values ``<= p``, each bin's mass spread uniformly over it."""
        cum = torch.cat([torch.zeros(1, dtype=_F64), torch.cumsum(self.counts, 0)])
        pos = (points.to(_F64) - self.lo) / self.width
        idx = pos.floor().clamp(0, self.bins - 1)
        frac = (pos - idx).clamp(0.0, 1.0)
        i = idx.long()
        return cum[i] + frac * self.counts[i]

    def with_zeros(self) -> torch.Tensor:
        """The counts with the exact zeros put back into the bin holding 0."""
        counts = self.counts.clone()
        if self.zeros:
            counts[min(max(int((0.0 - self.lo) / self.width), 0), self.bins - 1)] += self.zeros
        return counts

    def fold(self, side: str = "abs") -> tuple[torch.Tensor, float]:
        """One-sided histogram ``(counts, width)`` of the non-zero values on ``[0, a]``, ``side`` in
        abs (``|x|``), pos (``x > 0``), neg (``-x`` for ``x < 0``); exact zeros are not included."""
        amax = {
            "abs": max(abs(self.min_val), abs(self.max_val)),
            "pos": max(self.max_val, 0.0),
            "neg": max(-self.min_val, 0.0),
        }[side]
        if amax <= 0.0:
            return torch.zeros(self.bins, dtype=_F64), 0.0
        t = torch.linspace(0.0, amax, self.bins + 1, dtype=_F64)
        f0 = self.cdf(torch.zeros(1, dtype=_F64))
        total = self.counts.sum().reshape(1)
        g, side_total = {
            "abs": (lambda: self.cdf(t) - self.cdf(-t), total),
            "pos": (lambda: self.cdf(t) - f0, total - f0),
            "neg": (lambda: f0 - self.cdf(-t), f0),
        }[side]
        g = g()
        g[0], g[-1] = 0.0, side_total[0]  # mass a bin edge model puts past ±a still counts
        return torch.diff(g).clamp_min_(0.0), amax / self.bins

    def nbytes(self) -> int:
        return 0 if self.counts is None else self.counts.numel() * self.counts.element_size()


def as_numpy(x):
    """A CPU tensor as the numpy array sharing its memory (binning and min/max in numpy run on one
    thread: torch's thread pool made these small reductions 10-60x slower on a loaded 2-core host);
    a device tensor stays as it is."""
    if torch.is_tensor(x) and x.device.type == "cpu":
        return (x.float() if x.dtype == torch.bfloat16 else x).detach().numpy()
    return x


def _tiny(v: float) -> float:
    """Width given to a zero-width first batch so the bins are well defined (float32-resolvable)."""
    return max(abs(v) * 1e-6, 1e-12)

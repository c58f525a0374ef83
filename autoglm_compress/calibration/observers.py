"""Streaming range observers: each sees a tensor per calibration batch and keeps O(1) state.

Every observer answers ``range()`` — the float interval ``[lo, hi]`` to quantize (0-d tensors per
tensor, 1-d per channel) — and ``qparams(dtype, symmetric, ...)``, which feeds that range to
:func:`compute_qparams`. Statistics stay target-independent: a target picks dtype/symmetry later.

* :class:`MinMaxObserver` — running ``min`` / ``max`` (per tensor, or per channel along ``axis``).
* :class:`HistogramObserver` — a :class:`StreamingHistogram` of the values (range grown by
  re-binning); the subclasses choose a clipping range from it:
  :class:`PercentileObserver` (``P_p(|x|)``, or the ``p``-th / ``(100-p)``-th percentiles),
  :class:`EntropyObserver` (TensorRT's KL-divergence threshold) and :class:`MSEObserver`
  (minimum expected quantization MSE). ``symmetric=True`` thresholds ``|x|``; otherwise the signed
  distribution is clipped on each side (a non-negative, e.g. post-ReLU, tensor gives ``[0, t]``).

Non-finite values raise :class:`CalibrationError` naming the tensor (observers take ``name``).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from autoglm_compress.calibration.histogram import StreamingHistogram, as_numpy
from autoglm_compress.calibration.qparams import compute_qparams, quant_bits
from autoglm_compress.calibration.search import entropy_range, mse_range, percentile_range
from autoglm_compress.errors import CalibrationError, ConfigError

__all__ = [
    "Observer",
    "MinMaxObserver",
    "HistogramObserver",
    "PercentileObserver",
    "EntropyObserver",
    "MSEObserver",
    "OBSERVERS",
    "make_observer",
]

logger = logging.getLogger(__name__)

Range = tuple[torch.Tensor, torch.Tensor]  # (lo, hi): 0-d per tensor, 1-d per channel


class Observer:
    """Base class: ``observe`` batches, then read ``range()`` / ``qparams(...)``."""

    symmetric_default = False

    def __init__(self, name: str = "tensor"):
        self.name = name

    def observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self, symmetric: bool | None = None, bits: int = 8) -> Range:
        raise NotImplementedError

    def qparams(
        self,
        dtype: str = "int8",
        symmetric: bool = True,
        narrow_range: bool = False,
        reduce_range: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scale float32, zero_point int32)`` for this observer's range under the scheme."""
        lo, hi = self.range(symmetric=symmetric, bits=quant_bits(dtype, reduce_range))
        return compute_qparams(
            lo.numpy(), hi.numpy(), dtype, symmetric, narrow_range, reduce_range, name=self.name
        )

    def state_nbytes(self) -> int:
        """Bytes held in tensors — constant in the number of observed batches."""
        return sum(v.numel() * v.element_size() for v in vars(self).values() if torch.is_tensor(v))

    def _check(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise CalibrationError(
                f"tensor {self.name!r} holds NaN or Inf values during "
                "calibration; check the calibration data and model numerics"
            )

    def _empty(self) -> CalibrationError:
        return CalibrationError(f"tensor {self.name!r} was never observed (empty calibration set?)")


class MinMaxObserver(Observer):
    """``lo = min x``, ``hi = max x`` over everything seen; per channel when ``axis`` is set."""

    def __init__(self, axis: int | None = None, name: str = "tensor"):
        super().__init__(name)
        self.axis = axis
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach()
        if x.numel() == 0:
            return
        if self.axis is None:
            lo, hi = torch.aminmax(x.float())
        else:
            flat = x.float().movedim(self.axis, 0).reshape(x.shape[self.axis], -1)
            lo, hi = torch.aminmax(flat, dim=1)
        self._merge(lo, hi)

    def observe_minmax(self, lo: float, hi: float) -> None:
        """Merge a per-tensor ``[lo, hi]`` reduced elsewhere (onnxruntime) — the same state as
        observing the tensor itself; per-channel observers need the tensor."""
        if self.axis is not None:
            raise ValueError("a per-channel observer needs the tensor, not its range")
        self._merge(torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32))

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self._check(lo, hi)
        if self.min_val is None:
            self.min_val, self.max_val = lo.clone(), hi.clone()
            return
        if lo.shape != self.min_val.shape:
            raise CalibrationError(
                f"tensor {self.name!r}: {lo.numel()} channels on axis "
                f"{self.axis}, earlier batches had {self.min_val.numel()}"
            )
        torch.minimum(self.min_val, lo, out=self.min_val)
        torch.maximum(self.max_val, hi, out=self.max_val)

    def range(self, symmetric: bool | None = None, bits: int = 8) -> Range:
        if self.min_val is None:
            raise self._empty()
        return self.min_val.cpu().clone(), self.max_val.cpu().clone()


class HistogramObserver(Observer):
    """A streaming histogram of the values (``bins`` bins); ``range()`` is the exact min/max.

    Subclasses override :meth:`_search` to pick a clipping range from the histogram. Results are
    cached per ``(symmetric, bits)`` until the next ``observe``.
    """

    def __init__(self, bins: int = 2048, name: str = "tensor", symmetric: bool | None = None):
        super().__init__(name)
        if int(bins) < 16:
            raise ConfigError(f"histogram observer needs at least 16 bins, got {bins}")
        self.hist = StreamingHistogram(bins)
        self.symmetric = self.symmetric_default if symmetric is None else bool(symmetric)
        self._cache: dict[tuple[bool, int], tuple[float, float]] = {}

    def observe(self, x: torch.Tensor | np.ndarray) -> None:
        x = as_numpy(x)
        if isinstance(x, np.ndarray):
            if x.size == 0:
                return
            lo, hi = torch.tensor(float(x.min())), torch.tensor(float(x.max()))
        else:
            if x.numel() == 0:
                return
            lo, hi = torch.aminmax(x.detach().float())
        self._check(lo, hi)
        self.hist.update(x, float(lo), float(hi))
        self._cache.clear()

    def range(self, symmetric: bool | None = None, bits: int = 8) -> Range:
        if self.hist.counts is None:
            raise self._empty()
        key = (self.symmetric if symmetric is None else bool(symmetric), int(bits))
        if key not in self._cache:
            self._cache[key] = self._search(*key)
        lo, hi = self._cache[key]
        return torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)

    def _search(self, symmetric: bool, bits: int) -> tuple[float, float]:
        return self.hist.min_val, self.hist.max_val

    def state_nbytes(self) -> int:
        return super().state_nbytes() + self.hist.nbytes()


class PercentileObserver(HistogramObserver):
    """Clip at the ``percentile``-th percentile: of ``|x|`` (symmetric) or of each tail of ``x``."""

    def __init__(
        self,
        percentile: float = 99.99,
        bins: int = 2048,
        name: str = "tensor",
        symmetric: bool | None = None,
    ):
        super().__init__(bins, name, symmetric)
        if not 50.0 < float(percentile) <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = float(percentile)

    def _search(self, symmetric: bool, bits: int) -> tuple[float, float]:
        return percentile_range(self.hist, self.percentile, symmetric)


class EntropyObserver(HistogramObserver):
    """TensorRT entropy calibration: the threshold minimizing KL(P‖Q) between the clipped ``|x|``
    histogram ``P`` and its ``2^(bits-1)``-level quantized version ``Q``.

    For every candidate threshold ``t_i`` (bin edge ``i`` from 128 up to ``bins``), ``P`` is
    the histogram cut at ``t_i`` with the clipped tail added to its last bin, and ``Q`` merges
    those ``i`` bins into 128 groups and spreads each group's count back over its non-empty bins.
    The ``t_i`` with the smallest KL wins. Symmetric by default (as TensorRT); asymmetric ranges
    search the positive and negative halves separately, and a non-negative tensor uses all
    ``2^bits`` levels on ``[0, t]``. Exact zeros are left out of the search (they quantize
    without error). See :func:`autoglm_compress.calibration.search.entropy_threshold`.


    Guard: the KL optimum can clip the bulk of a discrete or multi-modal distribution (a normalized
    image input whose background sits at the range's edge was cut from [-1, 1] to ±0.125 on the
    digits model, top-1 agreement 5%), so the range never covers less than ``min_coverage`` % of
    the values (percentile range, default 99.9).
    """

    symmetric_default = True

    def __init__(
        self,
        bins: int = 2048,
        name: str = "tensor",
        symmetric: bool | None = None,
        min_coverage: float = 99.9,
    ):
        super().__init__(bins, name, symmetric)
        self.min_coverage = float(min_coverage)

    def _search(self, symmetric: bool, bits: int) -> tuple[float, float]:
        lo, hi = entropy_range(self.hist, bits, symmetric)
        plo, phi = percentile_range(self.hist, self.min_coverage, symmetric)
        return min(lo, plo), max(hi, phi)


class MSEObserver(HistogramObserver):
    """The range minimizing the histogram's expected quantization MSE (clipping + rounding noise).

    ``E(a, b) = Σ_{x<a} (a - x)² + Σ_{x>b} (x - b)² + N_in · Δ²/12`` over candidate ranges; see
    :func:`autoglm_compress.calibration.search.mse_range`.

    ``max_clip``: each side of the range stays at least ``1/max_clip`` of the min/max range's
    (``auto`` uses 1.5): the MSE optimum treats every value alike, while the few largest
    activations often carry the signal (see :mod:`autoglm_compress.calibration.auto_method`).
    """

    def __init__(
        self,
        bins: int = 2048,
        name: str = "tensor",
        symmetric: bool | None = None,
        candidates: int = 512,
        max_clip: float | None = None,
    ):
        super().__init__(bins, name, symmetric)
        self.candidates = int(candidates)
        if max_clip is not None and not float(max_clip) >= 1.0:
            raise ConfigError(f"max_clip must be at least 1, got {max_clip}")
        self.max_clip = None if max_clip is None else float(max_clip)

    def _search(self, symmetric: bool, bits: int) -> tuple[float, float]:
        lo, hi = mse_range(self.hist, bits, symmetric, self.candidates)
        if self.max_clip is not None:
            lo = min(lo, self.hist.min_val / self.max_clip)
            hi = max(hi, self.hist.max_val / self.max_clip)
        return lo, hi


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "entropy": EntropyObserver,
    "mse": MSEObserver,
}


def make_observer(method: str, name: str = "tensor", **kwargs) -> Observer:
    """An observer for ``method`` (minmax, percentile, entropy, mse); ``kwargs`` go to its class."""
    cls = OBSERVERS.get(method)
    if cls is None:
        raise ConfigError(f"unknown calibration method {method!r}; valid: {', '.join(OBSERVERS)}")
    try:
        return cls(name=name, **kwargs)
    except TypeError as e:
        raise ConfigError(f"calibration method {method!r}: {e}") from None

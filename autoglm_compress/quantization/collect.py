"""Run the FP32 IR over calibration feeds and observe every float activation.

One pass over the data feeds a streaming observer per tensor (memory independent of the sample count)
plus a per-channel mean and max|x| of each compute node's input (bias correction, SmoothQuant). The
result is target-independent: each target turns the ranges into qparams under its own scheme.

Backends (``backend="auto"`` picks the first that applies):

* ``onnxruntime`` (CPU): the model augmented by :mod:`autoglm_compress.calibration.ort_stats`.
  ranges and channel statistics are reduced inside the graph (only ``[lo, hi]`` and the channel
  vectors leave the session); histogram tensors stream at most 64 Ki seeded draws a sample plus
  their exact min/max (:mod:`autoglm_compress.calibration.subsample`; a smaller tensor whole).
  The statistics equal the executor's, which bins every value, within the subsampling bound
  (tests/test_ort_stats.py, tests/test_calib_cost.py).
* ``executor``: the torch executor's hook (on CUDA when present, vmap-batched where that is exact);
  used when onnxruntime cannot run the model, or with a GPU.

Observers see *chunks*: the tensors of ``k`` consecutive samples concatenated on their first axis
(0-d tensors stacked), ``k = clamp(chunk_bytes // bytes of one sample's activations, 1, batch)`` —
memory is bounded by one chunk, not by samples × tensors, and every backend feeds identical chunks
(histograms depend on them). Channel statistics of a tensor whose one-sample rank is ``r ≥ 2`` are
taken over all axes but ``c`` (:func:`autoglm_compress.ir_ops.activation_channel_axis`: 1 for Conv
inputs, ``r-1`` for Gemm/MatMul); a chunk's mean is
weighted by its ``k`` samples, so the result is the mean over all samples.

NaN anywhere is a CalibrationError naming the tensor. A tensor holding ±inf but no NaN (an additive
attention mask built with -inf, or with ±FLT_MAX: ``MASK_SENTINEL``) has no int8 range: it gets no observer, is listed in
``CalibrationStats.infinite``, and the quantizer leaves it in float.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import resource
import time
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir
import torch
from tqdm import tqdm

from autoglm_compress import progress_lines
from autoglm_compress.calibration.auto_method import (
    AUTO,
    HISTOGRAM_METHOD,
    MAX_CLIP,
    histogram_tensors,
)
from autoglm_compress.calibration.histogram import as_numpy
from autoglm_compress.calibration.observers import make_observer
from autoglm_compress.errors import CalibrationError
from autoglm_compress.ir_ops import activation_channel_axis, is_weighted
from autoglm_compress.quantization.collect_backends import run_executor, run_ort

__all__ = ["CHUNK_BYTES", "CalibrationStats", "collect_stats"]

logger = logging.getLogger(__name__)
CHUNK_BYTES = 128 << 20  # activations of one observed chunk
# A finite value this large is a mask sentinel (torch.finfo(float32).min, which the dynamo exporter
# writes where the TorchScript exporter writes -inf), not a range: the tensor is left in float.
MASK_SENTINEL = 1e30


@dataclasses.dataclass
class CalibrationStats:
    method: str
    samples: int
    observers: dict  # tensor name -> observer
    channel_means: dict  # tensor name -> np.ndarray [C] (inputs of Conv/Gemm/MatMul)
    channel_absmax: dict  # same keys: per-channel max |x| (SmoothQuant)
    seconds: float
    peak_rss_mb: float
    holdout: list = dataclasses.field(default_factory=list)  # first samples, for fallback decisions
    source: object = None  # the calibration source (QAT reads its samples again)
    backend: str = "executor"
    infinite: list = dataclasses.field(default_factory=list)  # ±inf tensors: no range, float
    cache: dict = dataclasses.field(default_factory=dict)  # decisions derived from these stats

    def ranges(
        self, symmetric: bool | None = None, bits: int = 8, names=None
    ) -> dict[str, tuple[float, float]]:
        """Chosen float range per tensor (only ``names`` when given: histogram searches cost time);
        histogram methods search it for the target's symmetry."""
        out = {}
        for name, obs in self.observers.items():
            if names is not None and name not in names:
                continue
            lo, hi = obs.range(symmetric=symmetric, bits=bits)
            out[name] = (float(lo), float(hi))
        return out


def _mean_targets(model: ir.Model) -> dict[str, int]:
    """Activation inputs of weighted ops -> their channel axis (``ir_ops``: 1 for convs, -1 for
    Gemm/MatMul rows, 0 for Gemm with transA)."""
    names: dict[str, int] = {}
    for node in model.graph:
        if is_weighted(node) and node.inputs and node.inputs[0] is not None:
            names[node.inputs[0].name] = activation_channel_axis(node)
    return names


class _Accumulator:
    """Observers plus channel mean/absmax sums; fed chunks (tensors) or reduced ranges.

    ``histogram``: with ``method="auto"``, the tensors observed by a ``mse`` histogram (every other
    one by min/max). Under the hybrid onnxruntime plan the channel statistics of every tensor come
    from the in-graph reductions (``means_from_reduce``) and chunks only feed the histograms.
    """

    def __init__(self, method: str, mean_axes: dict[str, int], observer_kw: dict,
                 histogram: set[str] | None = None):
        self.method, self.mean_axes, self.kw = method, mean_axes, observer_kw
        self.histogram = set(histogram or ())
        self.means_from_reduce = False
        self.observers: dict = {}
        self.means: dict[str, torch.Tensor] = {}
        self.absmax: dict[str, torch.Tensor] = {}
        self.infinite: set[str] = set()  # tensors holding ±inf (attention masks): left in float
        self.pending: dict[str, list[float]] = {}  # running [lo, hi] of reduced tensors

    def finish(self) -> None:
        for name, (lo, hi) in self.pending.items():
            self._obs(name).observe_minmax(lo, hi)
        self.pending.clear()

    def _make(self, name: str, histogram: bool):
        method, kw = self.method, self.kw
        if method == AUTO and histogram:
            method, kw = HISTOGRAM_METHOD, {"max_clip": MAX_CLIP, **kw}
        elif method == AUTO:
            method, kw = "minmax", {k: v for k, v in kw.items() if k == "axis"}
        return make_observer(method, name=name, **kw)

    def probe(self) -> None:
        """Build each kind of observer once: a bad method or option fails before any work."""
        self._make("probe", True)
        self._make("probe", False)

    def _obs(self, name: str):
        if name not in self.observers:
            self.observers[name] = self._make(name, name in self.histogram)
        return self.observers[name]

    def chunk(self, name: str, t: torch.Tensor, count: int, rank: int) -> None:
        """``t``: ``count`` samples' tensors of one-sample rank ``rank`` in chunk layout."""
        if not torch.is_floating_point(t) or t.numel() == 0 or name in self.infinite:
            return
        t = t.detach()
        a = as_numpy(t)  # numpy on CPU: one thread, no pool overhead on small chunks
        if float(a.min()) <= -MASK_SENTINEL or float(a.max()) >= MASK_SENTINEL:
            return self._drop(name)
        try:
            self._obs(name).observe(t)
        except CalibrationError:
            if bool(torch.isnan(t).any()):
                raise
            return self._drop(name)
        if name in self.mean_axes and rank >= 2 and not self.means_from_reduce:
            axis = self.mean_axes[name] % rank
            dims = [d for d in range(rank) if d != axis]
            self._add(
                name, t.mean(dim=dims, dtype=torch.float64) * count, t.abs().amax(dim=dims).float()
            )

    def reduced(self, name: str, lo: float, hi: float, finite: bool, mean, amax) -> None:
        """One sample reduced in onnxruntime (lo > hi: an empty tensor, skipped like the hook)."""
        if lo > hi or name in self.infinite:
            return
        if not finite or math.isnan(lo) or math.isnan(hi):
            make_observer("minmax", name=name).observe_minmax(float("nan"), hi)  # raises
        if not (math.isfinite(lo) and math.isfinite(hi)) or max(-lo, hi) >= MASK_SENTINEL:
            return self._drop(name)
        if name not in self.histogram:  # a histogram tensor's observer is fed the tensor itself
            self._merge_range(name, lo, hi)
        if mean is not None:
            self._add(name, torch.from_numpy(mean), torch.from_numpy(amax))

    def _merge_range(self, name: str, lo: float, hi: float) -> None:
        """Plain floats here, one observer update at the end: the same min/max."""
        r = self.pending.get(name)
        if r is None:
            self.pending[name] = [lo, hi]
        else:
            r[0], r[1] = min(r[0], lo), max(r[1], hi)

    def _drop(self, name: str) -> None:
        """±inf or mask-sentinel values (no NaN): no int8 range exists; the quantizer leaves the
        tensor in float."""
        logger.info("tensor %r holds ±inf or ±%.0e values: it stays in float", name,
                    MASK_SENTINEL)
        self.infinite.add(name)
        for d in (self.observers, self.means, self.absmax, self.pending):
            d.pop(name, None)

    def _add(self, name: str, m: torch.Tensor, a: torch.Tensor) -> None:
        self.means[name] = self.means[name] + m if name in self.means else m
        self.absmax[name] = torch.maximum(self.absmax[name], a) if name in self.absmax else a


class _Feeds:
    """The feed iterator (``limit`` samples at most) with a progress bar and a one-item push-back."""

    def __init__(self, feeds: Iterable, limit: int | None, progress: bool):
        self.it = iter(feeds if limit is None else itertools.islice(feeds, limit))
        self.back: list = []
        self.n = 0
        self.bar = tqdm(
            total=limit, desc="calibrating", unit="sample", disable=not progress, leave=False
        )
        self.limit, self.started = limit, time.perf_counter()

    def __iter__(self):
        return self

    def __next__(self):
        if self.back:
            return self.back.pop()
        f = next(self.it)
        self.n += 1
        self.bar.update(1)
        if self.limit:
            progress_lines.tick("calibrating", self.n, self.limit, self.started, "samples")
        return f

    def send_back(self, f) -> None:
        self.back.append(f)


def _pick(backend: str, observer_kw: dict) -> str:
    from autoglm_compress.runtime.device import default_device

    if backend != "auto":
        return backend
    if "axis" in observer_kw or default_device().type == "cuda":
        return "executor"
    return "onnxruntime"


def collect_stats(
    model: ir.Model,
    feeds: Iterable[dict[str, np.ndarray]],
    method: str = "minmax",
    *,
    limit: int | None = None,
    progress: bool = False,
    batch: int = 16,
    backend: str = "auto",
    chunk_bytes: int = CHUNK_BYTES,
    **observer_kw,
) -> CalibrationStats:
    """Observe every float tensor of ``model`` over ``feeds``; ``backend``: auto, onnxruntime,
    executor (see the module docstring)."""
    hist = histogram_tensors(model) if method == AUTO else set()
    acc = _Accumulator(method, _mean_targets(model), observer_kw, hist)
    acc.probe()  # a bad method or option fails before any work
    t0 = time.perf_counter()
    it = _Feeds(feeds, limit, progress)
    used = _pick(backend, observer_kw)
    reduce = "axis" not in observer_kw
    if used == "onnxruntime" and not run_ort(model, acc, it, batch, chunk_bytes, reduce):
        used = "executor"
    if used == "executor":
        run_executor(model, acc, it, batch, chunk_bytes)
    it.bar.close()
    acc.finish()
    n = it.n
    if n == 0:
        raise CalibrationError("empty calibration set: no samples were read; check --calib")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = CalibrationStats(
        method,
        n,
        acc.observers,
        {k: (v / n).float().cpu().numpy() for k, v in acc.means.items()},
        {k: v.cpu().numpy() for k, v in acc.absmax.items()},
        round(time.perf_counter() - t0, 3),
        round(peak, 1),
        backend=used,
        infinite=sorted(acc.infinite),
    )
    logger.info(
        "calibration (%s): %d samples, %d tensors, %.2fs",
        used,
        n,
        len(acc.observers),
        stats.seconds,
    )
    return stats

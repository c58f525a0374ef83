"""Calibration backends: run the FP32 IR over feeds in onnxruntime or the torch executor and hand
byte-bounded chunks (or in-graph reductions) to the accumulator of :mod:`.collect`, which documents
the chunking rules both backends follow."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["chunk_size", "run_executor", "run_ort"]

logger = logging.getLogger(__name__)


def _layout(ts: list[torch.Tensor]) -> torch.Tensor:
    """One-sample tensors -> chunk layout: concatenated on axis 0 (0-d: stacked)."""
    if len(ts) == 1:
        return ts[0] if ts[0].dim() else ts[0].reshape(1)
    return torch.cat(ts) if ts[0].dim() else torch.stack(ts)


def chunk_size(sample: dict, chunk_bytes: int, batch: int) -> int:
    nbytes = sum(t.numel() * t.element_size() for t in sample.values() if torch.is_tensor(t))
    return int(max(1, min(batch, chunk_bytes // max(nbytes, 1))))


HISTOGRAM_VALUES = 1 << 16  # values one sample adds to a tensor's range histogram (see below)


def _histogram_sample(t):
    """At most ``HISTOGRAM_VALUES`` values of one sample's tensor (an array), evenly strided
    through it, plus its exact min and max (so the observed range stays exact), flattened. 128
    samples still give each tensor's 2048-bin histogram 8 M values; a 96×120×120 map alone had
    1.4 M a sample, and binning them was 44 % of an EfficientNet-Lite1 INT8 run
    (docs/decisions.md). numpy: torch's reductions and strided copies were 20× slower here."""
    flat = np.asarray(t).reshape(-1)  # always 1-D: a tensor whose size varies by sample concatenates
    n = flat.size
    if n <= HISTOGRAM_VALUES or flat.dtype.kind != "f":
        return flat
    step = -(-n // HISTOGRAM_VALUES)
    return np.concatenate([flat[step // 2::step], [flat.min(), flat.max()]]).astype(flat.dtype)


def _observe_samples(acc, samples: Iterator[dict], chunk_bytes: int, batch: int):
    """Group one-sample tensor dicts into byte-bounded chunks and observe each chunk. When only
    histograms are fed (``acc.means_from_reduce``: channel statistics and plain ranges came from
    in-graph reductions) each tensor is thinned to :data:`HISTOGRAM_VALUES` values first."""
    pending: dict[str, list] = {}
    size, k = None, 0
    thin = acc.means_from_reduce
    for outs in samples:
        if thin:
            outs = {n: _histogram_sample(t.numpy() if torch.is_tensor(t) else t)
                    for n, t in outs.items()}
        outs = {n: torch.from_numpy(t) if isinstance(t, np.ndarray) else t for n, t in outs.items()}
        size = size or chunk_size(outs, chunk_bytes, batch)
        for n, t in outs.items():
            pending.setdefault(n, []).append(t)
        k += 1
        if k == size:
            _flush(acc, pending, k)
            pending, k = {}, 0
    if k:
        _flush(acc, pending, k)


def _flush(acc, pending: dict[str, list], k: int) -> None:
    for name in list(pending):
        ts = pending.pop(name)
        acc.chunk(name, _layout(ts), k, ts[0].dim())
        del ts


def _executor_samples(ex, feeds) -> Iterator[dict]:
    for feed in feeds:
        captured: dict = {}

        def hook(name, node, t, captured=captured):
            if torch.is_floating_point(t) and t.numel():
                captured[name] = t.detach()

        ex.run(feed, hook=hook)
        yield captured


def _batched_runner(ex):
    """chunk of feeds -> {tensor: [k, *one-sample shape]} of every float tensor, by vmapping the
    executor over the stacked feeds."""

    def run(chunk: list[dict]) -> dict[str, torch.Tensor]:
        keys = list(chunk[0])
        stacked = [torch.from_numpy(np.stack([f[k] for f in chunk])).to(ex.device) for k in keys]

        def one(*xs):
            captured = {}

            def hook(name, node, t):
                if torch.is_floating_point(t) and t.numel():
                    captured[name] = t

            ex.run(dict(zip(keys, xs)), hook=hook)
            return captured

        return torch.func.vmap(one)(*stacked)

    return run


def _vmap_ok(ex, runner, chunk: list[dict], output_names: list[str]) -> bool:
    """vmap must reproduce per-sample execution exactly on the first chunk, or it is not used."""
    try:
        batched = runner(chunk[:2])
        for i, feed in enumerate(chunk[:2]):
            single = ex.run(feed)
            for name in output_names:
                if name in batched and not torch.allclose(
                    batched[name][i], single[name], rtol=1e-5, atol=1e-6
                ):
                    return False
        return True
    except Exception as e:  # noqa: BLE001 - any op vmap cannot batch: fall back per sample
        logger.info(
            "batched calibration unavailable (%s); running sample by sample", type(e).__name__
        )
        return False


def run_executor(model, acc, feeds, batch: int, chunk_bytes: int) -> None:
    from autoglm_compress.runtime import TorchExecutor

    ex = TorchExecutor(model)
    first = next(feeds, None)
    if first is None:
        return
    size = chunk_size(next(_executor_samples(ex, [first])), chunk_bytes, batch)
    head = [first, *itertools.islice(feeds, size - 1)]
    runner = _batched_runner(ex)
    outputs = [v.name for v in model.graph.outputs]
    if len(head) < 2 or not _vmap_ok(ex, runner, head, outputs):
        samples = _executor_samples(ex, itertools.chain(head, feeds))
        _observe_samples(acc, samples, chunk_bytes, batch)
        return
    chunk = head
    while chunk:
        for name, t in runner(chunk).items():
            r = t.dim() - 1  # [k, b, ...] -> [k·b, ...]: the samples concatenated
            acc.chunk(name, t.reshape(-1, *t.shape[2:]) if r >= 1 else t, len(chunk), r)
        chunk = list(itertools.islice(feeds, size))


def _hybrid_samples(acc, runner, head: dict, feeds) -> Iterator[dict]:
    for feed in itertools.chain([None], feeds):
        res = head if feed is None else runner.run(feed)
        for name, r in res.items():
            acc.reduced(name, *r)
        yield runner.streamed


def run_ort(model, acc, feeds, batch: int, chunk_bytes: int, reduce: bool) -> bool:
    """False (nothing consumed) when onnxruntime cannot calibrate this model."""
    from autoglm_compress.calibration import ort_stats

    first = next(feeds, None)
    if first is None:
        return True
    try:
        if reduce:
            runner = ort_stats.ReduceRunner(model, acc.mean_axes, stream=acc.histogram)
        else:
            runner = ort_stats.TensorRunner(model)
        head = runner.run(first)
    except Exception as e:  # noqa: BLE001 - whatever onnxruntime refuses, the executor runs
        logger.info("calibration in onnxruntime unavailable (%s); using the executor", e)
        feeds.send_back(first)
        return False
    if reduce and runner.stream:  # hybrid: reduce everything, stream the histogram tensors
        acc.means_from_reduce = True
        _observe_samples(acc, _hybrid_samples(acc, runner, head, feeds), chunk_bytes, batch)
        return True
    if reduce:
        for feed in itertools.chain([None], feeds):
            for name, r in (head if feed is None else runner.run(feed)).items():
                acc.reduced(name, *r)
        return True
    samples = itertools.chain([head], (runner.run(f) for f in feeds))
    _observe_samples(acc, samples, chunk_bytes, batch)
    return True

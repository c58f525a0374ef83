"""Calibration backends: run the FP32 IR over feeds in onnxruntime or the torch executor and hand
byte-bounded chunks (or in-graph reductions) to the accumulator of :mod:`.collect`, which documents
the chunking rules both backends follow."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import numpy as np
import torch

from autoglm_compress.calibration.auto_method import AUTO

__all__ = ["chunk_size", "run_executor", "run_ort"]

logger = logging.getLogger(__name__)


def _layout(ts: list[torch.Tensor]) -> torch.Tensor:
    """One-sample tensors -> chunk layout: concatenated on axis 0 (0-d: stacked); CPU tensors by
    numpy (one thread: torch's pool was 10x slower on small tensors on a loaded host)."""
    if len(ts) == 1:
        return ts[0] if ts[0].dim() else ts[0].reshape(1)
    if ts[0].device.type == "cpu" and ts[0].dtype != torch.bfloat16:  # numpy has no bfloat16
        arrays = [t.detach().numpy() for t in ts]
        return torch.from_numpy(np.concatenate(arrays) if ts[0].dim() else np.stack(arrays))
    return torch.cat(ts) if ts[0].dim() else torch.stack(ts)


def chunk_size(sample: dict, chunk_bytes: int, batch: int) -> int:
    nbytes = sum(t.numel() * t.element_size() for t in sample.values() if torch.is_tensor(t))
    return int(max(1, min(batch, chunk_bytes // max(nbytes, 1))))


def _observe_samples(acc, samples: Iterator[dict], chunk_bytes: int, batch: int):
    """Group one-sample tensor dicts into byte-bounded chunks and observe each chunk."""
    pending: dict[str, list] = {}
    size, k = None, 0
    for outs in samples:
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
        if reduce:  # histograms (auto: of its histogram tensors, else of all) from streams
            stream = acc.histogram
            if acc.method not in ("minmax", AUTO):
                stream = ort_stats.observed_tensors(model)
            runner = ort_stats.ReduceRunner(model, acc.mean_axes, stream=stream)
        else:
            runner = ort_stats.TensorRunner(model)
        head = runner.run(first)
    except Exception as e:  # noqa: BLE001 - whatever onnxruntime refuses, the executor runs
        logger.info("calibration in onnxruntime unavailable (%s); using the executor", e)
        feeds.send_back(first)
        return False
    if reduce and runner.stream:  # hybrid: reduce everything, stream the histogram tensors
        acc.means_from_reduce, acc.histogram = True, set(runner.stream)
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

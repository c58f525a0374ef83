"""Run the FP32 IR in the torch executor over calibration feeds and observe every float activation.

One pass over the data feeds a streaming observer per tensor (memory independent of the sample count)
plus a per-channel mean of each compute node's input (for bias correction). The result is
target-independent: each target turns the ranges into qparams under its own scheme.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import time
from typing import Iterable

import numpy as np
import onnx_ir as ir
import torch
from tqdm import tqdm

from autoglm_compress.calibration.observers import make_observer
from autoglm_compress.errors import CalibrationError

__all__ = ["CalibrationStats", "collect_stats"]

logger = logging.getLogger(__name__)


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
    """Inputs of weighted ops -> their channel axis (1 for convs, -1 for Gemm/MatMul)."""
    names: dict[str, int] = {}
    for node in model.graph:
        if (
            node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")
            and node.inputs[0] is not None
        ):
            names[node.inputs[0].name] = 1 if node.op_type.startswith("Conv") else -1
    return names


def _batched_runner(ex, output_names: list[str]):
    """Run a batch-1 IR over a chunk of samples at once with ``torch.func.vmap``; returns a function
    chunk -> {tensor name: [B, *per-sample shape]} of every float tensor, or None if it cannot."""

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


def _chunks(feeds, limit: int | None, size: int):
    chunk, n = [], 0
    for feed in feeds:
        if limit is not None and n >= limit:
            break
        chunk.append(feed)
        n += 1
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def collect_stats(
    model: ir.Model,
    feeds: Iterable[dict[str, np.ndarray]],
    method: str = "minmax",
    *,
    limit: int | None = None,
    progress: bool = False,
    batch: int = 16,
    **observer_kw,
) -> CalibrationStats:
    from autoglm_compress.runtime import TorchExecutor

    ex = TorchExecutor(model)
    observers: dict = {}
    means: dict[str, torch.Tensor] = {}
    absmax: dict[str, torch.Tensor] = {}
    mean_names = _mean_targets(model)
    t0 = time.perf_counter()

    def observe(name, t, count=1):
        """``t``: one sample's tensor, or ``count`` samples stacked on a new leading axis."""
        if not torch.is_floating_point(t) or t.numel() == 0:
            return None
        if count > 1 and t.dim() >= 2:  # [B, b, C, ...] -> [B·b, C, ...]: one batch of samples
            t = t.reshape(-1, *t.shape[2:])
        if name not in observers:
            observers[name] = make_observer(method, name=name, **observer_kw)
        observers[name].observe(t.detach())
        if name in mean_names and t.dim() >= 2:
            axis = mean_names[name] % t.dim()
            dims = [d for d in range(t.dim()) if d != axis]
            m = t.detach().double().mean(dim=dims) * count
            a = t.detach().abs().amax(dim=dims).float()
            means[name] = means[name] + m if name in means else m
            absmax[name] = torch.maximum(absmax[name], a) if name in absmax else a
        return None

    outputs = [v.name for v in model.graph.outputs]
    runner, use_vmap = _batched_runner(ex, outputs), None
    n = 0
    bar = tqdm(total=limit, desc="calibrating", unit="sample", disable=not progress, leave=False)
    for chunk in _chunks(feeds, limit, max(1, batch)):
        if use_vmap is None:
            use_vmap = len(chunk) > 1 and _vmap_ok(ex, runner, chunk, outputs)
        if use_vmap and len(chunk) > 1:
            for name, t in runner(chunk).items():
                observe(name, t, len(chunk))
        else:
            for feed in chunk:
                ex.run(feed, hook=lambda name, node, t: observe(name, t))
        n += len(chunk)
        bar.update(len(chunk))
    bar.close()
    if n == 0:
        raise CalibrationError("empty calibration set: no samples were read; check --calib")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = CalibrationStats(
        method,
        n,
        observers,
        {k: (v / n).float().cpu().numpy() for k, v in means.items()},
        {k: v.cpu().numpy() for k, v in absmax.items()},
        round(time.perf_counter() - t0, 3),
        round(peak, 1),
    )
    logger.info("calibration: %d samples, %d tensors, %.2fs", n, len(observers), stats.seconds)
    return stats

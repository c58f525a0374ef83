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


def collect_stats(
    model: ir.Model,
    feeds: Iterable[dict[str, np.ndarray]],
    method: str = "minmax",
    *,
    limit: int | None = None,
    progress: bool = False,
    **observer_kw,
) -> CalibrationStats:
    from autoglm_compress.runtime import TorchExecutor

    ex = TorchExecutor(model)
    observers: dict = {}
    means: dict[str, torch.Tensor] = {}
    absmax: dict[str, torch.Tensor] = {}
    mean_names = _mean_targets(model)
    t0 = time.perf_counter()

    def hook(name, node, t):
        if not torch.is_floating_point(t) or t.numel() == 0:
            return None
        if name not in observers:
            observers[name] = make_observer(method, name=name, **observer_kw)
        observers[name].observe(t.detach())
        if name in mean_names and t.dim() >= 2:
            axis = mean_names[name] % t.dim()
            dims = [d for d in range(t.dim()) if d != axis]
            m = t.detach().double().mean(dim=dims)
            a = t.detach().abs().amax(dim=dims).float()
            means[name] = means[name] + m if name in means else m
            absmax[name] = torch.maximum(absmax[name], a) if name in absmax else a
        return None

    n = 0
    for feed in tqdm(
        feeds, total=limit, desc="calibrating", unit="sample", disable=not progress, leave=False
    ):
        if limit is not None and n >= limit:
            break
        ex.run(feed, hook=hook)
        n += 1
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

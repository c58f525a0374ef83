"""Fidelity metrics (artifact vs FP32 reference) and side-by-side latency."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

__all__ = ["fidelity", "compare_latency"]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def fidelity(
    ref: list[list[np.ndarray]],
    got: list[list[np.ndarray]],
    names: list[str],
    labels: np.ndarray | None = None,
) -> dict:
    """Per-output cosine, max/mean abs error and, for [N, C] logits, top-1 agreement (and accuracy).

    ``ref``/``got``: per sample, a list of outputs in graph order.
    """
    out: dict = {"samples": len(ref), "outputs": {}}
    for k, name in enumerate(names):
        r = np.stack([s[k] for s in ref]).astype(np.float64)
        g = np.stack([s[k] for s in got]).astype(np.float64)
        err = np.abs(r - g)
        m = {
            "cosine": round(_cos(r, g), 6),
            "max_abs_err": float(err.max()) if err.size else 0.0,
            "mean_abs_err": float(err.mean()) if err.size else 0.0,
            "finite": bool(np.isfinite(g).all()),
        }
        logits_r, logits_g = r.reshape(len(ref), -1), g.reshape(len(ref), -1)
        if logits_r.shape[1] > 1 and r.size // len(ref) == logits_r.shape[1] and k == 0:
            top_r, top_g = logits_r.argmax(1), logits_g.argmax(1)
            m["top1_agreement"] = float((top_r == top_g).mean())
            if labels is not None and len(labels) == len(ref):
                m["accuracy_ref"] = float((top_r == labels).mean())
                m["accuracy"] = float((top_g == labels).mean())
        out["outputs"][name] = m
    out["cosine_min"] = min(m["cosine"] for m in out["outputs"].values())
    return out


def compare_latency(
    runners: dict[str, Callable[[], object]], *, repeats: int = 30, warmup: int = 3
) -> dict[str, dict]:
    """Median/p90 milliseconds per runner, timed interleaved so both see the same machine load."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for k, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {
        k: {
            "median_ms": round(statistics.median(v), 4),
            "p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))], 4),
        }
        for k, v in times.items()
    }

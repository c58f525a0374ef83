"""Fidelity metrics (artifact vs FP32 reference), degenerate-output flags, side-by-side latency.

Per output, over all samples flattened together: cosine ``<r, g> / (|r| |g|)`` (0.0 where it is
undefined: a zero or non-finite vector on either side — agreement is then not shown, never
assumed), max and mean ``|r - g|``. An output is *flagged* when the comparison cannot vouch for
the artifact: the artifact's values are non-finite, all zero or one constant value
(``non_finite``/``zero``/``constant``); the reference's likewise (``reference_non_finite``,
``reference_zero``, ``reference_constant``: a model that outputs zeros matches any artifact that
outputs zeros); shapes differ (``shape_mismatch``) or nothing was compared (``reference_empty``).
A flagged output fails the ``--min-cosine`` gate whatever its cosine. A reference that is the same
for every sample (but not constant) only gets a warning (anchor/prior outputs are like that).

Top-1 agreement is reported only for *class-score* outputs (and not where the reference is
flagged: argmax of a constant agrees with anything): floating point, per-sample shape
``(C,)`` or ``(1, C)`` with ``C > 1`` after dropping a leading batch dim (of 1, or of the model's
batch ``b``: then each sample holds ``b`` rows). Labels (one per row) go with the first such
output: ``accuracy`` and ``accuracy_ref`` there.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

import numpy as np

__all__ = [
    "accuracy_output",
    "class_count",
    "class_outputs",
    "compare_latency",
    "degenerate_flags",
    "fidelity",
    "flag_messages",
    "reference_flags",
]

logger = logging.getLogger(__name__)

_FLAG_TEXT = {
    "non_finite": "the artifact outputs NaN/Inf",
    "zero": "the artifact outputs only zeros",
    "constant": "the artifact outputs one constant value",
    "reference_non_finite": "the FP32 reference outputs NaN/Inf",
    "reference_zero": "the FP32 reference outputs only zeros, so agreement proves nothing",
    "reference_constant": "the FP32 reference outputs one constant value, so agreement proves nothing",
    "reference_empty": "the FP32 reference output is empty, nothing was compared",
    "shape_mismatch": "artifact and reference output shapes differ",
}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two flattened arrays; 0.0 where undefined (zero norm or non-finite values)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return 0.0
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    if np.array_equal(a, b):
        return 1.0  # exactly, not 1 − 1e-16 (a gate at 1.0 passes identical outputs)
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def degenerate_flags(values: np.ndarray, prefix: str = "") -> list[str]:
    """``non_finite``, ``zero`` or ``constant`` (one value everywhere, size > 1) for ``values``."""
    if values.size == 0:
        return []
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        return [prefix + "non_finite"]
    if not values.any():
        return [prefix + "zero"]
    if values.size > 1 and (values.ravel() == values.ravel()[0]).all():
        return [prefix + "constant"]
    return []


def class_count(shape: tuple[int, ...], dtype: np.dtype, batch: int = 1) -> int | None:
    """C when one sample's output of ``shape`` holds class scores ((C,) or (1, C), C > 1), else None."""
    shape = tuple(shape)
    if np.dtype(dtype).kind != "f" or not shape:
        return None
    if shape[0] in (1, batch) and len(shape) > 1:
        shape = shape[1:]
    if len(shape) == 2 and shape[0] == 1:
        shape = shape[1:]
    return shape[0] if len(shape) == 1 and shape[0] > 1 else None


def class_outputs(
    outputs: list[list[np.ndarray]], names: list[str], batch: int = 1
) -> dict[str, int]:
    """Names of the class-score outputs (graph order) → class count, from per-sample outputs."""
    found = {}
    for k, name in enumerate(names):
        shapes = {np.shape(s[k]) for s in outputs}
        if len(shapes) == 1:
            c = class_count(shapes.pop(), np.asarray(outputs[0][k]).dtype, batch)
            if c is not None:
                found[name] = c
    return found


def _flat(samples: list[np.ndarray]) -> np.ndarray:
    if not samples:
        return np.zeros(0)
    return np.concatenate([np.asarray(s).ravel() for s in samples])


def _compare(r_samples: list[np.ndarray], g_samples: list[np.ndarray]) -> dict:
    r, g = _flat(r_samples), _flat(g_samples)
    flags = degenerate_flags(g) + degenerate_flags(r, "reference_")
    if r.size == 0:
        flags.append("reference_empty")
    if any(np.shape(a) != np.shape(b) for a, b in zip(r_samples, g_samples)):
        flags.append("shape_mismatch")
        return {
            "cosine": 0.0,
            "max_abs_err": float("inf"),
            "mean_abs_err": float("inf"),
            "finite": bool(np.isfinite(g).all()),
            "flags": flags,
        }
    err = np.abs(r.astype(np.float64) - g.astype(np.float64))
    m = {
        "cosine": float(_cos(r, g)),  # unrounded: a gate at 1.0 must see 0.9999996
        "max_abs_err": float(err.max()) if err.size else 0.0,
        "mean_abs_err": float(err.mean()) if err.size else 0.0,
        "finite": bool(np.isfinite(g).all()),
        "flags": flags,
    }
    if len(r_samples) > 1 and not flags and all(np.array_equal(s, r_samples[0]) for s in r_samples):
        m["warnings"] = ["reference_same_for_all_samples"]
    return m


def _top1(r_samples, g_samples, n_classes: int, labels: np.ndarray | None, m: dict) -> str | None:
    """Fill top-1 agreement (and accuracy when ``labels`` fit); returns why labels were not used."""
    top_r = np.concatenate([np.reshape(s, (-1, n_classes)).argmax(1) for s in r_samples])
    top_g = np.concatenate([np.reshape(s, (-1, n_classes)).argmax(1) for s in g_samples])
    m["top1_agreement"] = float((top_r == top_g).mean())
    if labels is None:
        return None
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(top_r):
        return f"{len(labels)} labels for {len(top_r)} samples"
    m["accuracy_ref"] = float((top_r == labels).mean())
    m["accuracy"] = float((top_g == labels).mean())
    return None


def fidelity(
    ref: list[list[np.ndarray]],
    got: list[list[np.ndarray]],
    names: list[str],
    labels: np.ndarray | None = None,
    batch: int = 1,
) -> dict:
    """Per-output cosine, max/mean abs error and flags; top-1 (and accuracy) on class-score outputs.

    ``ref``/``got``: per sample, a list of outputs in graph order. ``labels``: class indices, one
    per sample (per row when ``batch`` > 1), scored on the first class-score output.
    """
    out: dict = {"samples": len(ref), "outputs": {}}
    classes = class_outputs(ref, names, batch)
    label_output = next(iter(classes), None)
    for k, name in enumerate(names):
        r_s, g_s = [s[k] for s in ref], [s[k] for s in got]
        m = _compare(r_s, g_s)
        blocked = [f for f in m["flags"] if f.startswith("reference_") or f == "shape_mismatch"]
        if name in classes and blocked:
            if name == label_output and labels is not None:
                out["labels_ignored"] = f"output {name!r} flagged {blocked[0]}"
        elif name in classes:
            why = _top1(r_s, g_s, classes[name], labels if name == label_output else None, m)
            if why:
                out["labels_ignored"] = why
        out["outputs"][name] = m
    if labels is not None and label_output is None:
        out["labels_ignored"] = "no output holds class scores ((C,) or (1, C) per sample)"
    out["class_outputs"] = list(classes)
    out["flagged"] = {n: m["flags"] for n, m in out["outputs"].items() if m["flags"]}
    out["cosine_min"] = min((m["cosine"] for m in out["outputs"].values()), default=0.0)
    if out["flagged"]:
        logger.debug("fidelity flags: %s", out["flagged"])
    return out


def reference_flags(ref: list[list[np.ndarray]], names: list[str]) -> dict[str, list[str]]:
    """Flags of the FP32 reference alone (known right after the reference run, before any work)."""
    flags = {
        n: degenerate_flags(_flat([s[k] for s in ref]), "reference_") for k, n in enumerate(names)
    }
    return {n: f for n, f in flags.items() if f}


def flag_messages(fid: dict, where: str = "") -> list[str]:
    """One phrase per flagged output of a ``fidelity`` result: output name, flag and its meaning."""
    pre = f"{where}: " if where else ""
    return [
        f"{pre}output {name!r} {flag} ({_FLAG_TEXT.get(flag, flag)})"
        for name, flags in fid.get("flagged", {}).items()
        for flag in flags
    ]


def accuracy_output(fid: dict) -> tuple[str, dict] | None:
    """(name, metrics) of the class-score output that carries ``accuracy``, or None."""
    return next(((n, m) for n, m in fid.get("outputs", {}).items() if "accuracy" in m), None)


def compare_latency(
    runners: dict[str, Callable[[], object]],
    *,
    repeats: int = 30,
    warmup: int = 3,
    budget_s: float = 2.0,
    min_repeats: int = 7,
) -> dict[str, dict]:
    """Median/p90 milliseconds per runner, timed interleaved so both see the same machine load:
    ``repeats`` rounds, or fewer (at least ``min_repeats``) once ``budget_s`` seconds are spent."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    start = time.perf_counter()
    for i in range(repeats):
        if i >= min_repeats and time.perf_counter() - start > budget_s:
            break  # big models: enough interleaved rounds for a median, not minutes of timing
        for k, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {
        k: {
            "median_ms": round(statistics.median(v), 4),
            "p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))], 4),
            "repeats": len(v),
        }
        for k, v in times.items()
    }

"""Fidelity metrics (artifact vs FP32 reference), degenerate-output flags, side-by-side latency.

Per output, cosine ``<r, g> / (|r| |g|)`` (0.0 where it is undefined: a zero or non-finite vector
on either side — agreement is then not shown, never assumed) **per verification sample**:
``cosine_min`` (the worst sample, its index in ``cosine_min_sample``) and ``cosine_mean``; and
``cosine_pooled``, one cosine over every sample flattened together (a large sample dominates it:
a detector whose worst sample was at 0.196 pooled to 0.999). A sample whose FP32 reference norm is
below ``NEAR_ZERO`` (1e-3) × the median reference norm of that output over the samples is skipped
(counted in ``samples_near_zero``): there the cosine measures rounding noise, not the model. Also
max and mean ``|r - g|``. The run's figures are the worst output's: ``cosine_min``,
``cosine_mean``, ``cosine_pooled``, and ``worst`` (output, sample) where ``cosine_min`` was met.
``--min-cosine`` gates ``cosine_min`` (``--min-cosine-of mean``: ``cosine_mean``).

An output is *flagged* when the comparison cannot vouch for the artifact: the artifact's values
are non-finite, all zero or one constant value (``non_finite``/``zero``/``constant``); the
reference's likewise (``reference_non_finite``, ``reference_zero``, ``reference_constant``: a
model that outputs zeros matches any artifact that outputs zeros); shapes differ
(``shape_mismatch``) or nothing was compared (``reference_empty``). A flagged output fails the
``--min-cosine`` gate whatever its cosine. A reference that is the same for every sample (but not
constant) only gets a warning (anchor/prior outputs are like that).

Each output has a ``kind``. ``class_scores``: floating point, per-sample shape ``(C,)`` or
``(1, C)`` with ``C > 1`` after dropping a leading batch dim (of 1, or of the model's batch ``b``:
then each sample holds ``b`` rows), unless it reads as an embedding. ``embedding``: such a vector
whose name says so (``embed``, ``hidden``, ``pooler``, ``feature``, ``sentence``, ``encod``,
``latent``), whose FP32 rows all have unit L2 norm (and are not probabilities), or which the graph
makes by normalizing or pooling (``LpNormalization``, ``Div``, ``ReduceMean``/``ReduceSum``/
``ReduceL2``, ``LayerNormalization``, ``Tanh``, through reshapes); and any float output of rank
≥ 2 per sample named so or made by ``LayerNormalization`` (hidden states). Everything else is
``other`` (boxes, maps, images). Top-1 agreement is reported only for ``class_scores`` (and not
where the reference is flagged: argmax of a constant agrees with anything); labels (one per row)
go with the first such output: ``accuracy`` and ``accuracy_ref`` there. ``embedding`` outputs get
``nn_agreement`` instead: for each sample, whether the artifact's nearest neighbour by cosine
among the *other* samples' FP32 embeddings is FP32's own nearest neighbour (retrieval rank-1
agreement; needs ≥ 3 samples of one shape).
"""

from __future__ import annotations

import logging
import re
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
    "gated_cosine",
    "merge_worst",
    "nn_agreement",
    "output_kinds",
    "output_producers",
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


NEAR_ZERO = 1e-3  # a reference sample below this × the output's median sample norm is skipped
EMBED_NAMES = re.compile(r"embed|hidden|pooler|feature|sentence|encod|latent", re.IGNORECASE)
# the op that makes an output, looked through these (layout and casts change no meaning)
_PASS_THROUGH = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast",
                           "Transpose", "QuantizeLinear", "DequantizeLinear"})
_EMBED_OPS = frozenset({"LpNormalization", "Div", "ReduceMean", "ReduceSum", "ReduceL2",
                        "LayerNormalization", "Tanh"})
_HIDDEN_OPS = frozenset({"LayerNormalization"})


def class_count(shape: tuple[int, ...], dtype: np.dtype, batch: int = 1) -> int | None:
    """C when one sample's output of ``shape`` has the shape of class scores ((C,) or (1, C),
    C > 1), else None (:func:`output_kinds` also asks whether it reads as an embedding)."""
    shape = tuple(shape)
    if np.dtype(dtype).kind != "f" or not shape:
        return None
    if shape[0] in (1, batch) and len(shape) > 1:
        shape = shape[1:]
    if len(shape) == 2 and shape[0] == 1:
        shape = shape[1:]
    return shape[0] if len(shape) == 1 and shape[0] > 1 else None


def output_producers(model) -> dict[str, str]:
    """Graph output name → the op type that makes it, looked through reshapes/casts/Q-DQ."""
    out = {}
    for v in model.graph.outputs:
        node = v.producer()
        while node is not None and node.op_type in _PASS_THROUGH and node.inputs \
                and node.inputs[0] is not None:
            node = node.inputs[0].producer()
        if node is not None:
            out[v.name] = node.op_type
    return out


def _unit_rows(samples: list[np.ndarray], c: int) -> bool:
    """Every row has L2 norm 1 (± 1e-3) and not every row is a probability vector."""
    rows = np.concatenate([np.reshape(s, (-1, c)) for s in samples]).astype(np.float64)
    if not np.isfinite(rows).all():
        return False
    unit = np.abs(np.linalg.norm(rows, axis=1) - 1.0) < 1e-3
    probs = (rows >= 0).all(axis=1) & (np.abs(rows.sum(axis=1) - 1.0) < 1e-3)
    return bool(unit.all() and not probs.all())


def output_kinds(
    outputs: list[list[np.ndarray]], names: list[str], batch: int = 1,
    producers: dict[str, str] | None = None,
) -> dict[str, str]:
    """Output name → ``class_scores``, ``embedding`` or ``other`` (the rule: module doc), from
    per-sample outputs and, when given, the op making each output (:func:`output_producers`)."""
    producers = producers or {}
    kinds = {}
    for k, name in enumerate(names):
        samples = [np.asarray(s[k]) for s in outputs]
        shapes = {s.shape for s in samples}
        kind = "other"
        if samples and samples[0].dtype.kind == "f":
            op = producers.get(name)
            c = class_count(samples[0].shape, samples[0].dtype, batch) if len(shapes) == 1 else None
            if c is not None:
                embedded = (EMBED_NAMES.search(name) or op in _EMBED_OPS
                            or _unit_rows(samples, c))
                kind = "embedding" if embedded else "class_scores"
            elif max(s.ndim for s in samples) >= 2 and (EMBED_NAMES.search(name)
                                                        or op in _HIDDEN_OPS):
                kind = "embedding"
        kinds[name] = kind
    return kinds


def class_outputs(
    outputs: list[list[np.ndarray]], names: list[str], batch: int = 1,
    producers: dict[str, str] | None = None,
) -> dict[str, int]:
    """Names of the class-score outputs (graph order) → class count, from per-sample outputs."""
    kinds = output_kinds(outputs, names, batch, producers)
    return {n: class_count(np.shape(outputs[0][k]), np.asarray(outputs[0][k]).dtype, batch)
            for k, n in enumerate(names) if kinds[n] == "class_scores"}


def _flat(samples: list[np.ndarray]) -> np.ndarray:
    if not samples:
        return np.zeros(0)
    return np.concatenate([np.asarray(s).ravel() for s in samples])


def _per_sample(r_samples: list[np.ndarray], g_samples: list[np.ndarray], m: dict) -> None:
    """``cosine_min`` (+ its sample), ``cosine_mean``, ``samples_near_zero`` into ``m``."""
    norms = np.array([np.linalg.norm(np.asarray(s, np.float64).ravel()) if np.isfinite(s).all()
                      else np.inf for s in r_samples])
    typical = float(np.median(norms)) if norms.size else 0.0
    skip = norms < NEAR_ZERO * typical if np.isfinite(typical) and typical > 0 else \
        np.zeros(len(norms), bool)
    cos = {i: _cos(np.asarray(r), np.asarray(g))
           for i, (r, g) in enumerate(zip(r_samples, g_samples)) if not skip[i]}
    m["samples_near_zero"] = int(skip.sum())
    if not cos:
        m.update(cosine_min=0.0, cosine_min_sample=None, cosine_mean=0.0)
        return
    worst = min(cos, key=cos.__getitem__)
    m.update(cosine_min=cos[worst], cosine_min_sample=int(worst),
             cosine_mean=float(np.mean(list(cos.values()))))


def _compare(r_samples: list[np.ndarray], g_samples: list[np.ndarray]) -> dict:
    r, g = _flat(r_samples), _flat(g_samples)
    flags = degenerate_flags(g) + degenerate_flags(r, "reference_")
    if r.size == 0:
        flags.append("reference_empty")
    if any(np.shape(a) != np.shape(b) for a, b in zip(r_samples, g_samples)):
        flags.append("shape_mismatch")
        return {
            "cosine_min": 0.0, "cosine_min_sample": 0, "cosine_mean": 0.0, "cosine_pooled": 0.0,
            "samples_near_zero": 0,
            "max_abs_err": float("inf"),
            "mean_abs_err": float("inf"),
            "finite": bool(np.isfinite(g).all()),
            "flags": flags,
        }
    err = np.abs(r.astype(np.float64) - g.astype(np.float64))
    m: dict = {}
    _per_sample(r_samples, g_samples, m)
    m.update({
        "cosine_pooled": float(_cos(r, g)),  # unrounded: a gate at 1.0 must see 0.9999996
        "max_abs_err": float(err.max()) if err.size else 0.0,
        "mean_abs_err": float(err.mean()) if err.size else 0.0,
        "finite": bool(np.isfinite(g).all()),
        "flags": flags,
    })
    if len(r_samples) > 1 and not flags and all(np.array_equal(s, r_samples[0]) for s in r_samples):
        m["warnings"] = ["reference_same_for_all_samples"]
    return m


def _unit(rows: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, n, out=np.zeros_like(rows), where=n > 0)


def nn_agreement(r_samples: list[np.ndarray], g_samples: list[np.ndarray]) -> dict:
    """Retrieval rank-1 agreement of an embedding output: per sample i, the artifact's nearest
    neighbour (cosine of its ``g_i`` with the FP32 ``r_j``, j ≠ i) against FP32's own (``r_i``
    with ``r_j``, j ≠ i). Near-zero references (see ``NEAR_ZERO``) take no part.
    ``{"nn_agreement", "nn_samples"}``, or ``{"nn_skipped": why}``."""
    if len({np.shape(s) for s in r_samples}) != 1:
        return {"nn_skipped": "samples differ in shape"}
    r = np.stack([np.asarray(s, np.float64).ravel() for s in r_samples])
    g = np.stack([np.asarray(s, np.float64).ravel() for s in g_samples])
    if not (np.isfinite(r).all() and np.isfinite(g).all()):
        return {"nn_skipped": "non-finite values"}
    norms = np.linalg.norm(r, axis=1)
    keep = norms >= NEAR_ZERO * float(np.median(norms)) if norms.size else norms > 0
    keep &= norms > 0
    r, g = _unit(r[keep]), _unit(g[keep])
    if len(r) < 3:
        return {"nn_skipped": f"{len(r)} usable samples (needs 3)"}
    own, art = r @ r.T, g @ r.T
    np.fill_diagonal(own, -np.inf)
    np.fill_diagonal(art, -np.inf)
    agree = own.argmax(axis=1) == art.argmax(axis=1)
    return {"nn_agreement": float(agree.mean()), "nn_samples": int(len(r))}


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
    producers: dict[str, str] | None = None,
) -> dict:
    """Per-output per-sample cosines (min with its sample, mean), the pooled cosine, max/mean abs
    error and flags; top-1 (and accuracy) on class-score outputs, nearest-neighbour agreement on
    embeddings (the rules: module doc).

    ``ref``/``got``: per sample, a list of outputs in graph order. ``labels``: class indices, one
    per sample (per row when ``batch`` > 1), scored on the first class-score output.
    ``producers``: output name → the op making it (:func:`output_producers`), for the kinds.
    """
    out: dict = {"samples": len(ref), "outputs": {}}
    kinds = output_kinds(ref, names, batch, producers)
    classes = class_outputs(ref, names, batch, producers)
    label_output = next(iter(classes), None)
    for k, name in enumerate(names):
        r_s, g_s = [s[k] for s in ref], [s[k] for s in got]
        m = _compare(r_s, g_s)
        m["kind"] = kinds[name]
        blocked = [f for f in m["flags"] if f.startswith("reference_") or f == "shape_mismatch"]
        if name in classes and blocked:
            if name == label_output and labels is not None:
                out["labels_ignored"] = f"output {name!r} flagged {blocked[0]}"
        elif name in classes:
            why = _top1(r_s, g_s, classes[name], labels if name == label_output else None, m)
            if why:
                out["labels_ignored"] = why
        elif kinds[name] == "embedding" and not blocked:
            m.update(nn_agreement(r_s, g_s))
        out["outputs"][name] = m
    if labels is not None and label_output is None:
        out["labels_ignored"] = ("no output holds class scores ((C,) or (1, C) per sample, not an "
                                 "embedding)")
    out["class_outputs"] = list(classes)
    out["flagged"] = {n: m["flags"] for n, m in out["outputs"].items() if m["flags"]}
    outs = out["outputs"]
    for stat in ("cosine_min", "cosine_mean", "cosine_pooled"):
        out[stat] = min((m[stat] for m in outs.values()), default=0.0)
    if outs:
        name = min(outs, key=lambda n: outs[n]["cosine_min"])
        out["worst"] = {"output": name, "sample": outs[name]["cosine_min_sample"],
                        "cosine": outs[name]["cosine_min"]}
    if out["flagged"]:
        logger.debug("fidelity flags: %s", out["flagged"])
    return out


def gated_cosine(fid: dict, of: str = "min") -> float:
    """The figure ``--min-cosine`` compares: the worst output's per-sample minimum (``of="min"``)
    or its per-sample mean (``"mean"``); NaN when not measured."""
    return fid.get("cosine_mean" if of == "mean" else "cosine_min", float("nan"))


def merge_worst(fid: dict, other: dict, where: str) -> None:
    """Fold a second run of the same artifact (``other``: another kernel set) into ``fid``: its
    run-level ``cosine_min``/``cosine_mean``/``cosine_pooled`` become the worse of the two, and
    ``worst`` names ``where`` when the second run holds the worst sample."""
    if other.get("cosine_min", 1.0) < fid.get("cosine_min", 1.0):
        fid["worst"] = {**other.get("worst", {}), "in": where}
    for stat in ("cosine_min", "cosine_mean", "cosine_pooled"):
        if stat in other:
            fid[stat] = min(fid.get(stat, other[stat]), other[stat])


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

"""Eval-label conventions: what a ``labels`` array may hold, checked before any work.

Accepted: class indices, one per sample — integers, booleans, or floats holding integers
(``3.0``) — shape ``(N,)`` or ``(N, 1)``; or one row per sample ``(N, C)`` with ``C > 1``
(one-hot, probabilities, scores), read as ``argmax`` over the row, which must have a single
maximum. Refused, in one line naming the file, what was expected and what it holds: a count
other than the number of samples, strings/objects, NaN/Inf, negative or fractional indices,
rank > 2, and (once the model's class count ``C`` is known) indices ``>= C``.
"""

from __future__ import annotations

import logging

import numpy as np

from autoglm_compress.errors import CalibrationError, ConfigError

__all__ = ["check_eval_labels", "check_labels_fit", "normalize_labels"]

logger = logging.getLogger(__name__)

_EXPECT = "class indices (N,) or one-hot/probability rows (N, C)"


def _refuse(origin: str, got: str) -> CalibrationError:
    return CalibrationError(f"{origin}: labels must be {_EXPECT}; got {got}")


def _rows_to_indices(a: np.ndarray, origin: str) -> np.ndarray:
    """(N, C) one-hot / probability rows → argmax; a row without a single maximum is refused."""
    top = a.max(axis=1, keepdims=True)
    ties = (a == top).sum(axis=1)
    bad = np.flatnonzero(ties != 1)
    if bad.size:
        row = int(bad[0])
        raise _refuse(origin, f"row {row} of the (N, C) labels has no single maximum: {a[row][:8]}")
    return a.argmax(axis=1).astype(np.int64)


def _to_indices(a: np.ndarray, origin: str) -> np.ndarray:
    if a.dtype.kind == "f":
        frac = np.flatnonzero(a != np.round(a))
        if frac.size:
            i = int(frac[0])
            raise _refuse(origin, f"non-integer value {float(a[i])} at index {i}")
    idx = a.astype(np.int64)
    neg = np.flatnonzero(idx < 0)
    if neg.size:
        i = int(neg[0])
        raise _refuse(origin, f"negative class index {int(idx[i])} at index {i}")
    return idx


def normalize_labels(labels, n_samples: int, origin: str) -> np.ndarray:
    """Labels as int64 class indices of length ``n_samples``; CalibrationError when they are not."""
    a = np.asarray(labels)
    if a.dtype.kind not in "biuf":
        raise _refuse(origin, f"dtype {a.dtype} (strings/objects are not class indices)")
    if a.ndim == 0 or a.ndim > 2:
        raise _refuse(origin, f"an array of shape {a.shape} (rank {a.ndim})")
    if len(a) != n_samples:
        raise _refuse(origin, f"{len(a)} labels for {n_samples} samples (one label per sample)")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        i = int(np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(axis=1))[0])
        raise _refuse(origin, f"NaN/Inf in the labels (sample {i})")
    if a.ndim == 2 and a.shape[1] > 1:
        return _rows_to_indices(a, origin)
    return _to_indices(a.reshape(-1).astype(np.int64 if a.dtype.kind == "b" else a.dtype), origin)


def check_labels_fit(labels: np.ndarray, n_classes: int, origin: str = "labels") -> None:
    """Refuse class indices ``>= n_classes`` (the model's class-score output width)."""
    labels = np.asarray(labels)
    over = np.flatnonzero(labels >= n_classes)
    if over.size:
        i = int(over[0])
        raise CalibrationError(
            f"{origin}: label {int(labels[i])} at index {i} is out of range: the model's "
            f"class-score output has {n_classes} classes (0..{n_classes - 1}); fix the labels"
        )


def check_eval_labels(
    labels: np.ndarray | None,
    reference_outputs: list[list[np.ndarray]],
    names: list[str],
    origin: str,
    need_accuracy: bool = False,
    batch: int = 1,
    producers: dict[str, str] | None = None,
) -> str | None:
    """After the reference run, before any work: the output labels are scored on, checked.

    Returns that output's name (the first class-score output, as :func:`metrics.output_kinds`
    decides with ``producers``), or None. ConfigError when
    ``need_accuracy`` (``--max-drop``) and there are no labels or no class-score output;
    CalibrationError when a label index is out of that output's class range.
    """
    from autoglm_compress.metrics import class_outputs

    classes = class_outputs(reference_outputs, names, batch, producers)
    if need_accuracy and labels is None:
        raise ConfigError(
            "--max-drop needs labelled eval data: --eval DATA.npz with a 'labels' array"
        )
    if labels is None:
        return None
    if not classes:
        shapes = ", ".join(
            f"{n} {tuple(np.shape(reference_outputs[0][k]))}" for k, n in enumerate(names)
        )
        msg = (
            f"{origin}: labels given but no output holds class scores ((C,) or (1, C) per "
            f"sample, not an embedding; outputs: {shapes})"
        )
        if need_accuracy:
            raise ConfigError(msg + "; --max-drop cannot be measured, drop it")
        logger.warning("%s; accuracy is not reported", msg)
        return None
    name, n_classes = next(iter(classes.items()))
    check_labels_fit(labels, n_classes, origin)
    return name

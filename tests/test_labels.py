"""Eval labels: indices, one-hot/probability rows, and every refusal as one CalibrationError line."""

from __future__ import annotations

import numpy as np
import pytest

from autoglm_compress.errors import CalibrationError, ConfigError
from autoglm_compress.labels import check_eval_labels, check_labels_fit, normalize_labels

ORIGIN = "'eval.npz'"


@pytest.mark.parametrize(
    "labels",
    [
        np.array([2, 0, 1, 2]),
        np.array([2, 0, 1, 2], np.uint8),
        np.array([2.0, 0.0, 1.0, 2.0], np.float32),
        np.array([[2], [0], [1], [2]]),
        np.eye(3)[[2, 0, 1, 2]],  # one-hot float
        np.eye(3, dtype=bool)[[2, 0, 1, 2]],  # one-hot bool
        np.array([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.0, 0.4, 0.6]]),
        [2, 0, 1, 2],
    ],
    ids=["int", "uint8", "float", "column", "onehot", "onehot_bool", "probs", "list"],
)
def test_accepted_forms(labels):
    got = normalize_labels(labels, 4, ORIGIN)
    assert got.dtype == np.int64 and got.tolist() == [2, 0, 1, 2]


def test_bool_indices_are_0_and_1():
    assert normalize_labels(np.array([True, False]), 2, ORIGIN).tolist() == [1, 0]


@pytest.mark.parametrize(
    "labels,n,fragment",
    [
        (np.arange(3), 4, "3 labels for 4 samples"),
        (np.array(["cat", "dog"]), 2, "dtype <U3"),
        (np.array([1, None], object), 2, "dtype object"),
        (np.array([1.0, np.nan]), 2, "NaN/Inf in the labels (sample 1)"),
        (np.array([[0.0, 1.0], [np.inf, 0.0]]), 2, "NaN/Inf in the labels (sample 1)"),
        (np.array([1, -1, 0]), 3, "negative class index -1 at index 1"),
        (np.array([1.0, 2.5]), 2, "non-integer value 2.5 at index 1"),
        (np.zeros((2, 3, 4)), 2, "shape (2, 3, 4) (rank 3)"),
        (np.array(3), 1, "shape () (rank 0)"),
        (np.array([[0.5, 0.5], [1.0, 0.0]]), 2, "row 0 of the (N, C) labels has no single maximum"),
        (np.array([[0, 0, 0], [0, 1, 0]]), 2, "row 0 of the (N, C) labels has no single maximum"),
    ],
    ids=[
        "length",
        "strings",
        "object",
        "nan",
        "inf_rows",
        "negative",
        "fractional",
        "rank3",
        "scalar",
        "tie",
        "empty_row",
    ],
)
def test_refused_in_one_line(labels, n, fragment):
    with pytest.raises(CalibrationError) as e:
        normalize_labels(labels, n, ORIGIN)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{ORIGIN}: labels must be class indices")
    assert fragment in msg, msg
    assert e.value.exit_code == 2


def test_check_labels_fit():
    check_labels_fit(np.array([0, 9]), 10)
    with pytest.raises(CalibrationError, match=r"label 10 at index 1 is out of range.*10 classes"):
        check_labels_fit(np.array([3, 10, 2]), 10, ORIGIN)


def _ref(*shapes):
    rng = np.random.default_rng(0)
    return [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]


def test_check_eval_labels_picks_first_class_output():
    ref = _ref((1, 22, 40), (1, 10), (1, 5))
    names = ["boxes", "logits", "aux"]
    assert check_eval_labels(np.array([1, 9, 0]), ref, names, ORIGIN, True) == "logits"
    with pytest.raises(CalibrationError, match="label 10 at index 2"):
        check_eval_labels(np.array([1, 9, 10]), ref, names, ORIGIN, True)
    assert check_eval_labels(None, ref, names, ORIGIN, False) is None


def test_check_eval_labels_refuses_max_drop_without_class_scores():
    ref = _ref((1, 22, 40))
    with pytest.raises(ConfigError, match=r"no output holds class scores.*boxes \(1, 22, 40\)"):
        check_eval_labels(np.arange(3), ref, ["boxes"], ORIGIN, need_accuracy=True)
    with pytest.raises(ConfigError, match="--max-drop needs labelled eval data"):
        check_eval_labels(None, ref, ["boxes"], ORIGIN, need_accuracy=True)
    assert check_eval_labels(np.arange(3), ref, ["boxes"], ORIGIN) is None  # only a warning

"""Eval-data conventions through the CLI: label forms accepted, bad labels refused before any work
(exit 2, one line, no artifact, no report), accuracy on a fixed-batch model scored per row."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from autoglm_compress.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL = EXAMPLES / "digits_cnn.pt"


@pytest.fixture(scope="module")
def digits():
    d = np.load(EXAMPLES / "digits_eval.npz")
    return d["x"][:64], d["labels"][:64]


def _compress(tmp_path, eval_path, *extra):
    out = tmp_path / "out"
    rc = main(
        [str(MODEL), "--fp16", "--eval", str(eval_path), "-o", str(out), "--latency-repeats", "2"]
        + list(extra)
    )
    return rc, out


def test_one_hot_labels_score_like_indices(tmp_path, digits):
    x, y = digits
    np.savez(tmp_path / "onehot.npz", x=x, labels=np.eye(10, dtype=np.float32)[y])
    rc, out = _compress(tmp_path, tmp_path / "onehot.npz", "--max-drop", "0.05")
    assert rc == 0
    fid = json.loads((out / "report.json").read_text())["artifacts"][0]["fidelity"]
    m = next(iter(fid["outputs"].values()))
    assert m["accuracy_ref"] > 0.9 and abs(m["accuracy"] - m["accuracy_ref"]) < 0.05


@pytest.mark.parametrize(
    "labels, message",
    [
        (lambda y: y[:-3], "length|labels"),
        (lambda y: np.array([str(v) for v in y]), "string|str|dtype"),
        (lambda y: np.where(np.arange(len(y)) == 5, np.nan, y.astype(float)), "NaN"),
        (lambda y: y + 10, "class"),
    ],
    ids=["wrong-length", "strings", "nan", "out-of-range"],
)
def test_bad_labels_refused_before_any_work(tmp_path, digits, capsys, labels, message):
    x, y = digits
    np.savez(tmp_path / "bad.npz", x=x, labels=labels(y))
    rc, out = _compress(tmp_path, tmp_path / "bad.npz", "--max-drop", "0.01")
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert re.search(message, err, re.IGNORECASE), err
    assert not out.exists() or not list(out.glob("*"))


def test_max_drop_without_class_scores_is_refused(tmp_path):
    """A hidden-state output has no top-1: --max-drop cannot be measured → exit 2 up front."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    g = h.make_graph(
        [h.make_node("Relu", ["x"], ["y"])],
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 6, 16])],
        [h.make_tensor_value_info("y", T.FLOAT, [1, 6, 16])],
    )
    path = tmp_path / "enc.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    np.savez(tmp_path / "e.npz", x=np.ones((4, 1, 6, 16), np.float32), labels=np.arange(4))
    out = tmp_path / "o"
    rc = main([str(path), "--eval", str(tmp_path / "e.npz"), "--max-drop", "0.1", "-o", str(out)])
    assert rc == 2
    assert not (out / "report.json").exists()


def test_a_lone_array_under_another_name_is_taken_with_a_note(tmp_path, caplog):
    """A single-input model takes a single array whatever its name — and says so (issue 29)."""
    import logging

    from autoglm_compress import load
    from autoglm_compress.inputs import load_npz_feeds

    model = load(str(MODEL))
    name = model.graph.inputs[0].name
    x = np.zeros((3, *[d if isinstance(d, int) else 1 for d in model.graph.inputs[0].shape][1:]),
                 np.float32)
    np.savez(tmp_path / "d.npz", images=x)
    with caplog.at_level(logging.WARNING, logger="autoglm_compress.inputs"):
        feeds, _ = load_npz_feeds(tmp_path / "d.npz", model)
    assert len(feeds) == 3 and list(feeds[0]) == [name]
    assert f"array 'images' taken for the model's only input {name!r}" in caplog.text

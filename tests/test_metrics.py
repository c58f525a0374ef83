"""Fidelity: degenerate-output flags, top-1 only on class scores, labels, and the quality gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from autoglm_compress.gates import below
from autoglm_compress.gates import quality_gate as _quality_gate
from autoglm_compress.metrics import (
    accuracy_output,
    class_count,
    degenerate_flags,
    fidelity,
    flag_messages,
    reference_flags,
)
from autoglm_compress.targets.base import Artifact

RNG = np.random.default_rng(0)


def _samples(n: int, *shape: int, scale: float = 1.0) -> list[np.ndarray]:
    return [(RNG.standard_normal(shape) * scale).astype(np.float32) for _ in range(n)]


def _fid(ref_outs, got_outs, names, labels=None, batch=1):
    ref = [list(s) for s in zip(*ref_outs)]
    got = [list(s) for s in zip(*got_outs)]
    return fidelity(ref, got, names, labels, batch)


def test_zero_reference_is_flagged_not_a_perfect_match():
    """A ViT with a zero-initialised head: all-zero outputs used to read cosine 1.0, top-1 1.0."""
    zeros = [np.zeros((1, 10), np.float32) for _ in range(4)]
    fid = _fid([zeros], [zeros], ["logits"], labels=np.array([1, 2, 3, 4]))
    m = fid["outputs"]["logits"]
    assert m["cosine_pooled"] == 0.0 and fid["cosine_min"] == 0.0
    assert m["flags"] == ["zero", "reference_zero"]
    assert "top1_agreement" not in m and "accuracy" not in m
    assert fid["flagged"] == {"logits": ["zero", "reference_zero"]}
    assert fid["labels_ignored"] == "output 'logits' flagged reference_zero"


def test_constant_reference_and_bad_artifacts_are_flagged():
    const = [np.full((1, 10), 0.5, np.float32) for _ in range(3)]
    ok = _samples(3, 1, 10)
    nan = [s.copy() for s in ok]
    nan[1][0, 3] = np.nan
    zero = [np.zeros_like(s) for s in ok]
    fid = _fid([const, ok, ok, ok], [const, nan, zero, const], ["a", "b", "c", "d"])
    out = fid["outputs"]
    assert out["a"]["flags"] == ["constant", "reference_constant"] and out["a"]["cosine_pooled"] == 1.0
    assert out["b"]["flags"] == ["non_finite"] and out["b"]["cosine_pooled"] == 0.0
    assert out["c"]["flags"] == ["zero"] and out["c"]["cosine_pooled"] == 0.0
    assert out["d"]["flags"] == ["constant"]
    assert out["b"]["finite"] is False and out["c"]["finite"] is True
    msgs = flag_messages(fid, "m.onnx")
    assert len(msgs) == 5
    assert msgs[1].startswith("m.onnx: output 'a' reference_constant (the FP32 reference")


def test_clean_outputs_have_no_flags_and_exact_errors():
    ref = _samples(5, 1, 10)
    got = [s + np.float32(0.01) for s in ref]
    fid = _fid([ref], [got], ["logits"])
    m = fid["outputs"]["logits"]
    assert m["flags"] == [] and fid["flagged"] == {} and "warnings" not in m
    assert m["max_abs_err"] == pytest.approx(0.01, abs=1e-6)
    assert m["mean_abs_err"] == pytest.approx(0.01, abs=1e-6)
    assert 0.999 < m["cosine_pooled"] < 1.0 and 0.999 < m["cosine_min"] <= m["cosine_mean"] < 1.0


def test_same_output_for_every_sample_is_a_warning_only():
    anchors = [np.arange(12, dtype=np.float32).reshape(1, 3, 4)] * 3
    fid = _fid([anchors], [anchors], ["anchors"])
    m = fid["outputs"]["anchors"]
    assert m["flags"] == [] and m["warnings"] == ["reference_same_for_all_samples"]
    assert m["cosine_pooled"] == pytest.approx(1.0, abs=1e-12) == m["cosine_min"]


@pytest.mark.parametrize(
    "shape,batch,want",
    [
        ((1, 10), 1, 10),
        ((10,), 1, 10),
        ((1, 1, 10), 1, 10),
        ((4, 10), 4, 10),
        ((4, 10), 1, None),  # [seq, hidden] without a batch dim: not class scores
        ((1, 22, 50), 1, None),  # a detector's boxes + scores
        ((1, 7, 16), 1, None),  # hidden states
        ((1, 1), 1, None),  # one score: no argmax
        ((1,), 1, None),
        ((), 1, None),
    ],
)
def test_class_count(shape, batch, want):
    assert class_count(shape, np.float32, batch) == want


def test_class_count_needs_floats():
    assert class_count((1, 10), np.int64) is None


def test_top1_only_for_class_outputs_labels_with_the_first():
    n = 6
    det, hid = _samples(n, 1, 22, 50), _samples(n, 1, 7, 16)
    logits, probs = _samples(n, 1, 5), _samples(n, 3)
    got_logits = [s.copy() for s in logits]
    got_logits[0] = -got_logits[0]  # flips sample 0's argmax
    labels = np.array([int(s.argmax()) for s in logits])
    labels[1] = (labels[1] + 1) % 5  # the reference is wrong on sample 1
    fid = _fid(
        [det, hid, logits, probs],
        [det, hid, got_logits, probs],
        ["boxes", "hidden", "logits", "probs"],
        labels=labels,
    )
    out = fid["outputs"]
    assert fid["class_outputs"] == ["logits", "probs"]
    assert "top1_agreement" not in out["boxes"] and "top1_agreement" not in out["hidden"]
    assert out["logits"]["top1_agreement"] == pytest.approx(5 / 6)
    assert out["logits"]["accuracy_ref"] == pytest.approx(5 / 6)
    assert out["logits"]["accuracy"] == pytest.approx(4 / 6)
    assert out["probs"]["top1_agreement"] == 1.0 and "accuracy" not in out["probs"]
    assert accuracy_output(fid)[0] == "logits"


def test_batched_class_scores_count_rows():
    ref = _samples(3, 4, 10)
    labels = np.concatenate([s.argmax(1) for s in ref])
    fid = _fid([ref], [ref], ["logits"], labels=labels, batch=4)
    assert fid["outputs"]["logits"]["accuracy"] == 1.0
    assert fid["outputs"]["logits"]["top1_agreement"] == 1.0


def test_labels_of_wrong_length_or_without_class_output_are_reported():
    ref = _samples(4, 1, 10)
    fid = _fid([ref], [ref], ["logits"], labels=np.arange(3))
    assert "accuracy" not in fid["outputs"]["logits"]
    assert fid["labels_ignored"] == "3 labels for 4 samples"
    hid = _samples(4, 1, 7, 16)
    fid = _fid([hid], [hid], ["hidden"], labels=np.arange(4))
    assert fid["labels_ignored"].startswith("no output holds class scores")
    assert accuracy_output(fid) is None


def test_degenerate_flags_direct():
    assert degenerate_flags(np.array([np.inf, 1.0])) == ["non_finite"]
    assert degenerate_flags(np.zeros(3), "reference_") == ["reference_zero"]
    assert degenerate_flags(np.array([2.0])) == []  # one value: constant cannot be told
    assert degenerate_flags(np.array([2, 2, 2], np.int64)) == ["constant"]
    assert degenerate_flags(np.zeros(0)) == []


def _art(name: str, fid: dict) -> Artifact:
    return Artifact(target="x86", precision="fp16", files={"model": Path(name)}, fidelity=fid)


def test_quality_gate_fails_on_flags_and_reads_the_class_output():
    n = 4
    det, logits = _samples(n, 1, 22, 50), _samples(n, 1, 5)
    labels = np.array([int(s.argmax()) for s in logits])
    good = _fid([det, logits], [det, logits], ["boxes", "logits"], labels=labels)
    gate = _quality_gate([_art("a.onnx", good)], 0.99, 0.01)
    assert gate["passed"] and gate["accuracy_drop"] == {"a.onnx": 0.0}
    zeros = [np.zeros((1, 5), np.float32)] * n
    bad = _fid([det, zeros], [det, zeros], ["boxes", "logits"], labels=labels)
    gate = _quality_gate([_art("a.onnx", good), _art("b.onnx", bad)], 0.5, None)
    assert not gate["passed"]
    assert "b.onnx: output 'logits' reference_zero" in gate["message"]
    gate = _quality_gate([_art("b.onnx", bad)], None, 0.01)
    assert not gate["passed"] and "b.onnx has no accuracy for --max-drop" in gate["message"]
    assert _quality_gate([_art("b.onnx", bad)], None, None) is None


def test_cli_zero_head_fails_min_cosine(tmp_path):
    """End to end: a classifier whose head is zero-initialised exits 3 under --min-cosine."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        model[3].weight.zero_()
        model[3].bias.zero_()
    path = tmp_path / "zero_head.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(1, 16)), str(path))
    out = tmp_path / "o"
    r = run_cli(
        path,
        "--fp16",
        "-o",
        out,
        "--samples",
        "4",
        "--latency-repeats",
        "2",
        "--min-cosine",
        "0.99",
    )
    assert r.returncode == 3, r.stderr
    assert "reference_zero" in r.stderr and "fails --min-cosine" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not list(out.glob("*.onnx"))  # stopped before any work: the reference is degenerate
    r = run_cli(path, "--fp16", "-o", out, "--samples", "4", "--latency-repeats", "2")
    assert r.returncode == 0, r.stderr  # without a gate: flagged in the report, exit 0
    fid = json.loads((out / "report.json").read_text())["artifacts"][0]["fidelity"]
    assert list(fid["flagged"].values()) == [["zero", "reference_zero"]]
    assert fid["cosine_min"] == 0.0


def test_reference_flags_before_any_work():
    ok, zeros = _samples(3, 1, 10), [np.zeros((1, 10), np.float32)] * 3
    ref = [list(s) for s in zip(ok, zeros)]
    assert reference_flags(ref, ["a", "b"]) == {"b": ["reference_zero"]}


def test_gate_message_never_rounds_a_failure_to_the_bound():
    assert below(0.9999999, 1.0) == "0.9999999"
    assert below(0.98765, 0.99) == "0.98765"
    fid = {"cosine_min": 0.9999999, "outputs": {"y": {"cosine": 0.9999999}}}
    gate = _quality_gate([_art("a.onnx", fid)], 1.0, None)
    assert not gate["passed"] and "cosine 0.9999999 < --min-cosine 1.0" in gate["message"]

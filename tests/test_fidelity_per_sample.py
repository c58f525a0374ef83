"""Fidelity that does not hide failures: per-sample cosines (the worst sample and its index, the
mean, the pooled figure named as such), near-zero references skipped and counted, nearest-neighbour
agreement for embeddings (top-1 only for class scores), ``--min-cosine`` on the worst sample by
default (``--min-cosine-of mean``), and artifacts that keep the source model's output names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from autoglm_compress import compress
from autoglm_compress.errors import EXIT_QUALITY
from autoglm_compress.gates import Budgets, evaluate
from autoglm_compress.metrics import NEAR_ZERO, fidelity, nn_agreement, output_kinds
from autoglm_compress.report import summary_table, validate_report

RNG = np.random.default_rng(31)


def _fid(ref, got, name="y", **kw):
    return fidelity([[r] for r in ref], [[g] for g in got], [name], **kw)


def _one_bad_sample(n=20, bad=7, flip=True):
    """``n`` samples (1, 64); sample ``bad`` is small (5 % of the others' norm) and the artifact
    gets it backwards (``flip``; else all zeros: cosine 0); every other sample is off by 1e-3
    noise."""
    ref = [RNG.standard_normal((1, 64)).astype(np.float32) for _ in range(n)]
    ref[bad] *= np.float32(0.05)
    got = [r + np.float32(1e-3) * RNG.standard_normal(r.shape).astype(np.float32) for r in ref]
    got[bad] = -ref[bad] if flip else np.zeros_like(ref[bad])
    return ref, got


def test_pooled_cosine_hides_a_bad_sample_the_minimum_names_it():
    ref, got = _one_bad_sample()
    fid = _fid(ref, got, "boxes")
    m = fid["outputs"]["boxes"]
    assert m["cosine_pooled"] > 0.99  # what the report used to show
    assert m["cosine_min"] == pytest.approx(-1.0, abs=1e-9) and m["cosine_min_sample"] == 7
    r64, g64 = [np.float64(r).ravel() for r in ref], [np.float64(g).ravel() for g in got]
    good = [r @ g / np.linalg.norm(r) / np.linalg.norm(g)
            for k, (r, g) in enumerate(zip(r64, g64)) if k != 7]
    assert m["cosine_mean"] == pytest.approx((sum(good) - 1.0) / 20, abs=1e-9)
    assert m["samples_near_zero"] == 0
    assert fid["cosine_min"] == m["cosine_min"] and fid["cosine_pooled"] == m["cosine_pooled"]
    assert fid["worst"] == {"output": "boxes", "sample": 7, "cosine": m["cosine_min"]}


def test_near_zero_references_are_skipped_and_counted():
    ref, got = _one_bad_sample(bad=3)
    ref[3] = ref[3] * np.float32(1e-4)  # 5e-6 of a typical norm: below NEAR_ZERO (1e-3)
    got[3] = -ref[3]
    ref[11] = np.zeros_like(ref[11])
    got[11] = RNG.standard_normal(ref[11].shape).astype(np.float32)
    m = _fid(ref, got)["outputs"]["y"]
    assert NEAR_ZERO == 1e-3
    assert m["samples_near_zero"] == 2
    assert m["cosine_min"] > 0.999 and m["cosine_min_sample"] not in (3, 11)


def test_nearest_neighbour_agreement_on_crafted_embeddings():
    """Three pairs of close embeddings: FP32's nearest neighbour of each is its twin. The artifact
    moves sample 0 next to pair (4, 5) and sample 2 a little (its twin stays nearest): 5 of 6."""
    base = np.eye(3, 8, dtype=np.float64) * 10
    ref = [base[k // 2] + 0.5 * (k % 2) * np.eye(1, 8, 3 + k // 2)[0] for k in range(6)]
    got = [r.copy() for r in ref]
    got[0] = base[2] + 0.2
    got[2] = ref[2] + 0.3 * np.eye(1, 8, 7)[0]
    res = nn_agreement([r.reshape(1, 8) for r in ref], [g.reshape(1, 8) for g in got])
    assert res == {"nn_agreement": pytest.approx(5 / 6), "nn_samples": 6}
    assert "nn_skipped" in nn_agreement(ref[:2], got[:2])


def test_embeddings_get_nn_agreement_class_scores_get_top1():
    """A (1, 384) sentence embedding (the graph divides by its norm, the exporter named it "463")
    is no class-score output: no top-1, NN agreement instead; the same shape out of a Gemm is."""
    n = 12
    emb = [RNG.standard_normal((1, 384)).astype(np.float32) for _ in range(n)]
    emb_unit = [e / np.linalg.norm(e) for e in emb]
    names = ["463", "logits", "sentence_embedding", "unit", "last_hidden_state"]
    hidden = [RNG.standard_normal((1, 7, 16)).astype(np.float32) for _ in range(n)]
    ref = [[e, e, e, u, h] for e, u, h in zip(emb, emb_unit, hidden)]
    producers = {"463": "Div", "logits": "Gemm", "sentence_embedding": "Gemm", "unit": "Gemm",
                 "last_hidden_state": "Add"}
    kinds = output_kinds(ref, names, producers=producers)
    assert kinds == {"463": "embedding", "logits": "class_scores", "sentence_embedding": "embedding",
                     "unit": "embedding", "last_hidden_state": "embedding"}
    fid = fidelity(ref, ref, names, producers=producers)
    assert fid["class_outputs"] == ["logits"]
    assert fid["outputs"]["logits"]["top1_agreement"] == 1.0
    for name in ("463", "sentence_embedding", "unit", "last_hidden_state"):
        m = fid["outputs"][name]
        assert "top1_agreement" not in m and m["nn_agreement"] == 1.0 and m["nn_samples"] == n
    assert "nn_agreement" not in fid["outputs"]["logits"]


def _artifact(fid, name="m.x86.int8.onnx"):
    return {"path": name, "target": "x86", "precision": "int8", "size_bytes": 1000,
            "fidelity": fid, "latency": {}, "io": {}, "layers": None, "notes": []}


def test_gate_reads_the_worst_sample_by_default_or_the_mean():
    ref, got = _one_bad_sample()
    a = _artifact(_fid(ref, got, "boxes"))
    (g,) = evaluate([a], Budgets(min_cosine=0.85))  # mean ≈ (19 − 1) / 20 = 0.9
    assert not g["passed"] and g["statistic"] == "min" and g["sample"] == 7
    assert g["output"] == "boxes" and "output 'boxes', sample 7" in g["message"]
    (g,) = evaluate([a], Budgets(min_cosine=0.85, min_cosine_of="mean"))
    assert g["passed"] and g["statistic"] == "mean" and g["value"] == pytest.approx(0.9, abs=1e-5)


def test_table_shows_the_worst_sample_and_warns_when_the_mean_hides_it():
    ref, got = _one_bad_sample(n=200, bad=150, flip=False)  # mean (199 · ~1 + 0) / 200 ≥ 0.99
    fid = _fid(ref, got, "boxes")
    assert fid["cosine_mean"] >= 0.99 and fid["cosine_min"] < 0.9
    rep = {"artifacts": [_artifact(fid)], "passes": [],
           "verification": {"samples": 200, "source": "eval"},
           "model": {"path": "m.onnx", "format": "onnx", "stats": {"params": 1}}}
    table = summary_table(rep)
    row = next(ln for ln in table.splitlines() if ln.startswith("m.x86.int8.onnx"))
    assert "0.00000 @150" in row
    assert "WARNING: m.x86.int8.onnx: output 'boxes' sample 150 has cosine 0.0000" in table
    ref, got = _one_bad_sample(n=20)  # mean < 0.99: the minimum is in the table, no warning
    rep["artifacts"] = [_artifact(_fid(ref, got, "boxes"))]
    assert "the mean hides it" not in summary_table(rep)


# ------------------------------------------------------------------------- end to end, CLI


def _export(module, x, path: Path, output_names=None) -> Path:
    import warnings

    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=output_names)
    return path


@pytest.fixture(scope="module")
def quiet_sample_model(tmp_path_factory):
    """A bias-free conv net, calibrated on N(0, 1) inputs, verified on 16 inputs of which sample 5
    is 100× quieter: its activations fall within a few INT8 steps, the artifact's output there
    is mostly rounding (cosine ≈ 0.7) while the other 15 agree (mean > 0.9)."""
    import torch
    from torch import nn

    d = tmp_path_factory.mktemp("quiet")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
                        nn.Conv2d(8, 4, 3, padding=1, bias=False))
    model = _export(net, torch.randn(1, 3, 8, 8), d / "quiet.onnx", ["y"])
    rng = np.random.default_rng(0)
    np.savez(d / "calib.npz", x=rng.standard_normal((32, 1, 3, 8, 8)).astype(np.float32))
    ev = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    ev[5] *= 0.01
    np.savez(d / "eval.npz", x=ev)
    return model, d / "calib.npz", d / "eval.npz"


def _run(model, calib, ev, out, *more):
    return run_cli(model, "--int8", "--calib", calib, "--eval", ev, "--samples", "16",
                   "--latency-repeats", "3", "--target", "x86", "--min-cosine", "0.9", *more,
                   "-o", out)


def test_cli_min_cosine_fails_on_the_worst_sample_passes_on_the_mean(quiet_sample_model, tmp_path):
    model, calib, ev = quiet_sample_model
    r = _run(model, calib, ev, tmp_path / "min")
    assert r.returncode == EXIT_QUALITY, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "output 'y', sample 5" in errors[0], r.stderr
    rep = json.loads((tmp_path / "min" / "report.json").read_text())
    validate_report(rep)
    fid = rep["artifacts"][0]["fidelity"]
    m = fid["outputs"]["y"]
    assert m["cosine_min_sample"] == 5 and m["cosine_min"] < 0.9 < m["cosine_mean"]
    assert m["cosine_pooled"] > 0.99 and m["kind"] == "other"  # pooled: 0.99 hid it
    (g,) = rep["gates"]
    assert g["statistic"] == "min" and g["sample"] == 5 and not g["passed"]
    assert rep["quality_gate"]["min_cosine_of"] == "min"

    res = compress(model, int8=True, calib=str(calib), eval_data=str(ev), samples=16,
                   latency_repeats=3, targets=("x86",), min_cosine=0.9, min_cosine_of="mean",
                   out_dir=tmp_path / "mean")  # the same run, gated on the mean: passes
    (g,) = res.report["gates"]
    assert g["statistic"] == "mean" and g["passed"] and g["value"] == pytest.approx(m["cosine_mean"])


def test_artifacts_keep_the_source_output_names(tmp_path):
    """A torch model exported to ONNX without output names gets the exporter's numbers ("8"); a
    second output is renamed to "det boxes" (a space: ncnn blob names cannot hold one). The x86
    .onnx, the .tflite and the ncnn .param keep "8"; ncnn's blob "det_boxes" is mapped back to
    "det boxes" in the report, and every output is verified under its source name."""
    import ncnn
    import onnx
    import torch
    from ai_edge_litert.interpreter import Interpreter
    from torch import nn

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return self.fc(y.mean((2, 3))), y * 2

    torch.manual_seed(0)
    path = _export(Two(), torch.randn(1, 3, 8, 8), tmp_path / "two.onnx")
    proto = onnx.load(str(path))
    first, second = [o.name for o in proto.graph.output]
    assert first.isdigit() and second.isdigit()  # the exporter's numbering
    for node in proto.graph.node:
        node.output[:] = ["det boxes" if o == second else o for o in node.output]
    proto.graph.output[1].name = "det boxes"
    onnx.save(proto, str(path))
    np.savez(tmp_path / "calib.npz",
             x=np.random.default_rng(0).standard_normal((16, 1, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "o"
    compress(path, int8=True, calib=str(tmp_path / "calib.npz"), samples=8, latency_repeats=3,
             targets=("x86", "arm"), arm_format="all", out_dir=out)
    names = [first, "det boxes"]
    assert [o.name for o in onnx.load(str(out / "two.x86.int8.onnx")).graph.output] == names
    lite = Interpreter(str(out / "two.arm.int8.tflite"))
    assert [d["name"] for d in lite.get_output_details()] == names
    net = ncnn.Net()
    net.load_param(str(out / "two.arm.int8.ncnn.param"))
    assert first in net.output_names() and "det_boxes" in net.output_names()
    rep = json.loads((out / "report.json").read_text())
    validate_report(rep)
    for a in rep["artifacts"]:
        outs = a["io"]["outputs"]
        assert list(a["fidelity"]["outputs"]) == names
        if a["target"] == "arm" and a["path"].endswith(".param"):
            assert [o["name"] for o in outs] == [first, "det_boxes"]
            assert "source_name" not in outs[0] and outs[1]["source_name"] == "det boxes"
        else:
            assert [o["name"] for o in outs] == names and not any("source_name" in o for o in outs)

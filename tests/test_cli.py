"""The CLI end to end, as a user runs it (subprocess): artifacts, report, inspect, bad inputs."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli


def _report(out):
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_fp16_x86_end_to_end(saved, tmp_path, name):
    out = tmp_path / "out"
    r = run_cli(
        saved(name, "torchscript"),
        "--fp16",
        "--target",
        "x86",
        "-o",
        out,
        "--samples",
        "8",
        "--latency-repeats",
        "5",
        "--min-cosine",
        "0.999",
    )
    assert r.returncode == 0, r.stderr
    stem = saved(name, "torchscript").stem
    art = out / f"{stem}.x86.fp16.onnx"
    assert art.is_file()
    rep = _report(out)
    a = rep["artifacts"][0]
    assert a["precision"] == "fp16" and a["size_bytes"] == art.stat().st_size
    assert a["fidelity"]["cosine_pooled"] >= 0.999
    assert a["latency"]["fp32"]["median_ms"] > 0 and a["latency"]["fp16"]["median_ms"] > 0
    assert [p["name"] for p in rep["passes"]] == ["cleanup", "fold_bn", "fp16[x86]"]
    assert rep["passes"][2]["stats"]["initializers_converted"] > 0
    assert "cosine" in r.stdout and "x86.fp16.onnx" in r.stdout
    if name == "transformer":
        ins = rep["model"]["stats"]["inputs"]
        assert [i["dtype"] for i in ins] == ["int64", "int64"]


def test_fp32_default_with_eval_labels_and_dump(saved, tmp_path):
    import models
    import numpy as np

    zm = models.ZOO["cnn"]()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x, labels=np.arange(6) % 10)
    out = tmp_path / "o"
    r = run_cli(
        saved("cnn", "onnx"),
        "-o",
        out,
        "--eval",
        tmp_path / "eval.npz",
        "--dump-ir-after",
        "fold_bn",
        "--latency-repeats",
        "3",
    )
    assert r.returncode == 0, r.stderr
    rep = _report(out)
    fid = rep["artifacts"][0]["fidelity"]
    assert fid["samples"] == 6 and rep["verification"]["source"] == "eval"
    first = next(iter(fid["outputs"].values()))
    assert first["cosine_pooled"] > 0.99999 and first["top1_agreement"] == 1.0 and "accuracy" in first
    assert rep["passes"][1]["stats"]["bn_folded"] >= 5
    assert (out / "ir_after_fold_bn.onnx").is_file() and (out / "ir_after_fold_bn.txt").is_file()
    assert zm.name == "cnn"


@pytest.mark.parametrize("fmt", ["torchscript", "export", "onnx"])
def test_inspect(saved, fmt):
    r = run_cli("inspect", saved("transformer", fmt))
    assert r.returncode == 0, r.stderr
    assert "input_ids" in r.stdout and "int64" in r.stdout
    assert "MatMul" in r.stdout and "parameters" in r.stdout and "MACs" in r.stdout


def test_inspect_graph(saved):
    r = run_cli("inspect", saved("mlp", "onnx"), "--graph")
    assert r.returncode == 0 and "Gemm" in r.stdout or "MatMul" in r.stdout


def _bad(tmp_path, *args):
    out = tmp_path / "bad_out"
    r = run_cli(*args, "-o", out)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    leftovers = [p for p in out.rglob("*")] if out.exists() else []
    assert leftovers == [], leftovers
    return lines[0]


@pytest.mark.slow
def test_bad_inputs(saved, tmp_path):
    assert "no such file" in _bad(tmp_path, tmp_path / "missing.pt")
    data = saved("cnn", "torchscript").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    assert "cut.pt" in _bad(tmp_path, tmp_path / "cut.pt")
    (tmp_path / "rand.bin").write_bytes(bytes(range(256)) * 64)
    assert "unknown format" in _bad(tmp_path, tmp_path / "rand.bin")
    (tmp_path / "notes.txt").write_text("hello, this is not a model\n")
    assert "unknown format" in _bad(tmp_path, tmp_path / "notes.txt")
    assert "--trust-pickle" in _bad(tmp_path, saved("mlp", "pickle"))
    assert "rank" in _bad(tmp_path, saved("cnn", "onnx"), "--input-shape", "x=1x3x32")
    assert "--input-shape" in _bad(tmp_path, saved("cnn", "onnx"), "--input-shape", "x=abc")
    assert "unknown target" in _bad(tmp_path, saved("mlp", "onnx"), "--target", "mips")
    assert "unknown pass" in _bad(tmp_path, saved("mlp", "onnx"), "--passes", "cleanup,nope")


def test_unwritable_output_folder(saved, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli(saved("mlp", "onnx"), "-o", blocker / "out")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not writable" in r.stderr


def test_quality_gate_exit_3(saved, tmp_path):
    out = tmp_path / "q"
    r = run_cli(
        saved("mlp", "onnx"), "--fp16", "-o", out, "--min-cosine", "1.0", "--latency-repeats", "2"
    )
    assert r.returncode == 3 and "quality gate" in r.stderr
    assert _report(out)["quality_gate"]["passed"] is False


def test_trust_pickle_path(saved, tmp_path):
    out = tmp_path / "p"
    r = run_cli(
        saved("mlp", "pickle"),
        "--trust-pickle",
        "--input-shape",
        "x=1x64",
        "-o",
        out,
        "--latency-repeats",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert _report(out)["model"]["format"] == "pickle"


def test_passes_listing():
    r = run_cli("passes")
    assert r.returncode == 0
    for name in ("cleanup", "fold_bn", "fp16"):
        assert f"{name}:" in r.stdout

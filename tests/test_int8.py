"""INT8 end to end on the digits CNN (trained to real accuracy): CLI, both targets, fallback, bad data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CALIB, DEMO, EVAL, calibrated_digits, run_cli
from qhelpers import calibrate_with as calibrate
from qhelpers import quantize_for as quantize_for_target

from autoglm_compress import load
from autoglm_compress.pipeline import Pipeline, build_passes
from autoglm_compress.targets.x86 import X86Target


def _bad(tmp_path, *args, match):
    out = tmp_path / "bad"
    r = run_cli(DEMO, "--int8", *args, "-o", out)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and match in lines[0], lines
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_int8_x86_and_cuda_keep_accuracy(tmp_path, method):
    out = tmp_path / "o"
    r = run_cli(
        DEMO,
        "--int8",
        "--target",
        "x86",
        "--target",
        "cuda",
        "--calib",
        CALIB,
        "--calib-method",
        method,
        "--eval",
        EVAL,
        "--samples",
        "300",
        "-o",
        out,
        "--latency-repeats",
        "5",
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["calibration"]["samples"] == 128 and rep["calibration"]["method"] == method
    arts = {a["target"]: a for a in rep["artifacts"]}
    for target in ("x86", "cuda"):
        first = next(iter(arts[target]["fidelity"]["outputs"].values()))
        assert first["accuracy"] >= first["accuracy_ref"] - 0.01, (target, first)
        assert first["top1_agreement"] >= 0.98 and arts[target]["fidelity"]["cosine_pooled"] >= 0.998
    fusion = arts["x86"]["extra"]["ort_fusion"]
    assert fusion["float_compute_nodes"] == 0 and fusion["int8_compute_nodes"] >= 4
    assert (
        "trtexec" in arts["cuda"]["extra"]
        and "--stronglyTyped" in arts["cuda"]["extra"]["trtexec"]["tensorrt>=10"]
    )
    layers = next(p for p in rep["passes"] if p["name"] == "quantize[x86]")["stats"]["layers"]
    assert len(layers) == 4 and all(layer["sqnr_db"] > 20 for layer in layers)
    assert all("input_scale" in layer for layer in layers)
    fp32_weights = sum(p * 4 for p in [rep["model"]["stats"]["params"]])
    assert arts["cuda"]["size_bytes"] < fp32_weights * 0.5


def test_fallback_until_target_met():
    model = load(DEMO)
    Pipeline(build_passes(["cleanup", "fold_bn"]), progress=False).run(model)
    stats, _ = calibrate(model, str(CALIB), "minmax", 64, False, False)
    q, rec = quantize_for_target(model, X86Target(), stats, min_cosine=0.99999)
    s = rec.stats
    assert s["fell_back"], "such a strict target needs some layers in float"
    assert s["calibration_cosine"] >= 0.99999
    kept = {n.name for n in q.graph if n.name in s["fell_back"]}
    for node in q.graph:
        if node.name in kept:
            assert node.inputs[1].const_value is not None, "a fallen-back layer keeps float weights"
    assert {e["reason"] for e in s["layers_fp32"]} == {"fallback"}
    fb = s["fallback"]
    cos = [r["isolated_cosine"] for r in fb["ranking"]]
    assert cos == sorted(cos) and fb["reached"] >= 0.99999  # worst-first ranking, reported
    assert all("isolated_cosine" in layer for layer in s["layers"])


def test_fallback_keeps_no_layer_in_float_it_does_not_need():
    """After the worst-first fallback meets the target, each fallen layer is re-tried in int8:
    putting any one of the remaining float layers back in int8 misses the target."""
    from qhelpers import _ctx

    from autoglm_compress import lowering
    from autoglm_compress.config import Int8Config
    from autoglm_compress.quantization.sensitivity import holdout_cosine

    model = load(DEMO)
    Pipeline(build_passes(["cleanup", "fold_bn"]), progress=False).run(model)
    stats, _ = calibrate(model, str(CALIB), "minmax", 64, False, False)
    target = 0.99999
    _, rec = quantize_for_target(model, X86Target(), stats, min_cosine=target)
    fallen = rec.stats["fell_back"]
    used = bool(rec.config["reconstruct"])  # as the flow chose
    qrun = lowering.quantizer(X86Target(), _ctx(stats, X86Target()), Int8Config(reconstruct=used))
    cosine = holdout_cosine(model, stats.holdout, of="min")  # what the fallback aims at
    assert cosine(qrun(model, fallen)[0]) >= target
    for name in fallen:
        assert cosine(qrun(model, [f for f in fallen if f != name])[0]) < target, name


def test_calib_random_is_flagged(tmp_path):
    out = tmp_path / "r"
    r = run_cli(
        DEMO,
        "--int8",
        "--calib-random",
        "--calib-samples",
        "16",
        "-o",
        out,
        "--latency-repeats",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert "random" in json.loads((out / "report.json").read_text())["calibration"]["warning"]


def test_bad_calibration_data(tmp_path):
    _bad(tmp_path, match="needs calibration data")
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 1, 8, 8), np.float32))
    _bad(tmp_path, "--calib", tmp_path / "empty.npz", match="empty")
    x = np.load(CALIB)["x"][:8].copy()
    x[3, 0, 2, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    _bad(tmp_path, "--calib", tmp_path / "nan.npz", match="NaN")
    np.savez(tmp_path / "shape.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    _bad(tmp_path, "--calib", tmp_path / "shape.npz", match="'x'")
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "b.png").write_text("a truncated download")
    _bad(tmp_path, "--calib", folder / "notes.txt", match="unsupported file type")
    # a folder with a stray file and a broken image: both skipped and counted, not fatal
    r = run_cli(DEMO, "--int8", "--calib", folder, "-o", tmp_path / "imgs_out")
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "imgs_out" / "report.json").read_text())["calibration"]
    assert info["samples"] == 1 and info["skipped_files"]["count"] == 2
    _bad(tmp_path, "--fp16", "--calib", CALIB, match="exclusive")


def test_zero_range_tensor_gives_finite_scales(tmp_path):
    out = tmp_path / "z"
    np.savez(tmp_path / "zeros.npz", x=np.zeros((8, 1, 8, 8), np.float32))
    r = run_cli(
        DEMO, "--int8", "--calib", tmp_path / "zeros.npz", "-o", out, "--latency-repeats", "2"
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    for layer in rep["passes"][-1]["stats"]["layers"]:
        assert np.isfinite(layer["input_scale"]) and layer["input_scale"] > 0
    assert Path(rep["artifacts"][0]["path"]).is_file()


def test_bias_correction_reduces_error():
    from qhelpers import quantize_with as _quantize

    from autoglm_compress.ir_utils import ort_run, ort_session
    from autoglm_compress.metrics import fidelity

    model, stats, feeds, _, ref = calibrated_digits(128, 200)
    cos = {}
    for bc in (False, True):
        q, s = _quantize(model, X86Target(), stats, (), False, bc)
        sess = ort_session(q)
        cos[bc] = fidelity(ref, [ort_run(sess, f) for f in feeds], ["output"])["cosine_pooled"]
        if bc:
            assert s["biases_corrected"] == 4
    assert 1 - cos[True] < 0.7 * (1 - cos[False]), cos


def test_max_drop_gate(tmp_path):
    args = [
        "--int8",
        "--calib",
        CALIB,
        "--eval",
        EVAL,
        "--samples",
        "500",
        "--latency-repeats",
        "2",
    ]
    ok = run_cli(DEMO, *args, "--max-drop", "0.01", "-o", tmp_path / "a")
    assert ok.returncode == 0, ok.stderr
    # Calibration data 50x too dim: activation ranges far too narrow, outputs clip, accuracy drops.
    # (Deterministic on any CPU, unlike the AVX2 int16 saturation of full-range weights.)
    dim = tmp_path / "dim.npz"
    np.savez(dim, x=np.load(CALIB)["x"] * 0.02)
    bad = run_cli(
        DEMO,
        *[a if a != CALIB else dim for a in args],
        "--max-drop",
        "0.001",
        "-o",
        tmp_path / "b",
    )
    drop = json.loads((tmp_path / "b" / "report.json").read_text())["quality_gate"]["accuracy_drop"]
    assert max(drop.values()) > 0.05, drop
    assert bad.returncode == 3 and "accuracy drop" in bad.stderr
    assert (
        run_cli(
            DEMO, "--int8", "--calib", CALIB, "--max-drop", "0.01", "-o", tmp_path / "c"
        ).returncode
        == 2
    )


def test_cuda_fp16_artifact(tmp_path):
    r = run_cli(
        DEMO, "--fp16", "--target", "cuda", "--eval", EVAL, "-o", tmp_path, "--latency-repeats", "2"
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "report.json").read_text())
    art = rep["artifacts"][0]
    assert (
        art["path"].endswith("digits_cnn.cuda.fp16.onnx") and art["fidelity"]["cosine_pooled"] > 0.9999
    )
    assert "--fp16" in art["extra"]["trtexec"]["tensorrt8"]


def test_latency_guard_on_transformer(saved, tmp_path):
    out = tmp_path / "lg"
    r = run_cli(
        saved("transformer", "onnx"),
        "--int8",
        "--calib-random",
        "--calib-samples",
        "16",
        "--latency-guard",
        "-o",
        out,
        "--latency-repeats",
        "5",
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    lg = next(p for p in rep["passes"] if p["name"] == "quantize[x86]")["stats"]["latency_guard"]
    before = lg["int8_ms_before"] / lg["fp32_ms"]
    assert lg["int8_vs_fp32_after"] <= round(before, 3) + 1e-9
    if lg["kept_float_for_speed"]:  # what was left in float is really float in the artifact
        assert any("left in float for speed" in n for n in rep["artifacts"][0]["notes"])
    assert rep["artifacts"][0]["fidelity"]["cosine_pooled"] > 0.99

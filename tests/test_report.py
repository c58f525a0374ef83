"""report.json v2: validated against the schema in the repo; identity of the source, the run, each
artifact's IO and int8 layer counts; a reused -o folder keeps no stale artifact; the table says
loudly when an "int8" file has no int8 compute."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest

from autoglm_compress.cli import main
from autoglm_compress.report import REPORT_SCHEMA_VERSION, schema, validate_report

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "digits_cnn.pt"
CALIB = ROOT / "examples" / "digits_calib.npz"
FAST = ["--calib-samples", "32", "--samples", "16", "--latency-repeats", "3"]


def _run(capsys, *args):
    rc = main([str(DEMO), *map(str, args), *FAST])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_int8_report_is_valid_and_complete(tmp_path, capsys):
    rc, out, _ = _run(capsys, "--int8", "--calib", CALIB, "--target", "x86", "-o", tmp_path)
    assert rc == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    validate_report(rep)
    assert rep["schema_version"] == REPORT_SCHEMA_VERSION
    assert rep["model"]["sha256"] == hashlib.sha256(DEMO.read_bytes()).hexdigest()
    assert rep["run"]["command"][0] == str(DEMO) and rep["run"]["runtimes"]["onnxruntime"]
    assert rep["model"]["stats_before"]["params"] >= rep["model"]["stats_after"]["params"] > 0
    a = rep["artifacts"][0]
    assert a["io"]["inputs"][0] == {
        "name": "x", "shape": [1, 1, 8, 8], "dtype": "float32",
        "quant": {"scale": pytest.approx(a["io"]["inputs"][0]["quant"]["scale"]),
                  "zero_point": a["io"]["inputs"][0]["quant"]["zero_point"], "dtype": "uint8"},
    }
    assert a["io"]["outputs"][0]["dtype"] == "float32"
    assert a["layers"]["int8"] >= 4 and a["layers"]["float"] == 0
    assert a["files"]["model"]["sha256"] == a["sha256"]
    assert "× faster" in out or "× (slower)" in out


def test_schema_rejects_a_broken_report(tmp_path, capsys):
    assert _run(capsys, "--fp16", "-o", tmp_path)[0] == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    validate_report(rep)
    rep["artifacts"][0]["io"]["inputs"][0]["dtype"] = "FLOAT"  # one dtype spelling only
    with pytest.raises(jsonschema.ValidationError):
        validate_report(rep)
    assert schema()["properties"]["schema_version"]["const"] == REPORT_SCHEMA_VERSION


def test_reused_out_folder_keeps_no_stale_artifact(tmp_path, capsys):
    assert _run(capsys, "--fp16", "--target", "x86", "--target", "cuda", "-o", tmp_path)[0] == 0
    assert (tmp_path / "digits_cnn.cuda.fp16.onnx").is_file()
    (tmp_path / "notes.txt").write_text("mine")  # not ours: never touched
    assert _run(capsys, "--fp16", "--target", "x86", "-o", tmp_path)[0] == 0
    assert not (tmp_path / "digits_cnn.cuda.fp16.onnx").exists()
    assert (tmp_path / "digits_cnn.x86.fp16.onnx").is_file() and (tmp_path / "notes.txt").is_file()
    rep = json.loads((tmp_path / "report.json").read_text())
    assert [a["target"] for a in rep["artifacts"]] == ["x86"]


def test_fallback_of_every_layer_is_loud(tmp_path, capsys, caplog):
    rc, out, _ = _run(capsys, "--int8", "--calib", CALIB, "--min-cosine", "1.0",
                      "--keep-fp32", "NoSuchLayer*", "-o", tmp_path)
    rep = json.loads((tmp_path / "report.json").read_text())
    q = next(p for p in rep["passes"] if p["name"] == "quantize[x86]")
    assert q["stats"]["keep_fp32_unmatched"] == ["NoSuchLayer*"]
    assert any("matches no node" in r.message for r in caplog.records)
    # cosine 1.0 exactly is only reached with every layer back in FP32
    assert rc == 0 and q["stats"]["all_fell_back"] is True
    assert rep["artifacts"][0]["layers"]["int8"] == 0 and len(q["stats"]["fell_back"]) >= 4
    assert "WARNING: digits_cnn.x86.int8.onnx is labelled int8 but no layer runs in int8" in out


def test_int8_layers_are_counted_from_each_artifact(tmp_path):
    """``layers`` says what each file runs: TFLite from the written operators, ncnn from its int8
    conv/FC layers, x86 from onnxruntime's optimized graph; the QDQ IR's count stays under ``ir``."""
    from autoglm_compress import compress

    res = compress(DEMO, int8=True, calib=CALIB, targets="x86,arm", arm_format="all",
                   samples=4, latency_repeats=1, out_dir=tmp_path)
    by = {(a["target"], a["extra"].get("format")): a for a in res.report["artifacts"]}
    tfl, ncnn, x86 = by[("arm", "tflite")], by[("arm", "ncnn")], by[("x86", None)]
    assert tfl["layers"]["int8"] == tfl["extra"]["tflite_ops"]["int8"]
    assert tfl["layers"]["counted_from"].startswith("the written .tflite")
    assert ncnn["layers"]["int8"] == ncnn["extra"]["ncnn_int8"]["int8"] >= 3
    assert x86["layers"]["int8"] == x86["extra"]["ort_fusion"]["int8_compute_nodes"] >= 3
    assert all("ir" in a["layers"] for a in (tfl, ncnn, x86))
    validate_report(res.report)


def test_verification_on_calibration_data_or_few_samples_is_warned(tmp_path):
    """INT8 verified on the samples its scales were fitted to, or on < 16 samples: the report and
    the table say so; held-out --eval data with enough samples: no warning."""
    from autoglm_compress import compress
    from autoglm_compress.report import summary_table

    res = compress(DEMO, int8=True, calib=CALIB, targets="x86", samples=8, latency_repeats=1,
                   out_dir=tmp_path / "a")
    w = res.report["verification"]["warning"]
    assert "calibration samples" in w and "only 8 verification samples" in w
    assert f"WARNING: {w}" in summary_table(res.report)
    res = compress(DEMO, int8=True, calib=CALIB, eval_data=ROOT / "examples" / "digits_eval.npz",
                   targets="x86", samples=32, latency_repeats=1, out_dir=tmp_path / "b")
    assert res.report["verification"]["warning"] is None


def test_image_preprocessing_is_recorded_and_defaults_on_rgb_warned(saved, tmp_path):
    """Calibrating from photos: the report records the preprocessing used (a deployment must
    repeat it), and a 3-channel model fed the defaults (pixels / 255, no mean/std) is warned."""
    import numpy as np
    from PIL import Image

    from autoglm_compress import compress

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(folder / f"{i}.png")
    src = saved("cnn", "onnx")
    res = compress(src, int8=True, calib=folder, targets="x86", samples=4, latency_repeats=1,
                   out_dir=tmp_path / "a")
    cal = res.report["calibration"]
    assert cal["preprocess"]["scale"] == 1 / 255 and "ImageNet" in cal["preprocess_warning"]
    res = compress(src, int8=True, calib=folder, targets="x86", samples=4, latency_repeats=1,
                   image_mean="0.485,0.456,0.406", image_std="0.229,0.224,0.225",
                   out_dir=tmp_path / "b")
    cal = res.report["calibration"]
    assert cal["preprocess"]["mean"] == [0.485, 0.456, 0.406] and "preprocess_warning" not in cal
    validate_report(res.report)

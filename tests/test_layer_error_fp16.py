"""Per-layer error (SQNR vs FP32) of FP16 artifacts, each read tensor by tensor in its own runtime:
the x86 .onnx in onnxruntime, the arm .tflite in LiteRT and the ncnn files in ncnn (fp16 storage).
The digits CNN through the CLI for every target: each shared tensor measured, all far above the
bound below; a small built model with one layer that FP16 ruins (its weights 2048 + r and −2048 on
a duplicated input: y = x·r in FP32, where FP16's spacing of 1–2 at 2048 wipes out r) is the layer
report.json's ``worst`` and report.html name, not the layers after it that only carry its error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from autoglm_compress.cli import main

pytest.importorskip("ai_edge_litert")
pytest.importorskip("ncnn")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "digits_cnn.pt"
EVAL = ROOT / "examples" / "digits_eval.npz"
RUNTIMES = {"onnx": "onnxruntime", "tflite": "LiteRT", "ncnn": "ncnn"}
FP16_BOUND_DB = 45.0  # FP16 keeps 11 significant bits (~66 dB for one rounding); digits: ≥ 58 dB
ARGS = ["--fp16", "--target", "x86", "--target", "arm", "--format", "all", "--samples", "8",
        "--latency-repeats", "1", "--verify-arm", "off"]


def _run(model: Path, eval_data: Path, out: Path) -> tuple[dict, str]:
    assert main([str(model), *ARGS, "--eval", str(eval_data), "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [a["precision"] for a in report["artifacts"]] == ["fp16"] * 3
    return report, (out / "report.html").read_text()


def _fmt(a: dict) -> str:
    return (a.get("extra") or {}).get("format") or Path(a["path"]).suffix.lstrip(".")


def test_digits_fp16_per_layer_sqnr_on_every_target(tmp_path):
    report, page = _run(DEMO, EVAL, tmp_path)
    assert sorted(_fmt(a) for a in report["artifacts"]) == ["ncnn", "onnx", "tflite"]
    for a in report["artifacts"]:
        le = a["extra"]["layer_error"]
        assert le["runtime"].startswith(RUNTIMES[_fmt(a)]) and le["samples"] == 8, le
        got = {t["node"]: t["sqnr_db"] for t in le["tensors"]}
        # each conv (+relu), the pool and the classifier's output; FP16 error far below 1 %
        assert len(got) >= 6 and "/fc/Gemm" in got, got
        assert all(isinstance(v, float) and math.isfinite(v) and v > FP16_BOUND_DB
                   for v in got.values()), got
        worst = le["worst"]
        assert 1 <= len(worst) <= 3 and all(w["node"] in got for w in worst)
        for w in worst:  # a named layer adds error to what it got
            assert w["input_sqnr_db"] is None or w["sqnr_db"] < w["input_sqnr_db"], w
        assert f"{Path(a['path']).name} <span class=muted>({a['target']}, FP16)" in page
        assert f"in the artifact&#x27;s runtime: {RUNTIMES[_fmt(a)]}, per tensor" in page
    assert page.count("Worst layers (where the SQNR falls most") == 3
    assert "no per-layer figure" not in page


def _bad_model(tmp: Path) -> tuple[Path, Path]:
    """x → MatMul → Relu → Concat(r, r) → MatMul "cancels" (weights [2048 + r; −2048]) → Relu →
    MatMul: in FP32 "cancels" computes r1·r; FP16 cannot hold 2048 + r to better than ±1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 16)) * 0.25).astype(np.float32)
    r = rng.uniform(-1, 1, (16, 16)).astype(np.float32)
    wbad = np.concatenate([2048 + r, np.full((16, 16), -2048, np.float32)])
    w3 = (rng.standard_normal((16, 4)) * 0.25).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="first"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("Concat", ["r1", "r1"], ["c"], name="twice", axis=1),
             helper.make_node("MatMul", ["c", "wbad"], ["b"], name="cancels"),
             helper.make_node("Relu", ["b"], ["r2"], name="relu2"),
             helper.make_node("MatMul", ["r2", "w3"], ["y"], name="last")]
    g = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (wbad, "wbad"), (w3, "w3"))])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, tmp / "cancels.onnx")
    np.savez(tmp / "eval.npz", x=rng.standard_normal((8, 16)).astype(np.float32))
    return tmp / "cancels.onnx", tmp / "eval.npz"


def test_layer_fp16_ruins_is_named_the_worst_on_every_target(tmp_path):
    report, page = _run(*_bad_model(tmp_path), tmp_path / "out")
    for a in report["artifacts"]:
        le = a["extra"]["layer_error"]
        sqnr = {t["node"]: t["sqnr_db"] for t in le["tensors"]}
        assert sqnr["relu1"] > FP16_BOUND_DB and sqnr["last"] < 10, sqnr  # fine before, not after
        first = le["worst"][0]
        # the runtime's own tensor: x86 keeps "cancels"' output, LiteRT / ncnn fuse its relu
        assert first["nodes"] == (["cancels"] if _fmt(a) == "onnx" else ["cancels", "relu2"])
        assert first["sqnr_db"] < 10 and first["input_sqnr_db"] > FP16_BOUND_DB, first
        # "last" is as bad (it carries the error) but adds none: not named
        assert all(w["node"] != "last" for w in le["worst"]), le["worst"]
    assert page.count("Worst layers (where the SQNR falls most, worst first): cancels") == 3

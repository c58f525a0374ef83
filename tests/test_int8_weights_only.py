"""--int8 --weights-only (x86): int8 weights, float activations, no calibration. MatMul/Gemm become
onnxruntime's dynamic int8 (fused to DynamicQuantizeMatMul), convs store int8 weights."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import DEMO, EVAL, run_cli
from onnx import numpy_helper

from autoglm_compress.quantization.saturation import host_cpu
from autoglm_compress.targets.x86.fusion import fusion_report


def _run(model, out, *extra):
    r = run_cli(model, "--int8", "--weights-only", "--target", "x86", "-o", out, *extra)
    assert r.returncode == 0, r.stderr
    return json.loads((out / "report.json").read_text())


def _int8_max(path) -> dict[str, int]:
    m = onnx.load(path)
    return {i.name: int(np.abs(numpy_helper.to_array(i)).max()) for i in m.graph.initializer
            if i.data_type == onnx.TensorProto.INT8 and i.name.endswith("_quantized")}


def test_digits_without_calibration(tmp_path):
    rep = _run(DEMO, tmp_path / "o", "--eval", EVAL, "--samples", "300", "--cpu", "vnni")
    assert rep["calibration"] is None
    a = rep["artifacts"][0]
    out = next(iter(a["fidelity"]["outputs"].values()))
    assert out["accuracy"] >= out["accuracy_ref"] - 0.005
    # 8-bit weights made for VNNI: verified in VNNI kernels on a VNNI host; on an AVX2 host in
    # its saturating VPMADDUBSW kernels (measured 0.99857 there, 0.9993 on VNNI), and said so
    if host_cpu() == "avx2":
        assert a["fidelity"]["cosine_pooled"] > 0.998
        assert any(n.startswith("made for VNNI CPUs (--cpu vnni) but verified in this host's AVX2")
                   for n in a["notes"]), a["notes"]
    else:
        assert a["fidelity"]["cosine_pooled"] > 0.999 and not any("made for" in n for n in a["notes"])
    rec = next(p for p in rep["passes"] if p["name"] == "quantize_dynamic[x86]")["stats"]
    assert rec["matmuls_dynamic"] == 1 and rec["convs_weight_only"] == 3 and not rec["left_float"]
    assert a["layers"]["int8"] == 1 and len(a["layers"]["weight_only_nodes"]) == 3
    fusion = fusion_report(a["files"]["model"]["path"])
    assert fusion["optimized_ops"].get("DynamicQuantizeMatMul") == 1
    assert set(_int8_max(a["files"]["model"]["path"]).values()) == {127}


def test_transformer_matmuls_run_dynamic_int8(saved, tmp_path):
    import onnx_ir as ir

    src = saved("transformer", "onnx")
    n_const = sum(1 for n in ir.load(src).graph if n.op_type in ("MatMul", "Gemm")
                  and len(n.inputs) > 1 and n.inputs[1] is not None and n.inputs[1].const_value is not None)
    rep = _run(src, tmp_path / "t", "--samples", "16", "--cpu", "avx2")
    rec = next(p for p in rep["passes"] if p["name"] == "quantize_dynamic[x86]")["stats"]
    assert rec["matmuls_dynamic"] >= 4 and rec["matmuls_dynamic"] <= n_const
    a = rep["artifacts"][0]
    assert a["fidelity"]["cosine_pooled"] > 0.99
    fusion = fusion_report(a["files"]["model"]["path"])
    assert fusion["optimized_ops"].get("DynamicQuantizeMatMul", 0) == rec["matmuls_dynamic"]
    # AVX2 without VNNI: u8 inputs may span [0, 255], so weights that could saturate are 7-bit
    widths = set(_int8_max(a["files"]["model"]["path"]).values())
    assert rec["weights_7bit"] > 0 and 63 in widths and widths <= {63, 127}


@pytest.mark.parametrize("args,msg", [
    (["--weights-only", "--target", "x86"], "add --int8"),
    (["--int8", "--weights-only", "--target", "cuda"], "x86 and arm"),
    (["--int8", "--weights-only", "--target", "x86", "--qat-steps", "5"], "--qat-steps"),
])
def test_usage_errors(tmp_path, args, msg):
    r = run_cli(DEMO, *args, "-o", tmp_path / "e")
    assert r.returncode == 2 and msg in r.stderr and not (tmp_path / "e").exists()


def _tflite_ops_and_weights(path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    ops = [d["op_name"] for d in it._get_ops_details()]
    int8 = [t for t in it.get_tensor_details() if t["dtype"] == np.int8]
    return ops, int8


def test_arm_tflite_dynamic_range(saved, tmp_path):
    """--target arm: TFLite dynamic-range ops (int8 weight tensors with per-channel scales, float
    activations, no QUANTIZE/DEQUANTIZE), run in LiteRT."""
    pytest.importorskip("ai_edge_litert")
    rep = _run(DEMO, tmp_path / "a", "--eval", EVAL, "--samples", "200", "--target", "arm")
    arm = next(a for a in rep["artifacts"] if a["target"] == "arm")
    assert arm["extra"]["weights_only"].startswith("TFLite dynamic-range")
    assert arm["fidelity"]["cosine_pooled"] > 0.999
    ops, int8 = _tflite_ops_and_weights(arm["files"]["model"]["path"])
    assert "QUANTIZE" not in ops and "DEQUANTIZE" not in ops
    assert ops.count("CONV_2D") == 3 and ops.count("FULLY_CONNECTED") == 1
    assert len(int8) == 4 and all(len(t["quantization_parameters"]["scales"]) > 1 for t in int8)
    assert len(arm["layers"]["weight_only_nodes"]) == 4
    src = saved("transformer", "onnx")
    rep = _run(src, tmp_path / "t", "--samples", "16", "--target", "arm")
    t = next(a for a in rep["artifacts"] if a["target"] == "arm")
    assert t["fidelity"]["cosine_pooled"] > 0.99
    ops, int8 = _tflite_ops_and_weights(t["files"]["model"]["path"])
    assert ops.count("FULLY_CONNECTED") >= 4 and len(int8) >= 4


def test_ncnn_weights_only_is_refused(tmp_path):
    r = run_cli(DEMO, "--int8", "--weights-only", "--target", "arm", "--format", "ncnn", "-o",
                tmp_path / "n")
    assert r.returncode == 2 and "ncnn" in r.stderr


def test_calibration_data_adds_bias_correction(tmp_path):
    """With --calib the weight-only path also removes the weights' mean output shift."""
    from conftest import CALIB

    plain = _run(DEMO, tmp_path / "p", "--eval", EVAL, "--samples", "300", "--cpu", "vnni")
    corr = _run(DEMO, tmp_path / "c", "--eval", EVAL, "--samples", "300", "--cpu", "vnni",
                "--calib", CALIB)
    rec = next(p for p in corr["passes"] if p["name"] == "quantize_dynamic[x86]")["stats"]
    assert rec["biases_corrected"] == 4 and corr["calibration"]["samples"] > 0
    assert "biases_corrected" not in next(
        p for p in plain["passes"] if p["name"] == "quantize_dynamic[x86]")["stats"]
    err = [next(iter(r["artifacts"][0]["fidelity"]["outputs"].values()))["mean_abs_err"]
           for r in (plain, corr)]
    assert err[1] < err[0]

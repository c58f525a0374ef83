"""arm target (TFLite part): our own flatbuffer emitter, run in LiteRT with XNNPACK and with the
reference kernels; FP32 exact to float rounding, FP16 = float16 weights + DEQUANTIZE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from autoglm_compress import compress  # noqa: E402
from autoglm_compress.cli import main  # noqa: E402
from autoglm_compress.report import validate_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "digits_cnn.pt"
EVAL = ROOT / "examples" / "digits_eval.npz"


def _details(path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it.get_tensor_details()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_digits_in_litert(tmp_path, precision):
    res = compress(DEMO, targets="arm,x86", eval_data=EVAL, samples=200, out_dir=tmp_path,
                   fp16=precision == "fp16", latency_repeats=5)
    arm, x86 = res.artifact("arm"), res.artifact("x86")
    assert arm.path.suffix == ".tflite" and arm.path.read_bytes()[4:8] == b"TFL3"
    fid = arm.fidelity
    assert fid["cosine_pooled"] >= (0.99999 if precision == "fp32" else 0.9995)
    out = next(iter(fid["outputs"].values()))
    assert out["top1_agreement"] == 1.0 and out["accuracy"] == out["accuracy_ref"]
    assert arm.extra["reference_kernels"]["cosine_pooled"] >= fid["cosine_pooled"] - 1e-6
    assert arm.latency["measured_on"].startswith("LiteRT XNNPACK")
    types = {d["dtype"] for d in _details(arm.path)}
    if precision == "fp16":
        from autoglm_compress import load
        from autoglm_compress.pipeline import Pipeline, build_passes
        from autoglm_compress.targets.tflite.lower import lower_to_tflite

        m = load(DEMO)
        Pipeline(build_passes(["cleanup", "fold_bn"]), progress=False).run(m)
        fp32_size = len(lower_to_tflite(m, "fp32"))
        assert np.float16 in types and arm.size_bytes < 0.6 * fp32_size
    else:
        assert np.float16 not in types and abs(arm.size_bytes - x86.size_bytes) < 0.1 * x86.size_bytes
    validate_report(res.report)


@pytest.mark.parametrize(("precision", "min_cos"), [("fp32", 0.99999), ("fp16", 0.9995)])
def test_zoo_cnn_lowers_depthwise_residual_upsample_concat(saved, tmp_path, precision, min_cos):
    path = saved("cnn", "onnx")
    res = compress(path, targets="arm", out_dir=tmp_path, samples=4, latency_repeats=3,
                   fp16=precision == "fp16")
    art = res.artifact("arm")
    assert art.fidelity["cosine_pooled"] >= min_cos
    ops = _ops(art.path)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "RESIZE_NEAREST_NEIGHBOR", "CONCATENATION"} <= ops
    # inside, the model is NHWC: two edge transposes at most, none around every conv
    assert _count(art.path, "TRANSPOSE") <= 3


def _lone_erf(path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"], name="scale"),
         helper.make_node("Erf", ["t"], ["y"], name="lone_erf")],
        "erf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_op_without_lowering_is_refused_before_calibration(tmp_path, capsys):
    """An Erf outside a GELU has no TFLite builtin: refused by the target's check, one line, no
    file, before any calibration runs."""
    src = _lone_erf(tmp_path / "erf.onnx")
    rc = main([str(src), "--target", "arm", "--int8", "--calib-random", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "'Erf'" in err and "lone_erf" in err and "GELU" in err
    assert "--target" in err and "calibrat" not in err.lower()
    assert not list(tmp_path.glob("*.tflite"))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_zoo_transformer_in_three_precisions(saved, tmp_path, precision):
    """Token ids + mask: GATHER (embedding), CAST, LayerNorm decomposed (MEAN,
    SQUARED_DIFFERENCE, RSQRT), GELU fused from Erf, BATCH_MATMUL attention, 5-D reshape/transpose
    and SUM pooling; INT8 runs the FCs and attention matmuls in int8 and matches the QDQ graph."""
    res = compress(saved("transformer", "onnx"), targets="arm", out_dir=tmp_path, samples=4,
                   latency_repeats=3, fp16=precision == "fp16", int8=precision == "int8",
                   calib_random=precision == "int8", calib_samples=32)
    art = res.artifact("arm")
    ops = _ops(art.path)
    assert {"GATHER", "CAST", "GELU", "BATCH_MATMUL", "RSQRT", "SQUARED_DIFFERENCE",
            "FULLY_CONNECTED", "SOFTMAX", "SUM"} <= ops
    assert "ERF" not in ops and any("GELU" in n for n in art.notes)
    min_cos = {"fp32": 0.99999, "fp16": 0.9999, "int8": 0.99}[precision]
    assert art.fidelity["cosine_pooled"] >= min_cos
    if precision == "int8":
        assert art.extra["vs_qdq_simulation"]["cosine_min"] > 0.999
        assert art.extra["tflite_ops"]["int8"] >= 20
        fc_w = [d for d in _details(art.path) if d["dtype"] == np.int8 and len(d["shape"]) == 2
                and d["quantization_parameters"]["scales"].size > 1]
        assert len(fc_w) >= 9  # every Gemm weight int8 per channel
        assert art.size_bytes < 0.75 * len(_fp32_bytes(saved("transformer", "onnx")))


def _fp32_bytes(path):
    from autoglm_compress import load
    from autoglm_compress.pipeline import Pipeline, build_passes
    from autoglm_compress.targets.tflite.lower import lower_to_tflite

    m = load(path)
    Pipeline(build_passes(["cleanup", "fold_bn", "fuse_gelu"]), progress=False).run(m)
    return lower_to_tflite(m, "fp32")  # the emitter lowers what the target's passes prepared


CALIB = ROOT / "examples" / "digits_calib.npz"


def test_digits_full_integer_int8(tmp_path):
    """One calibration for x86 and arm; the .tflite runs every op in int8 (float edges only) and
    keeps the FP32 accuracy within 0.5 point."""
    res = compress(DEMO, int8=True, targets="arm,x86", calib=CALIB, eval_data=EVAL, samples=500,
                   out_dir=tmp_path, latency_repeats=5)
    arm = res.artifact("arm")
    out = next(iter(arm.fidelity["outputs"].values()))
    assert out["accuracy_ref"] - out["accuracy"] <= 0.005 and arm.fidelity["cosine_pooled"] > 0.999
    assert arm.extra["tflite_ops"]["float"] == 0 and arm.extra["tflite_ops"]["int8"] >= 6
    assert arm.extra["vs_qdq_simulation"]["cosine_min"] > 0.9999  # lowering adds no error
    assert arm.extra["reference_kernels"]["cosine_pooled"] > 0.999
    details = _details(arm.path)
    convs = [d for d in details if d["dtype"] == np.int8 and len(d["shape"]) == 4
             and d["quantization_parameters"]["scales"].size > 1]
    assert convs, "per-channel int8 filters expected"
    q = [p for p in res.report["passes"] if p["name"].startswith("quantize[")]
    assert [p["name"] for p in q] == ["quantize[arm/tflite]", "quantize[x86]"]
    assert res.report["calibration"]["samples"] > 0  # one calibration record for both
    io = res.report["artifacts"][0]["io"]
    assert io["inputs"][0] == {"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32", "quant": None}
    assert io["outputs"][0]["dtype"] == "float32"  # float IO: QUANTIZE/DEQUANTIZE inside
    side = res.artifact("arm").latency["litert"]  # FP32 / FP16 / INT8 timed in LiteRT together
    assert {"fp32", "fp16", "int8"} <= set(side) and side["threads"] == 2
    assert side["vs_fp32"]["int8"] == pytest.approx(
        side["int8"]["median_ms"] / side["fp32"]["median_ms"], rel=0.01)
    from autoglm_compress.report import summary_table

    assert "LiteRT side by side (2 threads): fp32" in summary_table(res.report)


def test_zoo_cnn_int8_lowering_matches_the_qdq_graph(saved, tmp_path):
    res = compress(saved("cnn", "onnx"), int8=True, calib_random=True, calib_samples=16,
                   targets="arm", out_dir=tmp_path, samples=4, latency_repeats=3)
    art = res.artifact("arm")
    assert art.extra["vs_qdq_simulation"]["cosine_min"] > 0.999
    assert art.extra["tflite_ops"]["int8"] >= 8


def _opcodes(path):
    import ai_edge_litert.schema_py_generated as s

    m = s.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    codes = [names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in m.operatorCodes]
    return [codes[o.opcodeIndex] for o in m.subgraphs[0].operators]


def _ops(path):
    return set(_opcodes(path))


def _count(path, op):
    return _opcodes(path).count(op)


def test_report_lists_tflite_io(tmp_path):
    res = compress(DEMO, targets="arm", out_dir=tmp_path, samples=4, latency_repeats=3)
    rep = json.loads(res.report_path.read_text())
    a = rep["artifacts"][0]
    assert a["files"]["model"]["path"].endswith(".arm.fp32.tflite")
    assert a["io"]["inputs"][0]["shape"] == [1, 1, 8, 8]


@pytest.mark.parametrize("io", ["int8", "uint8"])
def test_full_integer_io(tmp_path, io):
    res = compress(DEMO, int8=True, targets="arm", calib=CALIB, eval_data=EVAL, samples=200,
                   out_dir=tmp_path, latency_repeats=3, arm_io=io)
    art = res.artifact("arm")
    ins = [d for d in _details(art.path) if d["name"] == "x"]
    assert ins and ins[0]["dtype"] == np.dtype(io)
    rio = res.report["artifacts"][0]["io"]
    assert rio["inputs"][0]["dtype"] == io and rio["inputs"][0]["quant"]["scale"] > 0
    assert rio["outputs"][0]["name"] == "output" and rio["outputs"][0]["dtype"] == io
    out = next(iter(art.fidelity["outputs"].values()))
    assert out["accuracy_ref"] - out["accuracy"] <= 0.005 and art.fidelity["cosine_pooled"] > 0.999


def test_prune_distill_int8_for_arm_both_formats(tmp_path):
    """The issue-14 pipeline on the arm target: --prune 0.5 --distill-steps --int8 --format all
    writes a TFLite file and an ncnn param/bin of the pruned, distilled network (a quarter of the
    MACs), each run in its own runtime, both close to the other and to FP32's labels."""
    rc = main([str(DEMO), "--prune", "0.5", "--distill-steps", "150", "--int8", "--calib",
               str(CALIB), "--eval", str(EVAL), "--samples", "200", "--target", "arm",
               "--format", "all", "--latency-repeats", "2", "-o", str(tmp_path)])
    assert rc == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    stats = rep["model"]
    assert stats["stats_after"]["macs"] < 0.3 * stats["stats_before"]["macs"]
    arts = {a["path"].rsplit(".", 1)[-1]: a for a in rep["artifacts"]}
    assert set(arts) == {"tflite", "param"}
    accs = [next(iter(a["fidelity"]["outputs"].values()))["accuracy"] for a in arts.values()]
    assert min(accs) >= 0.85 and abs(accs[0] - accs[1]) <= 0.02
    assert [p["name"] for p in rep["passes"]][:4] == ["cleanup", "fold_bn", "prune", "distill"]


def test_format_all_records_each_format_once(tmp_path):
    """--format all quantizes once per arm format: the records say which (not quantize[arm] twice)."""
    res = compress(DEMO, int8=True, targets="arm", arm_format="all", calib=CALIB, samples=16,
                   calib_samples=32, out_dir=tmp_path, latency_repeats=1)
    names = [p["name"] for p in res.report["passes"]]
    assert names.count("quantize[arm/tflite]") == 1 and names.count("quantize[arm/ncnn]") == 1
    assert len(names) == len(set(names)), names  # every record names its format

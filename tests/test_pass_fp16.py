"""fp16: IR check, I/O types, block list, bytes halved, fidelity bounds in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from autoglm_compress import load
from autoglm_compress.inputs import random_feeds
from autoglm_compress.ir_utils import check, from_proto, ort_run, ort_session, to_proto
from autoglm_compress.metrics import fidelity
from autoglm_compress.passes.fp16 import ConvertFloat16Pass, Float16Config


def _run(saved, name, **cfg):
    model = load(saved(name, "onnx"))
    ref = from_proto(to_proto(model))
    p = ConvertFloat16Pass(Float16Config(**cfg))
    p(model)
    check(model)
    return ref, model, p.stats


@pytest.mark.parametrize("name", ["cnn", "transformer", "mlp", "two_input"])
def test_fp16_fidelity_and_size(saved, name):
    ref, model, stats = _run(saved, name)
    assert all(v.dtype != ir.DataType.FLOAT16 for v in (*model.graph.inputs, *model.graph.outputs))
    floats = [
        v
        for v in model.graph.initializers.values()
        if v.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16)
    ]
    assert all(v.dtype == ir.DataType.FLOAT16 for v in floats if v.const_value.size > 16)
    assert stats["bytes_after"] <= 0.55 * stats["bytes_before"]
    feeds = random_feeds(ref, 4, seed=2)
    a, b = ort_session(ref), ort_session(model)
    fid = fidelity(
        [ort_run(a, f) for f in feeds],
        [ort_run(b, f) for f in feeds],
        [v.name for v in ref.graph.outputs],
    )
    assert fid["cosine_pooled"] >= 0.9999
    for out in fid["outputs"].values():
        assert out["max_abs_err"] < 0.02


def test_block_list_keeps_ops_fp32(saved):
    _, model, stats = _run(saved, "transformer", op_block_list=("Softmax", "LayerNormalization"))
    for n in model.graph:
        if n.op_type in ("Softmax", "LayerNormalization"):
            assert n.outputs[0].dtype == ir.DataType.FLOAT
            assert all(v.dtype != ir.DataType.FLOAT16 for v in n.inputs if v is not None)
    assert stats["nodes_kept_fp32"] >= 4 and stats["casts_inserted"] >= 8


def test_fp16_io(saved):
    ref, model, _ = _run(saved, "cnn", keep_io_types=False)
    assert model.graph.inputs[0].dtype == ir.DataType.FLOAT16
    assert model.graph.outputs[0].dtype == ir.DataType.FLOAT16
    feed = random_feeds(ref, 1)[0]
    out = ort_run(ort_session(model), {"x": feed["x"].astype(np.float16)})[0]
    want = ort_run(ort_session(ref), feed)[0]
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), want, rtol=0.02, atol=0.02)


# ---------------------------------------------------------------- values FP16 cannot hold


def _typed(proto) -> ir.Model:
    """IR of a hand-built ONNX model with inferred intermediate types (as the loader gives)."""
    from onnx import shape_inference

    return from_proto(shape_inference.infer_shapes(proto, strict_mode=True))


def _bn_model(var_big: float = 9.8e7, constants: bool = False) -> ir.Model:
    """x → Conv → Mul(per-channel gain) → BatchNormalization → Relu → Conv → y: the BN follows a
    Mul, so nothing folds it; channel 0's gain and running variance are huge (a detector's)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = 4
    gain = np.ones((1, c, 1, 1), np.float32)
    gain[0, 0] = np.sqrt(var_big)
    var = np.array([var_big, 1.0, 0.5, 2.0], np.float32)
    arrays = {
        "w1": (rng.standard_normal((c, 3, 3, 3)) * 0.3).astype(np.float32),
        "gain": gain,
        "scale": np.array([1.0, 0.8, 1.2, 0.9], np.float32),
        "bias": np.array([0.1, -0.2, 0.0, 0.3], np.float32),
        "mean": np.array([500.0, 0.1, -0.1, 0.0], np.float32),
        "var": var,
        "w2": (rng.standard_normal((2, c, 1, 1)) * 0.5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Mul", ["h1", "gain"], ["h2"], name="gain_mul"),
        helper.make_node(
            "BatchNormalization", ["h2", "scale", "bias", "mean", "var"], ["h3"], name="bn"
        ),
        helper.make_node("Relu", ["h3"], ["h4"], name="relu"),
        helper.make_node("Conv", ["h4", "w2"], ["y"], name="conv2"),
    ]
    inits = [numpy_helper.from_array(a, k) for k, a in arrays.items()]
    if constants:  # weights held in Constant nodes, as paddle2onnx writes them
        nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in inits] + nodes
        inits = []
    graph = helper.make_graph(
        nodes,
        "bn_big_var",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
        inits,
    )
    return _typed(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _fp16_cosine(model: ir.Model, n: int = 4, **cfg) -> tuple[float, dict, ir.Model]:
    ref = from_proto(to_proto(model))
    p = ConvertFloat16Pass(Float16Config(**cfg))
    p(model)
    check(model)
    feeds = random_feeds(ref, n, seed=3)
    a, b = ort_session(ref), ort_session(model)
    names = [v.name for v in ref.graph.outputs]
    fid = fidelity([ort_run(a, f) for f in feeds], [ort_run(b, f) for f in feeds], names)
    return fid["cosine_pooled"], p.stats, model


@pytest.mark.parametrize("constants", [False, True], ids=["initializers", "constant_nodes"])
def test_bn_running_var_beyond_fp16_stays_fp32(constants):
    cos, stats, model = _fp16_cosine(_bn_model(constants=constants))
    assert cos > 0.999, cos
    kept = {r["node"]: r for r in stats["kept_fp32_for_range"]}
    assert set(kept) == {"bn"}, kept
    assert "9.8e+07" in kept["bn"]["reason"] and "65504" in kept["bn"]["reason"]
    assert "values_saturated" not in stats
    ops = {n.name: n for n in model.graph}
    assert ops["bn"].outputs[0].dtype == ir.DataType.FLOAT
    assert ops["conv1"].outputs[0].dtype == ir.DataType.FLOAT16  # the rest is still FP16
    assert ops["conv2"].outputs[0].dtype == ir.DataType.FLOAT16


def test_bn_whose_input_exceeds_fp16_keeps_its_producer_fp32():
    # sqrt(var) = 3e4: the Mul's output reaches ~4σ = 1.2e5, beyond FP16, so the Mul stays FP32
    cos, stats, _ = _fp16_cosine(_bn_model(var_big=9e8))
    assert cos > 0.999, cos
    assert {r["node"] for r in stats["kept_fp32_for_range"]} == {"gain_mul", "bn"}


def test_bounds_and_sentinels_saturate_instead():
    """Clip's 1e9 bound and a finfo.min mask constant keep their meaning at ±65504 in FP16."""
    from onnx import TensorProto, helper, numpy_helper

    arrays = {
        "lo": np.array(-1e9, np.float32),
        "hi": np.array(1e9, np.float32),
        "neg": np.full((1, 8), np.finfo(np.float32).min, np.float32),
    }
    nodes = [
        helper.make_node("Clip", ["x", "lo", "hi"], ["c"], name="clip"),
        helper.make_node("Mul", ["m", "neg"], ["mask"], name="mask_mul"),
        helper.make_node("Add", ["c", "mask"], ["s"], name="add"),
        helper.make_node("Softmax", ["s"], ["y"], name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "bounds",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
            helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(a, k) for k, a in arrays.items()],
    )
    model = _typed(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    ref = from_proto(to_proto(model))
    p = ConvertFloat16Pass()
    p(model)
    assert "kept_fp32_for_range" not in p.stats and p.stats["values_saturated"] == 10
    x = np.linspace(-2, 2, 8, dtype=np.float32)[None]
    m = np.array([[0, 0, 1, 0, 1, 0, 0, 1]], np.float32)  # 1 = masked
    want = ort_run(ort_session(ref), {"x": x, "m": m})[0]
    got = ort_run(ort_session(model), {"x": x, "m": m})[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert got[0, [2, 4, 7]].max() == 0.0


def test_weights_underflowing_fp16_keep_their_matmul_fp32():
    """Weights of scale 1e-8 (below FP16's smallest subnormal) rescaled by 1e6 afterwards."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    arrays = {
        "w_tiny": (rng.standard_normal((16, 8)) * 1e-8).astype(np.float32),
        "k": np.array(1e6, np.float32) * np.float32(0.05),
        "w": (rng.standard_normal((16, 8)) * 0.3).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w_tiny"], ["t"], name="mm_tiny"),
        helper.make_node("Mul", ["t", "k"], ["u"], name="rescale"),
        helper.make_node("MatMul", ["x", "w"], ["v"], name="mm"),
        helper.make_node("Add", ["u", "v"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(a, k) for k, a in arrays.items()],
    )
    model = _typed(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    cos, stats, _ = _fp16_cosine(model)
    assert cos > 0.999, cos
    kept = stats["kept_fp32_for_range"]
    assert [r["node"] for r in kept] == ["mm_tiny"] and "underflow" in kept[0]["reason"]

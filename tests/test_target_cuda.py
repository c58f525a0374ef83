"""cuda target: TensorRT explicit-quantization rules on the emitted QDQ ONNX (axes per op, zero points,
ranges), CPU verification in onnxruntime, and clear failures on graphs TensorRT would refuse."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from qhelpers import quantize_with as _quantize

from autoglm_compress import compress, load
from autoglm_compress.errors import UnsupportedOpError
from autoglm_compress.inputs import random_feeds
from autoglm_compress.pipeline import Pipeline, build_passes
from autoglm_compress.quantization.collect import collect_stats
from autoglm_compress.targets.cuda import CudaTarget
from autoglm_compress.targets.cuda.trt_rules import check_tensorrt_rules
from autoglm_compress.targets.x86 import X86Target


def _deconv_gemm_matmul(path):
    """X[1,4,8,8] → ConvTranspose(4→6) → Relu → Flatten → Gemm(transB=0) → Relu → MatMul → Y[1,5]."""
    rng = np.random.default_rng(0)

    def init(name, shape, scale=0.2):
        return helper.make_tensor(
            name, TensorProto.FLOAT, shape, (rng.standard_normal(shape) * scale).ravel()
        )

    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["a"], name="deconv", pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["g"], name="gemm", transB=0),
        helper.make_node("Relu", ["g"], ["gr"], name="relu2"),
        helper.make_node("MatMul", ["gr", "wm"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [
            init("wt", [4, 6, 3, 3]),
            init("bt", [6]),
            init("wg", [384, 10], 0.05),
            init("bg", [10]),
            init("wm", [10, 5]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def deconv(tmp_path_factory):
    return _deconv_gemm_matmul(tmp_path_factory.mktemp("m") / "deconv.onnx")


def _calibrated(path):
    model = load(path)
    Pipeline(build_passes(["cleanup", "fold_bn"]), progress=False).run(model)
    return model, collect_stats(model, random_feeds(model, n=16, seed=1), "minmax")


def test_weight_axes_per_op_follow_tensorrt(deconv):
    model, stats = _calibrated(deconv)
    q, _ = _quantize(model, CudaTarget(), stats, (), False)
    rules = check_tensorrt_rules(q)
    assert rules["violations"] == [] and rules["quantized_layers"] == 3, rules
    assert rules["float_input_layers"] == []
    axes = {}
    for node in q.graph:
        if node.op_type in ("ConvTranspose", "Gemm", "MatMul"):
            dq = node.inputs[1].producer()
            axes[node.op_type] = (dq.attributes.get_int("axis", 1), dq.inputs[1].shape[0])
            zp = dq.inputs[2].const_value.numpy()
            assert zp.dtype == np.int8 and not zp.any()
            assert dq.inputs[0].const_value.numpy().min() >= -127
    # ConvTranspose weight [Cin, Cout, kh, kw] → axis 1; Gemm transB=0 weight [K, N] → axis 1.
    assert axes == {"ConvTranspose": (1, 6), "Gemm": (1, 10), "MatMul": (1, 5)}


def test_cuda_int8_artifact_verified_in_onnxruntime(deconv, tmp_path):
    res = compress(
        deconv, int8=True, targets=("cuda",), calib_random=True, out_dir=tmp_path,
        latency_repeats=3,
    )  # fmt: skip
    art = res.artifact("cuda")
    assert art.fidelity["cosine_pooled"] > 0.999, art.fidelity
    rules = art.extra["tensorrt_rules"]
    assert rules["violations"] == [] and rules["quantized_layers"] == 3
    assert "--stronglyTyped" in art.extra["trtexec"]["tensorrt>=10"]
    saved = onnx.load(art.path)
    q_types = {init.data_type for init in saved.graph.initializer if init.name.endswith("_zp")}
    assert q_types == {TensorProto.INT8}, "TensorRT reads only int8 Q/DQ"


def test_rules_reject_x86_style_qdq(deconv):
    """u8 asymmetric activations (the x86 scheme) break TensorRT's zero-point rule."""
    model, stats = _calibrated(deconv)
    q, _ = _quantize(model, X86Target(), stats, (), False)
    rules = check_tensorrt_rules(q)
    assert any("zero point must be int8 0" in v for v in rules["violations"])
    with pytest.raises(UnsupportedOpError, match="TensorRT rule: zero point"):
        CudaTarget().validate(q, "int8")


def test_rules_catch_wrong_axis_and_full_range(deconv):
    model, stats = _calibrated(deconv)
    q, _ = _quantize(model, CudaTarget(), stats, (), False)
    deconv_node = next(n for n in q.graph if n.op_type == "ConvTranspose")
    dq = deconv_node.inputs[1].producer()
    dq.attributes["axis"] = onnx_ir_attr("axis", 0)
    w = dq.inputs[0].const_value.numpy().copy()
    w.flat[0] = -128
    import onnx_ir as ir

    dq.inputs[0].const_value = ir.tensor(w, name=dq.inputs[0].name)
    v = check_tensorrt_rules(q)["violations"]
    assert any("axis 0" in x and "wants axis 1" in x for x in v), v
    assert any("[-127, 127]" in x for x in v), v


def onnx_ir_attr(name, value):
    import onnx_ir as ir

    return ir.AttrInt64(name, value)


def test_float_input_layer_is_reported(deconv):
    """A weighted layer whose activation arrives unquantized runs in float in TensorRT: noted."""
    model, stats = _calibrated(deconv)
    q, _ = _quantize(model, CudaTarget(), stats, (), False)
    gemm = next(n for n in q.graph if n.op_type == "Gemm")
    act_dq = gemm.inputs[0].producer()
    gemm.replace_input_with(0, act_dq.inputs[0].producer().inputs[0])  # skip its Q/DQ
    rules = check_tensorrt_rules(q)
    assert rules["violations"] == [] and rules["float_input_layers"] == ["gemm"]
    notes = CudaTarget().validate(q, "int8")
    assert len(notes) == 1 and "gemm" in notes[0]

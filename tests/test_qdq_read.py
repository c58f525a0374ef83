"""QDQ reader: write with QuantizePass under the x86 and TensorRT schemes, read back, and compare
every scale, zero point, axis and integer weight with what the writer's rules give; then read a
graph quantized by onnxruntime's own quantizer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoglm_compress.calibration.qparams import compute_qparams
from autoglm_compress.ir_utils import check, from_proto, ort_run, ort_session
from autoglm_compress.passes.quantize import QuantizeConfig, QuantizePass
from autoglm_compress.quantization.qdq import quantize_array, shared_scale_groups, weight_qparams
from autoglm_compress.quantization.qdq_read import int8_split, read_qdq, read_qparams
from autoglm_compress.targets.cuda import tensorrt_scheme
from autoglm_compress.targets.x86 import x86_scheme

RNG = np.random.default_rng(3)
# node -> (weight name, expected per-channel axis of its weight scales, number of channels)
WEIGHTS = {
    "conv": ("W1", 0, 4),
    "convT": ("W2", 1, 3),
    "gemm": ("W3", 0, 5),
    "matmul": ("W4", 1, 6),
}
ORDER = ["conv", "relu", "convT", "gap", "flat", "gemm", "matmul"]


def _model() -> onnx.ModelProto:
    """x → Conv → Relu → ConvTranspose(group 2) → GlobalAveragePool → Flatten → Gemm(transB) →
    MatMul → y."""
    arrays = {
        "W1": RNG.standard_normal((4, 3, 3, 3)),
        "B1": RNG.standard_normal(4),
        "W2": RNG.standard_normal((4, 3, 2, 2)),
        "B2": RNG.standard_normal(6),
        "W3": RNG.standard_normal((5, 6)),
        "B3": RNG.standard_normal(5),
        "W4": RNG.standard_normal((5, 6)),
    }
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    mk = helper.make_node
    nodes = [
        mk("Conv", ["x", "W1", "B1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        mk("Relu", ["c1"], ["r1"], name="relu"),
        mk("ConvTranspose", ["r1", "W2", "B2"], ["t2"], name="convT", group=2, strides=[2, 2]),
        mk("GlobalAveragePool", ["t2"], ["p"], name="gap"),
        mk("Flatten", ["p"], ["f"], name="flat"),
        mk("Gemm", ["f", "W3", "B3"], ["g"], name="gemm", transB=1),
        mk("MatMul", ["g", "W4"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_read",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ranges(model) -> dict:
    """A distinct (lo, hi) per tensor: lo < 0 < hi, so every zero point is exercised."""
    names = ["x", "c1", "r1", "t2", "p", "f", "g", "y"]
    return {n: (-0.5 - 0.25 * i, 1.0 + 0.5 * i) for i, n in enumerate(names)}


def _quantize(scheme, keep=()):
    proto = _model()
    fp32, model = from_proto(proto), from_proto(proto)
    QuantizePass(QuantizeConfig(scheme=scheme, ranges=_ranges(model), keep_fp32=keep))(model)
    check(model)
    return fp32, model


def _weights(fp32) -> dict:
    return {v.name: v.const_value.numpy() for v in fp32.graph.initializers.values()}


@pytest.mark.parametrize("scheme", [x86_scheme(reduce_range=True), x86_scheme(reduce_range=False), tensorrt_scheme()], ids=lambda s: s.name)
def test_weights_round_trip(scheme):
    fp32, q = _quantize(scheme)
    got, w0 = read_qdq(q), _weights(fp32)
    tq = scheme.weight
    for name, (w_name, axis, n) in WEIGHTS.items():
        qp = got[name].inputs[1]
        w = w0[w_name]
        scale, _ = weight_qparams(w, axis, tq)
        assert qp.axis == axis and qp.scale.shape == (n,) and qp.dtype == "int8"
        np.testing.assert_array_equal(qp.scale, scale)
        np.testing.assert_array_equal(qp.zero_point, np.zeros(n, np.int8))
        np.testing.assert_array_equal(qp.quantized, quantize_array(w, scale, axis, tq))
        # the dequantized weight is W to half a step, and the largest |W_c| maps to q_max
        step = np.moveaxis(
            np.broadcast_to(
                qp.scale.reshape([-1 if i == axis else 1 for i in range(w.ndim)]), w.shape
            ),
            axis,
            0,
        )
        err = np.moveaxis(np.abs(qp.dequantize() - w), axis, 0)
        assert (err <= step / 2 + 1e-6).all()
        qmax = 63 if tq.reduce_range else 127
        assert (
            np.abs(np.moveaxis(qp.quantized, axis, 0).reshape(n, -1)).max(1).tolist() == [qmax] * n
        )


def test_x86_activations_and_biases_round_trip():
    scheme = x86_scheme(reduce_range=True)
    fp32, q = _quantize(scheme)
    got = read_qdq(q)
    ranges = shared_scale_groups(fp32.graph, scheme, _ranges(fp32), None)
    assert ranges["p"] == ranges["f"]  # Flatten shares its input's scale

    def expect(name):
        return compute_qparams(*ranges[name], scheme.activation)

    for node, idx, tensor in [
        ("conv", 0, "x"),
        ("convT", 0, "r1"),
        ("gap", 0, "t2"),
        ("gemm", 0, "f"),
        ("matmul", 0, "g"),
    ]:
        qp = got[node].inputs[idx]
        s, z = expect(tensor)
        assert (qp.dtype, qp.axis) == ("uint8", None), node
        assert qp.scale == s and qp.zero_point == z, (node, qp.scale, s)
    s_x, z_x = expect("x")  # x in [-0.5, 1.0]: asymmetric uint8, s = 1.5/255, z = round(0.5/s)
    assert float(s_x) == pytest.approx(1.5 / 255) and int(z_x) == 85
    # outputs: Conv's is quantized after its fused Relu; Gemm's is the MatMul's input; y has none
    assert got["conv"].outputs[0].scale == expect("r1")[0]
    assert got["gemm"].outputs[0].zero_point == expect("g")[1]
    assert got["matmul"].outputs == {}
    # int32 biases: b_q = round(b / (s_x · s_w[c])), scale s_x · s_w
    w0 = _weights(fp32)
    for node, b_name, x_name in [("conv", "B1", "x"), ("gemm", "B3", "f")]:
        qb, s_w = got[node].inputs[2], got[node].inputs[1].scale
        bs = (np.float32(expect(x_name)[0]) * s_w).astype(np.float32)
        assert qb.dtype == "int32" and qb.axis == 0
        np.testing.assert_array_equal(qb.scale, bs)
        np.testing.assert_array_equal(qb.quantized, np.round(w0[b_name] / bs).astype(np.int32))


def test_tensorrt_activations_symmetric_int8():
    scheme = tensorrt_scheme()
    fp32, q = _quantize(scheme)
    got = read_qdq(q)
    for node, tensor in [("conv", "x"), ("convT", "r1"), ("gemm", "f"), ("matmul", "g")]:
        qp = got[node].inputs[0]
        lo, hi = _ranges(fp32)[tensor]
        assert qp.dtype == "int8" and int(qp.zero_point) == 0 and qp.axis is None
        assert float(qp.scale) == pytest.approx(max(-lo, hi) / 127, rel=1e-6)
    assert 2 not in got["conv"].inputs  # float bias under TensorRT's scheme
    # outputs are quantized only where a quantized op reads them: Flatten → Gemm, Relu → ConvT
    assert got["convT"].outputs == {} and got["gap"].outputs == {}
    assert got["flat"].outputs[0].scale == got["gemm"].inputs[0].scale
    assert got["relu"].outputs[0].node == got["conv"].outputs[0].node == "r1_Q"


def test_int8_split():
    _, x86 = _quantize(x86_scheme(reduce_range=True))
    assert int8_split(x86).int8 == ORDER and int8_split(x86).float == []
    _, trt = _quantize(tensorrt_scheme())
    split = int8_split(trt)  # Relu fuses into the int8 Conv; pooling reads a float ConvTranspose
    assert split.int8 == ["conv", "relu", "convT", "gemm", "matmul"]
    assert split.float == ["gap", "flat"]
    _, kept = _quantize(x86_scheme(reduce_range=True), keep=("gemm",))
    assert "gemm" in int8_split(kept).float and 1 not in read_qdq(kept)["gemm"].inputs
    assert int8_split(from_proto(_model())).int8 == []


def test_reads_onnxruntime_quantizer_output(tmp_path):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(
                [{"x": RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(4)]
            )

        def get_next(self):
            return next(self.feeds, None)

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    fp32 = _model()
    onnx.save(fp32, src)
    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        nodes_to_exclude=["convT"],  # its quantizer cannot size a grouped ConvTranspose bias
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    q = from_proto(onnx.load(dst))
    got, w0 = read_qdq(q), {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    for name in ("conv", "gemm"):
        qp = got[name].inputs[1]
        w = w0[WEIGHTS[name][0]]
        assert qp.axis == WEIGHTS[name][1] and qp.scale.shape == (WEIGHTS[name][2],)
        assert qp.dtype == "int8" and np.abs(qp.dequantize() - w).max() <= qp.scale.max() / 2 + 1e-6
        assert got[name].inputs[0].dtype == "uint8"
    assert "conv" in int8_split(q).int8
    x = {"x": RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)}
    ref, out = ort_run(ort_session(from_proto(fp32)), x)[0], ort_run(ort_session(q), x)[0]
    assert np.isfinite(out).all() and out.shape == ref.shape


def test_missing_zero_point_and_dynamic_scale():
    import onnx_ir as ir

    q = ir.Value(name="wq", const_value=ir.tensor(np.array([[3, -4], [5, 6]], np.int8), name="wq"))
    s = ir.Value(name="s", const_value=ir.tensor(np.array([0.5, 0.25], np.float32), name="s"))
    dq = ir.node("DequantizeLinear", [q, s], attributes={"axis": -1}, name="dq")
    qp = read_qparams(dq)
    assert qp.dtype == "int8" and qp.axis == 1 and qp.zero_point.dtype == np.int8
    np.testing.assert_array_equal(qp.dequantize(), [[1.5, -1.0], [2.5, 1.5]])
    dyn = ir.node("DequantizeLinear", [q, ir.Value(name="runtime_scale")], name="dq2")
    assert read_qparams(dyn) is None

"""smoothquant: exact in FP32, and smaller INT8 error when activation channels have outliers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from autoglm_compress.ir_utils import check, from_proto, ort_run, ort_session, to_proto
from autoglm_compress.passes.smoothquant import SmoothQuantConfig, SmoothQuantPass

RNG = np.random.default_rng(0)


def _graph(residual: bool):
    gamma = np.ones(16, np.float32)
    gamma[[2, 9]] = 50.0  # outlier channels, as LLM-style activations have
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[8,16] x) => (float[8,12] y%s) {
        n = LayerNormalization <axis=-1> (x, gamma, beta)
        q = MatMul(n, wq)
        k = MatMul(n, wk)
        y = Add(q, k)
        %s
    }""" % ((", float[8,16] r", "r = Add(n, x)") if residual else ("", ""))
    proto = onnx.parser.parse_model(text)
    for name, arr in {
        "gamma": gamma,
        "beta": RNG.normal(0, 0.1, 16).astype(np.float32),
        "wq": RNG.normal(0, 0.2, (16, 12)).astype(np.float32),
        "wk": RNG.normal(0, 0.2, (16, 12)).astype(np.float32),
    }.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
    return from_proto(proto)


def _fake_int8_matmuls(model, x):
    """y with n quantized per-tensor (int8 symmetric) and weights per output channel."""
    sess = ort_session(model)
    mm = [n for n in model.graph if n.op_type == "MatMul"]
    act_name = mm[0].inputs[0].name
    proto = to_proto(model)
    proto.graph.output.append(
        onnx.helper.make_tensor_value_info(act_name, onnx.TensorProto.FLOAT, None)
    )
    n = ort_run(ort_session(proto.SerializeToString()), {"x": x})[-1]
    sx = np.abs(n).max() / 127
    nq = np.clip(np.round(n / sx), -127, 127) * sx
    y = 0
    for node in mm:
        w = node.inputs[1].const_value.numpy()
        sw = np.abs(w).max(axis=0, keepdims=True) / 127
        y = y + nq @ (np.round(w / sw) * sw)
    return y, ort_run(sess, {"x": x})[0]


@pytest.mark.parametrize("residual", [False, True])
def test_exact_and_better_int8(residual):
    model = _graph(residual)
    x = RNG.normal(size=(8, 16)).astype(np.float32)
    before = from_proto(to_proto(model))
    n = ort_run(ort_session(before), {"x": x})
    ln_out = next(v for v in (nd.outputs[0] for nd in before.graph) if v.name == "n")
    proto = to_proto(before)
    proto.graph.output.append(onnx.helper.make_tensor_value_info("n", onnx.TensorProto.FLOAT, None))
    act = ort_run(ort_session(proto.SerializeToString()), {"x": x})[-1]
    p = SmoothQuantPass(SmoothQuantConfig(alpha=0.5, act_absmax={ln_out.name: np.abs(act).max(0)}))
    p(model)
    check(model)
    assert p.stats["matmuls_smoothed"] == 2
    assert p.stats["mul_inserted" if residual else "layernorms_folded"] == 1
    after = ort_run(ort_session(model), {"x": x})
    for a, b in zip(after, n):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert p.stats["max_channel_ratio_after"] < p.stats["max_channel_ratio_before"] / 3
    if not residual:
        err_before = np.abs(np.subtract(*_fake_int8_matmuls(before, x))).mean()
        err_after = np.abs(np.subtract(*_fake_int8_matmuls(model, x))).mean()
        assert err_after < 0.7 * err_before, (err_before, err_after)

"""equalize: exact in FP32, evens per-channel weight ranges, skips non-homogeneous activations."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from autoglm_compress.ir_utils import check, from_proto, ort_run, ort_session, to_proto
from autoglm_compress.passes.equalize import CrossLayerEqualizationPass
from autoglm_compress.quantization.qdq import quantize_array, weight_qparams
from autoglm_compress.quantization.scheme import TensorQuant

RNG = np.random.default_rng(0)


def _model(act: str, depthwise_first: bool):
    c = 8
    w1 = RNG.normal(size=(c, 1 if depthwise_first else c, 3, 3)).astype(np.float32)
    w1 *= (10.0 ** RNG.uniform(-2, 2, c)).astype(np.float32).reshape(-1, 1, 1, 1)  # imbalanced
    w2 = RNG.normal(size=(c, c, 1, 1)).astype(np.float32)
    grp = f"<group={c}, pads=[1,1,1,1]>" if depthwise_first else "<pads=[1,1,1,1]>"
    mid = {"relu": "a = Relu(h)", "clip": "a = Clip(h, lo, hi)"}[act]
    text = f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[1,8,6,6] x) => (float[1,8,6,6] y) {{
        h = Conv {grp} (x, w1, b1)
        {mid}
        y = Conv (a, w2, b2) }}"""
    proto = onnx.parser.parse_model(text)
    inits = {
        "w1": w1,
        "b1": RNG.normal(size=c).astype(np.float32),
        "w2": w2,
        "b2": RNG.normal(size=c).astype(np.float32),
        "lo": np.array(0, np.float32),
        "hi": np.array(6, np.float32),
    }
    for k, a in inits.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(a, k))
    return from_proto(proto)


def _per_tensor_error(model, x):
    """Output error with both conv weights quantized per tensor (int8 symmetric)."""
    m = from_proto(to_proto(model))
    tq = TensorQuant("int8", symmetric=True, narrow_range=True)
    for n in m.graph:
        if n.op_type == "Conv":
            w = n.inputs[1].const_value.numpy()
            s, _ = weight_qparams(w, None, tq)
            n.inputs[1].const_value = ir.tensor(
                quantize_array(w, s, None, tq).astype(np.float32) * s
            )
    ref = ort_run(ort_session(model), {"x": x})[0]
    return np.abs(ort_run(ort_session(m), {"x": x})[0] - ref).mean()


@pytest.mark.parametrize("depthwise_first", [True, False])
def test_relu_pair_equalized_exactly(depthwise_first):
    model = _model("relu", depthwise_first)
    before = from_proto(to_proto(model))
    x = RNG.normal(size=(1, 8, 6, 6)).astype(np.float32)
    p = CrossLayerEqualizationPass()
    p(model)
    check(model)
    assert p.stats["pairs_equalized"] == 1
    assert p.stats["range_ratio_after"] < p.stats["range_ratio_before"] / 5
    np.testing.assert_allclose(
        ort_run(ort_session(model), {"x": x})[0],
        ort_run(ort_session(before), {"x": x})[0],
        rtol=1e-4,
        atol=1e-4,
    )
    assert _per_tensor_error(model, x) < 0.7 * _per_tensor_error(before, x)  # measured 0.54–0.58×


def test_clip_is_skipped():
    model = _model("clip", True)
    p = CrossLayerEqualizationPass()
    p(model)
    assert p.stats.get("pairs_equalized", 0) == 0 and p.stats["skipped_nonhomogeneous"] >= 1

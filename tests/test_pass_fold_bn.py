"""fold_bn: counts, IR check, and outputs unchanged (executor and onnxruntime)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from autoglm_compress.inputs import random_feeds
from autoglm_compress.ir_utils import check, from_proto, ort_run, ort_session, to_proto
from autoglm_compress.passes.fold_bn import FoldBatchNormPass
from autoglm_compress.runtime import run_model

RNG = np.random.default_rng(0)


def _bn(c):
    return {
        "s": RNG.uniform(0.5, 2, c).astype(np.float32),
        "bb": RNG.normal(0, 1, c).astype(np.float32),
        "m": RNG.normal(0, 1, c).astype(np.float32),
        "v": RNG.uniform(0.2, 3, c).astype(np.float32),
    }


def _model(text, inits):
    proto = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>\n' + text)
    for k, a in inits.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(a, k))
    return from_proto(proto)


def _fold_and_compare(model, n_bn):
    before = from_proto(to_proto(model))
    p = FoldBatchNormPass()
    p(model)
    check(model)
    assert p.stats == {"bn_folded": n_bn, "bn_left": 0} or p.stats["bn_folded"] == n_bn
    feed = random_feeds(before, 1, seed=1)[0]
    want = ort_run(ort_session(before), feed)[0]
    got_ort = ort_run(ort_session(model), feed)[0]
    got_ex = run_model(model, feed)[model.graph.outputs[0].name]
    np.testing.assert_allclose(got_ort, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_ex, want, rtol=1e-4, atol=1e-5)
    return p.stats


@pytest.mark.parametrize("group,bias", [(1, True), (1, False), (4, True)])
def test_conv_bn(group, bias):
    w = RNG.normal(size=(8, 4 // group, 3, 3)).astype(np.float32)
    b_in = ", b" if bias else ""
    inits = {"w": w, **_bn(8)}
    if bias:
        inits["b"] = RNG.normal(size=8).astype(np.float32)
    m = _model(
        f"""g (float[1,4,6,6] x) => (float[1,8,4,4] y) {{
        c = Conv <group={group}> (x, w{b_in})
        y = BatchNormalization (c, s, bb, m, v) }}""",
        inits,
    )
    stats = _fold_and_compare(m, 1)
    assert stats["bn_left"] == 0
    assert not any(n.op_type == "BatchNormalization" for n in m.graph)
    assert [v.name for v in m.graph.outputs] == ["y"], "the BN output name survives as graph output"


def test_bn_without_conv_is_left_and_counted():
    m = _model(
        """g (float[1,3,4,4] x) => (float[1,3,4,4] y) {
        r = Relu(x)
        y = BatchNormalization (r, s, bb, m, v) }""",
        _bn(3),
    )
    p = FoldBatchNormPass()
    p(m)
    check(m)
    assert p.stats == {"bn_folded": 0, "bn_left": 1}


def test_zoo_cnn_all_folded(saved):
    from autoglm_compress import load

    m = load(saved("cnn", "onnx"))
    assert sum(n.op_type == "BatchNormalization" for n in m.graph) == 6
    stats = _fold_and_compare(m, 6)
    assert stats == {"bn_folded": 6, "bn_left": 0}

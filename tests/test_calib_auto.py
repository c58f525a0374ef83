"""The ``auto`` calibration method: min/max for graph inputs and bounded activations, a clipped
minimum-MSE histogram range for everything else — chosen per tensor from the graph, computed in
one onnxruntime pass (in-graph reductions plus the histogram tensors streamed)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper

from autoglm_compress import load
from autoglm_compress.calibration.auto_method import MAX_CLIP, bounded_tensors, histogram_tensors
from autoglm_compress.calibration.observers import MinMaxObserver, MSEObserver
from autoglm_compress.config import CalibrationConfig
from autoglm_compress.inputs import random_feeds
from autoglm_compress.quantization.collect import collect_stats


def _graph() -> ir.Model:
    """x → Conv → Clip(0, 6) → MaxPool → Conv → s = Sigmoid, m = Mul(c2, s) → Relu → Concat(m6, r)
    with a Clip without upper bound on the side: which outputs are bounded by construction."""
    rng = np.random.default_rng(0)
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [4, 3, 3, 3], rng.normal(size=108))
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [4, 4, 1, 1], rng.normal(size=16))
    lo = helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0])
    hi = helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r6"]),
        helper.make_node("MaxPool", ["r6"], ["p"], kernel_shape=[1, 1]),
        helper.make_node("Conv", ["p", "w2"], ["c2"]),
        helper.make_node("Sigmoid", ["c2"], ["s"]),
        helper.make_node("Mul", ["c2", "s"], ["m"]),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("Clip", ["c2", "lo"], ["half"]),  # no upper bound: unbounded
        helper.make_node("Concat", ["p", "r", "half"], ["y"], axis=1),
        helper.make_node("Concat", ["p", "s"], ["y2"], axis=1),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)],
        [w1, w2, lo, hi],
    )
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_bounded_activations_and_inputs_keep_minmax():
    model = _graph()
    assert bounded_tensors(model) == {"r6", "p", "s", "y2"}
    assert histogram_tensors(model) == {"c1", "c2", "m", "r", "half", "y"}


@pytest.mark.parametrize("backend", ["onnxruntime", "executor"])
def test_auto_observers_per_tensor(backend):
    model = _graph()
    feeds = [{"x": np.random.default_rng(i).normal(size=(1, 3, 8, 8)).astype(np.float32) * 3}
             for i in range(6)]
    st = collect_stats(model, feeds, "auto", backend=backend)
    assert st.backend == backend and st.method == "auto"
    kinds = {k: type(o) for k, o in st.observers.items()}
    assert {k for k, c in kinds.items() if c is MinMaxObserver} == {"x", "r6", "p", "s", "y2"}
    assert {k for k, c in kinds.items() if c is MSEObserver} == histogram_tensors(model)
    mm = collect_stats(model, feeds, "minmax", backend=backend).ranges()
    for name, (lo, hi) in st.ranges().items():
        mlo, mhi = mm[name]
        assert mlo - 1e-5 <= lo and hi <= mhi + 1e-5, name  # never wider than min/max
        if kinds[name] is MinMaxObserver:
            assert (lo, hi) == pytest.approx((mlo, mhi), rel=1e-5, abs=1e-6), name
        else:  # clipped at most to 1/MAX_CLIP of each side
            assert lo <= mlo / MAX_CLIP + 1e-4 and hi >= mhi / MAX_CLIP - 1e-4, name


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_auto_in_onnxruntime_equals_executor(saved, name):
    """The hybrid plan (reduce everything, stream the histogram tensors) gives the executor's
    observers, ranges and channel statistics; the channel means equal minmax's."""
    model = load(saved(name, "onnx"))
    feeds = random_feeds(model, 12, seed=4)
    ex = collect_stats(model, feeds, "auto", backend="executor", bins=512)
    ort = collect_stats(model, feeds, "auto", backend="onnxruntime", bins=512)
    assert ort.backend == "onnxruntime" and ex.observers.keys() == ort.observers.keys()
    assert any(isinstance(o, MSEObserver) for o in ort.observers.values())
    assert {k: type(o) for k, o in ex.observers.items()} == {
        k: type(o) for k, o in ort.observers.items()}
    a, b = ex.ranges(symmetric=True), ort.ranges(symmetric=True)
    for k, v in a.items():
        width = max(v[1] - v[0], 1e-6)
        np.testing.assert_allclose(v, b[k], rtol=0, atol=1e-2 * width, err_msg=k)
    mm = collect_stats(model, feeds, "minmax", backend="onnxruntime")
    assert ort.channel_means.keys() == mm.channel_means.keys() and mm.channel_means
    for k in mm.channel_means:
        np.testing.assert_allclose(ort.channel_means[k], mm.channel_means[k], rtol=1e-6)
        np.testing.assert_allclose(ort.channel_absmax[k], mm.channel_absmax[k], rtol=1e-6)
        np.testing.assert_allclose(ex.channel_means[k], mm.channel_means[k], rtol=1e-4, atol=1e-6)


def test_max_clip_bounds_the_mse_range():
    x = np.random.default_rng(1).normal(size=1_000_000).astype(np.float32)
    x[:2] = (-30.0, 30.0)  # two far outliers: clipping them costs less than coarser steps
    x = torch.from_numpy(x)
    free, capped = MSEObserver(), MSEObserver(max_clip=1.5)
    for o in (free, capped):
        o.observe(x)
    lo, hi = (float(v) for v in free.range(symmetric=False))
    clo, chi = (float(v) for v in capped.range(symmetric=False))
    mn, mx = float(x.min()), float(x.max())
    assert hi < mx / 1.5 and lo > mn / 1.5  # a heavy tail: the optimum clips further
    assert chi == pytest.approx(mx / 1.5) and clo == pytest.approx(mn / 1.5)
    with pytest.raises(Exception, match="max_clip"):
        MSEObserver(max_clip=0.5)


def test_auto_is_the_default():
    assert CalibrationConfig().method == "auto"

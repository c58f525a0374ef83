"""Calibration statistics computed in onnxruntime equal the torch executor's.

Minmax reduces inside an augmented graph; histogram methods stream the tensors in byte-bounded
chunks. Both must give the executor path's tensors, ranges, channel means / max|x| and histograms
(to float32 rounding: the two runtimes' kernels differ in the last bits).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from autoglm_compress import load
from autoglm_compress.errors import CalibrationError
from autoglm_compress.inputs import random_feeds
from autoglm_compress.quantization.collect import collect_stats
from autoglm_compress.quantization.collect_backends import chunk_size as _chunk_size


def _pair(model, feeds, method, **kw):
    ex = collect_stats(model, feeds, method, backend="executor", **kw)
    ort = collect_stats(model, feeds, method, backend="onnxruntime", **kw)
    assert (ex.backend, ort.backend) == ("executor", "onnxruntime")
    assert ex.samples == ort.samples == len(feeds)
    return ex, ort


def _close_ranges(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys() and len(a) > 5
    for k, v in a.items():
        width = max(v[1] - v[0], 1e-6)
        np.testing.assert_allclose(v, b[k], rtol=0, atol=rtol * width, err_msg=k)


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_minmax_stats_equal_executor(saved, name):
    model = load(saved(name, "onnx"))
    ex, ort = _pair(model, random_feeds(model, 24, seed=3), "minmax")
    _close_ranges(ex.ranges(), ort.ranges(), 1e-5)
    assert ex.channel_means.keys() == ort.channel_means.keys() and ex.channel_means
    for k in ex.channel_means:
        np.testing.assert_allclose(ort.channel_means[k], ex.channel_means[k], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ort.channel_absmax[k], ex.channel_absmax[k], rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "method", "tol"),
    [("cnn", "percentile", 1e-4), ("transformer", "mse", 1e-2), ("transformer", "entropy", 0.05)],
)
def test_histogram_stats_equal_executor(saved, name, method, tol):
    """Same chunks (3 samples each: a byte budget of 3 samples' activations) in both backends give
    the same histograms: equal counts, zeros, min/max, and CDFs equal to float rounding — or to one
    bin's mass where a range grown by one float ulp more in one runtime was re-binned there (the
    re-binning spreads each old bin's count uniformly). The searched ranges agree to
    ``tol`` of the range (entropy: the KL argmin over discrete thresholds may move a few bins on
    a flat KL curve when counts move by float rounding)."""
    import torch

    model = load(saved(name, "onnx"))
    feeds = random_feeds(model, 12, seed=4)
    budget = 3 * _activation_bytes(model, feeds[0])
    ex, ort = _pair(model, feeds, method, bins=512, chunk_bytes=budget)
    assert ex.observers.keys() == ort.observers.keys()
    for k, obs in ex.observers.items():
        h, g = obs.hist, ort.observers[k].hist
        np.testing.assert_allclose(
            [g.min_val, g.max_val], [h.min_val, h.max_val], rtol=1e-5, atol=1e-6, err_msg=k
        )
        assert g.total == pytest.approx(h.total, rel=1e-9) and g.zeros == h.zeros, k
        pts = torch.linspace(h.min_val, h.max_val, 257, dtype=torch.float64)
        gap = float((g.cdf(pts) - h.cdf(pts)).abs().max())
        one_bin = float(max(h.counts.max(), g.counts.max()))  # re-binning spreads one bin
        assert gap <= (one_bin if h.rebins != g.rebins else 0) + 1e-3 * h.total + 1, (k, gap)
    _close_ranges(ex.ranges(symmetric=False), ort.ranges(symmetric=False), tol)
    _close_ranges(ex.ranges(symmetric=True), ort.ranges(symmetric=True), tol)


def _activation_bytes(model, feed) -> int:
    from autoglm_compress.runtime import TorchExecutor

    sizes = []
    TorchExecutor(model).run(
        feed,
        hook=lambda n, node, t: sizes.append(t.numel() * t.element_size() * t.is_floating_point()),
    )
    return int(sum(sizes))


def test_chunk_size_is_bounded_by_bytes():
    import torch

    sample = {"a": torch.zeros(1024, 1024), "b": torch.zeros(10, dtype=torch.int64)}  # ~4 MB
    assert _chunk_size(sample, 9 << 20, batch=16) == 2
    assert _chunk_size(sample, 1, batch=16) == 1
    assert _chunk_size(sample, 1 << 40, batch=16) == 16


def _nan_model() -> ir.Model:
    """x [1, 4] → Log (NaN for x < 0) → MatMul W → y: the Log output is a MatMul input."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12, np.float32))
    g = helper.make_graph(
        [helper.make_node("Log", ["x"], ["lx"]), helper.make_node("MatMul", ["lx", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w],
    )
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("backend", ["onnxruntime", "executor"])
def test_nan_activation_is_named(backend):
    model = _nan_model()
    good = [{"x": np.full((1, 4), 2.0, np.float32)}]
    assert collect_stats(model, good, "minmax", backend=backend).ranges()["lx"][1] == pytest.approx(
        np.log(2.0)
    )
    bad = [*good, {"x": np.array([[1.0, -1.0, 3.0, 4.0]], np.float32)}]
    with pytest.raises(CalibrationError, match="'lx'"):
        collect_stats(model, bad, "minmax", backend=backend)


def test_unrunnable_in_onnxruntime_falls_back_to_executor(saved, monkeypatch):
    """onnxruntime refuses the augmented model: no sample is lost, the executor's statistics."""
    from autoglm_compress.calibration import ort_stats

    model = load(saved("cnn", "onnx"))
    feeds = random_feeds(model, 4, seed=5)
    ref = collect_stats(model, feeds, "minmax", backend="executor").ranges()

    def refuse(proto, arena=False):
        raise ort_stats.OrtStatsUnavailable("NOT_IMPLEMENTED: no kernel")

    monkeypatch.setattr(ort_stats, "_session", refuse)
    got = collect_stats(model, iter(feeds), "minmax", backend="onnxruntime")
    assert got.backend == "executor" and got.samples == 4
    _close_ranges(ref, got.ranges(), 0.0)


def test_layer_sqnr_onnxruntime_equals_executor(monkeypatch):
    """Per-layer SQNR of the digits CNN's x86 INT8 IR: onnxruntime (DQ → float op) vs executor."""
    from conftest import calibrated_digits
    from qhelpers import quantize_with as _quantize

    from autoglm_compress.calibration import ort_stats
    from autoglm_compress.quantization import sensitivity
    from autoglm_compress.targets import get_target

    model, stats, feeds, _, _ = calibrated_digits(64, 8)
    q = _quantize(model, get_target("x86"), stats, [], False)[0]
    a = sensitivity.layer_sqnr(model, q, feeds)

    def refuse(*args, **kw):
        raise ort_stats.OrtStatsUnavailable("test")

    monkeypatch.setattr(ort_stats, "TensorRunner", refuse)
    b = sensitivity.layer_sqnr(model, q, feeds)
    assert a.keys() == b.keys() and len(a) >= 3
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=0.05), k
        assert 10 < a[k] < 80


def _mask_model() -> ir.Model:
    """scores x [1, 4] + Where(m, 0, -inf) → Softmax: the mask tensor holds -inf."""
    ninf = helper.make_tensor("ninf", TensorProto.FLOAT, [], [-np.inf])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    g = helper.make_graph(
        [
            helper.make_node("Where", ["m", "zero", "ninf"], ["mask"]),
            helper.make_node("Add", ["x", "mask"], ["s"]),
            helper.make_node("Softmax", ["s"], ["y"], axis=-1),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("m", TensorProto.BOOL, [1, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [ninf, zero],
    )
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("backend", ["onnxruntime", "executor"])
@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_infinite_mask_is_left_in_float(backend, method):
    """±inf without NaN: no range for that tensor (the quantizer keeps it float); the rest
    calibrates; the -inf also reaches Add's output, which is left out too."""
    rng = np.random.default_rng(0)
    feeds = [
        {"x": rng.normal(size=(1, 4)).astype(np.float32), "m": np.array([[1, 1, 1, i % 2]], bool)}
        for i in range(4)
    ]
    st = collect_stats(_mask_model(), feeds, method, backend=backend)
    assert st.backend == backend and st.infinite == ["mask", "s"]
    r = st.ranges()
    assert set(r) == {"x", "y"}
    assert r["y"][0] >= 0.0 and r["y"][1] <= 1.0 and r["x"][1] > 0.5

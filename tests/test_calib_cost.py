"""Calibration cost on a small high-resolution model (issue 31): histogram tensors are subsampled
inside the onnxruntime graph (:mod:`autoglm_compress.calibration.subsample`), so memory stays near
one inference's and the ranges stay those of the full data (within the documented bound)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from autoglm_compress import load
from autoglm_compress.calibration import subsample
from autoglm_compress.quantization.collect import collect_stats


def _run(nodes, inputs, outputs, feed):
    g = helper.make_graph(nodes, "g", inputs, [onnx.ValueInfoProto(name=o) for o in outputs])
    subsample.graph_constants(g)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


@pytest.mark.parametrize("shape", [(1, 3, 300, 500), (2, 7, 97, 101), (1, 1000)])
def test_drawing_in_the_graph_equals_numpy(shape):
    """The dynamic-size nodes and the fed-positions Gather draw exactly what :func:`draw` draws;
    a tensor of at most VALUES values is kept whole, a bigger one gives ``ceil(n / step)``
    values, one from each block of ``step``."""
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    n = x.size
    u = subsample.Offsets(7).next()
    want = subsample.draw(x, u)
    step = max(-(-n // subsample.VALUES), 1)
    assert want.size == -(-n // step) <= subsample.VALUES
    assert (want.size == n) == (n <= subsample.VALUES)
    pos = np.flatnonzero(np.isin(x.reshape(-1), want))
    assert np.array_equal(np.unique(pos // step), np.arange(want.size))  # one draw a block

    xin = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    uin = helper.make_tensor_value_info("u", TensorProto.FLOAT, [subsample.VALUES])
    g = helper.make_graph([], "scratch", [], [])
    nodes, drawn, size = subsample.add_nodes(g, "x", "u", "p")
    got, got_size = _run(nodes, [xin, uin], [drawn, size], {"x": x, "u": u})
    assert int(got_size) == n
    np.testing.assert_array_equal(got, want)
    if n > subsample.VALUES:
        idx = subsample.indices(n, u)
        nodes, drawn = subsample.add_gather(g, "x", "idx", "q")
        iin = helper.make_tensor_value_info("idx", TensorProto.INT64, [idx.size])
        (got,) = _run(nodes, [xin, iin], [drawn], {"x": x, "idx": idx})
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def enhancer(tmp_path_factory):
    """The Zero-DCE-like enhancer at 128² (32 × 128² = 512 Ki values a map, 8x VALUES) and
    darkened photo crops."""
    import models

    path = tmp_path_factory.mktemp("zdce") / "zdce128.onnx"
    models.save_onnx(models.zero_dce(128), path)
    crops = models.dark_crops(128, 8, seed=3)
    return load(path), [{"input": c[None]} for c in crops]


def test_subsampled_histograms_are_within_the_bound_of_the_full_data(enhancer):
    """onnxruntime (drawn values) against the executor (every value), one sample a chunk so both
    histograms have the same bins (to float rounding): every bin edge's CDF (exact zeros included) within
    :func:`cdf_error_bound` plus the one-draw-a-block bias, and the auto ranges within 2 % of the
    range."""
    model, feeds = enhancer
    kw = {"bins": 512, "chunk_bytes": 1}
    ort_stats = collect_stats(model, feeds, "auto", backend="onnxruntime", **kw)
    full = collect_stats(model, feeds, "auto", backend="executor", **kw)
    assert ort_stats.backend == "onnxruntime"
    hist = {k: o for k, o in ort_stats.observers.items() if hasattr(o, "hist")}
    assert len(hist) >= 40
    worst, drawn = 0.0, 0
    for name, obs in hist.items():
        h, g = full.observers[name].hist, obs.hist
        assert h.rebins == g.rebins and (g.lo, g.hi) == pytest.approx((h.lo, h.hi), rel=1e-5)
        if h.total / len(feeds) <= subsample.VALUES:  # small: kept whole
            assert g.total == pytest.approx(h.total, rel=1e-9), name
            continue
        drawn += 1
        assert g.total < h.total / 4  # really subsampled
        pts = torch.from_numpy(np.linspace(h.lo, h.hi, h.bins + 1))

        def cdf(x):
            return (x.cdf(pts) + x.zeros * (pts >= 0)) / x.total

        gap = float((cdf(g) - cdf(h)).abs().max())
        bound = subsample.cdf_error_bound(int(g.total), bins=512) + 3 / (g.total / len(feeds))
        assert gap <= bound, (name, gap, bound)
        worst = max(worst, gap / bound)
    assert worst > 0.02  # the comparison sees the sampling (the bound is not vacuous)
    for sym in (False, True):
        a, b = full.ranges(symmetric=sym), ort_stats.ranges(symmetric=sym)
        for k, (lo, hi) in a.items():
            np.testing.assert_allclose(b[k], (lo, hi), rtol=0, atol=0.02 * (hi - lo), err_msg=k)
    assert drawn >= 12  # the 32-channel maps and the 24-channel curve map


def test_unknown_sizes_draw_in_the_graph_the_same_values(enhancer):
    """With a symbolic batch dim the sizes are unknown until run: the draws are computed in the
    graph (``Size``, integer arithmetic) instead of fed, and give the same histograms."""
    from autoglm_compress.ir_utils import from_proto, to_proto

    model, feeds = enhancer
    proto = to_proto(model)
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    del proto.graph.value_info[:]
    for o in proto.graph.output:
        o.type.tensor_type.ClearField("shape")
    dynamic = from_proto(proto)
    assert dynamic.graph.inputs[0].shape[0] == "N"
    a = collect_stats(model, feeds[:3], "auto", backend="onnxruntime", bins=256)
    b = collect_stats(dynamic, feeds[:3], "auto", backend="onnxruntime", bins=256)
    assert b.backend == "onnxruntime" and a.observers.keys() == b.observers.keys()
    for k, obs in a.observers.items():
        if hasattr(obs, "hist"):
            assert obs.hist.total == b.observers[k].hist.total, k
            np.testing.assert_array_equal(obs.hist.counts, b.observers[k].hist.counts, err_msg=k)


_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    from autoglm_compress import load
    from autoglm_compress.calibration import subsample
    from autoglm_compress.quantization.collect import collect_stats

    def rss(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024

    path, old = sys.argv[1], sys.argv[2] == "old"
    if old:  # the tensors leave the session whole (the behaviour before in-graph drawing)
        subsample.MIN_OPSET = 10**6
    model = load(path)
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.random((1, 3, 192, 192), dtype=np.float32) * 0.3} for _ in range(6)]
    import onnxruntime  # noqa: F401 - loaded before the baseline
    base = rss("VmRSS:")
    st = collect_stats(model, feeds, "auto")
    print(json.dumps({"extra_mb": rss("VmHWM:") - base, "backend": st.backend}))
""")


def test_calibration_memory_stays_near_one_inference(tmp_path):
    """Peak RSS added by an ``auto`` calibration of the enhancer at 192² (48 histogram tensors of
    4.5 MB a sample) in a fresh process: at most 215 MB (one inference of the statistics graph:
    ~180 MB here, as onnxruntime's own MinMax calibration graph); streaming the tensors whole out
    of the session, as before, needs ~250 MB."""
    import models

    path = tmp_path / "zdce192.onnx"
    models.save_onnx(models.zero_dce(192), path)

    def extra(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", _CHILD, str(path), mode], capture_output=True,
                             text=True, timeout=300, check=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        assert res["backend"] == "onnxruntime"
        return res["extra_mb"]

    new, old = extra("new"), extra("old")
    assert new <= 215, new
    assert old > 215, old

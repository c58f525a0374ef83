"""Streaming observers and range → qparams maths on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoglm_compress.calibration.observers import (
    EntropyObserver,
    HistogramObserver,
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
    make_observer,
)
from autoglm_compress.calibration.qparams import MIN_SCALE, compute_qparams, quant_range
from autoglm_compress.errors import CalibrationError, ConfigError

METHODS = ["minmax", "percentile", "entropy", "mse"]


def _heavy_tailed(n: int = 100_000, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).laplace(0.0, 1.0, n).astype(np.float32)
    x[:4] = [40.0, -35.0, 50.0, -45.0]  # a few outliers
    return x


def _fake_quant_mse(x: np.ndarray, lo: float, hi: float, dtype: str, symmetric: bool) -> float:
    scale, zp = compute_qparams(lo, hi, dtype, symmetric)
    qmin, qmax = quant_range(dtype)
    q = np.clip(np.round(x / scale) + zp, qmin, qmax)
    return float(np.mean(((q - zp) * scale - x) ** 2))


def _observe_chunks(obs, x: np.ndarray, chunks: int = 10):
    for part in np.array_split(x, chunks):
        obs.observe(torch.from_numpy(part))
    return obs


# --- MinMax ------------------------------------------------------------------------------------


def test_minmax_exact_and_streaming_equals_one_shot():
    x = np.random.default_rng(1).normal(size=(64, 33)).astype(np.float32)
    stream = _observe_chunks(MinMaxObserver(), x, 7)
    one = MinMaxObserver()
    one.observe(torch.from_numpy(x))
    assert stream.range()[0].dim() == 0
    assert float(stream.range()[0]) == x.min() and float(stream.range()[1]) == x.max()
    assert [float(v) for v in stream.range()] == [float(v) for v in one.range()]


def test_minmax_per_channel_shape_and_values():
    x = torch.randn(8, 4, 5, 5)
    obs = MinMaxObserver(axis=1)
    obs.observe(x[:3])
    obs.observe(x[3:])
    lo, hi = obs.range()
    assert lo.shape == hi.shape == (4,)
    assert torch.equal(lo, x.amin(dim=(0, 2, 3))) and torch.equal(hi, x.amax(dim=(0, 2, 3)))
    scale, zp = obs.qparams("int8", symmetric=True)
    assert scale.shape == zp.shape == (4,) and scale.dtype == np.float32 and (zp == 0).all()
    with pytest.raises(CalibrationError, match="channels"):
        obs.observe(torch.randn(2, 5, 5, 5))


# --- histogram-based ---------------------------------------------------------------------------


def test_percentile_matches_numpy_within_a_bin():
    x = np.random.default_rng(2).normal(size=200_000).astype(np.float32)
    obs = _observe_chunks(PercentileObserver(percentile=99.9), x, 20)
    lo, hi = obs.range(symmetric=True)
    want = np.percentile(np.abs(x), 99.9)
    assert abs(float(hi) - want) <= obs.hist.width and float(lo) == -float(hi)
    lo, hi = obs.range(symmetric=False)
    bin_w = obs.hist.width
    assert abs(float(hi) - np.percentile(x, 99.9)) <= bin_w
    assert abs(float(lo) - np.percentile(x, 0.1)) <= bin_w


@pytest.mark.parametrize("cls", [EntropyObserver, MSEObserver])
@pytest.mark.parametrize("dtype,symmetric", [("int8", True), ("uint8", False)])
def test_entropy_and_mse_clip_outliers_and_beat_minmax_on_the_bulk(cls, dtype, symmetric):
    x = _heavy_tailed()
    obs = _observe_chunks(cls(), x, 10)
    lo, hi = (float(v) for v in obs.range(symmetric=symmetric))
    assert hi < 0.9 * x.max() and lo > 0.9 * x.min()
    bulk = x[4:]
    clipped = _fake_quant_mse(bulk, lo, hi, dtype, symmetric)
    minmax = _fake_quant_mse(bulk, float(x.min()), float(x.max()), dtype, symmetric)
    assert clipped < minmax


@pytest.mark.parametrize("cls", [PercentileObserver, EntropyObserver, MSEObserver])
def test_non_negative_tensor_keeps_lower_bound_at_zero(cls):
    x = np.maximum(_heavy_tailed(), 0.0)  # post-ReLU: half exact zeros
    obs = _observe_chunks(cls(), x, 4)
    for symmetric in (True, False):
        lo, hi = (float(v) for v in obs.range(symmetric=symmetric))
        assert lo == 0.0 and 1.0 < hi <= x.max()
    assert obs.hist.zeros == float((x == 0).sum())


def test_histogram_rebinning_keeps_total_count():
    obs = HistogramObserver(bins=256)
    n = 0
    for k in range(1, 30):
        t = torch.randn(500) * k + (k if k % 2 else -k)
        obs.observe(t)
        n += t.numel()
    assert obs.hist.rebins > 0
    assert obs.hist.total == pytest.approx(n, rel=1e-9)
    assert float(obs.hist.counts.min()) >= 0.0
    assert obs.hist.lo <= obs.hist.min_val and obs.hist.hi >= obs.hist.max_val


@pytest.mark.parametrize("method", METHODS)
def test_memory_is_flat_over_2000_batches(method):
    obs = make_observer(method, name="t", **({"bins": 512} if method != "minmax" else {}))
    g = torch.Generator().manual_seed(0)
    sizes = []
    for i in range(2000):
        obs.observe(torch.randn(64, generator=g) * (1 + i / 100))
        if i in (9, 1999):
            sizes.append(obs.state_nbytes())
    assert sizes[0] == sizes[1] > 0
    lo, hi = obs.range()
    assert float(lo) < 0 < float(hi)


# --- guards ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [0.0, 3.0])
def test_zero_width_range_gives_finite_positive_scale(method, value):
    obs = make_observer(method, name="const")
    obs.observe(torch.full((4, 8), value))
    for dtype, symmetric in (("int8", True), ("uint8", False), ("int8", False)):
        scale, zp = obs.qparams(dtype, symmetric)
        assert np.isfinite(scale).all() and (scale >= MIN_SCALE).all()
        qmin, qmax = quant_range(dtype)
        assert qmin <= int(zp) <= qmax
        q = np.clip(np.round(value / scale) + zp, qmin, qmax)
        assert abs(float((q - zp) * scale) - value) <= max(float(scale), 1e-6)
    if value == 0.0:
        assert float(obs.qparams("int8", True)[0]) == pytest.approx(MIN_SCALE)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_raise_naming_the_tensor(method, bad):
    obs = make_observer(method, name="conv1_out")
    x = torch.randn(10)
    x[3] = bad
    with pytest.raises(CalibrationError, match="conv1_out"):
        obs.observe(x)


def test_unobserved_and_unknown_method():
    with pytest.raises(CalibrationError, match="never observed"):
        make_observer("entropy", name="x").range()
    with pytest.raises(ConfigError, match="minmax, percentile, entropy, mse"):
        make_observer("kl")
    with pytest.raises(ConfigError):
        make_observer("minmax", bins=10)


# --- qparams ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_is_exactly_representable(dtype, symmetric):
    rng = np.random.default_rng(3)
    lo = -rng.uniform(0, 5, 50)
    hi = rng.uniform(0, 5, 50)
    lo[:5], hi[5:10] = 0.5, -0.5  # one-signed ranges are widened to include 0
    lo[5:10] = -3.0
    scale, zp = compute_qparams(np.minimum(lo, hi), np.maximum(lo, hi), dtype, symmetric)
    qmin, qmax = quant_range(dtype)
    assert ((zp >= qmin) & (zp <= qmax)).all() and zp.dtype.kind == "i"
    q0 = np.clip(np.round(0.0 / scale) + zp, qmin, qmax)
    assert ((q0 - zp) * scale == 0.0).all()
    assert (scale > 0).all() and scale.dtype == np.float32
    s0, z0 = compute_qparams(np.float32(-1.0), np.float32(2.0), dtype, symmetric)
    assert isinstance(s0, np.ndarray) and isinstance(z0, np.ndarray) and s0.shape == z0.shape == ()


def test_symmetric_and_asymmetric_conventions():
    scale, zp = compute_qparams(-2.0, 1.0, "int8", symmetric=True)
    assert int(zp) == 0 and float(scale) == pytest.approx(2.0 / 127)
    scale, zp = compute_qparams(-2.0, 1.0, "uint8", symmetric=True)
    assert int(zp) == 128 and float(scale) == pytest.approx(2.0 / 127)
    scale, zp = compute_qparams(-1.0, 3.0, "uint8", symmetric=False)
    assert float(scale) == pytest.approx(4.0 / 255) and 0 <= int(zp) <= 255
    assert int(zp) == round(1.0 / (4.0 / 255))
    scale, zp = compute_qparams(2.0, 5.0, "uint8", symmetric=False)  # range widened to [0, 5]
    assert int(zp) == 0 and float(scale) == pytest.approx(5.0 / 255)


def test_reduce_and_narrow_range():
    assert quant_range("uint8", reduce_range=True) == (0, 127)
    assert quant_range("int8", reduce_range=True) == (-64, 63)
    assert quant_range("int8", narrow_range=True) == (-127, 127)
    full, _ = compute_qparams(-1.0, 3.0, "uint8", symmetric=False)
    half, zp = compute_qparams(-1.0, 3.0, "uint8", symmetric=False, reduce_range=True)
    assert float(half) == pytest.approx(float(full) * 255 / 127) and 0 <= int(zp) <= 127
    s8, _ = compute_qparams(-1.0, 1.0, "int8", symmetric=True, reduce_range=True)
    assert float(s8) == pytest.approx(1.0 / 63)
    with pytest.raises(ConfigError):
        quant_range("int4")


def test_non_finite_range_raises():
    with pytest.raises(CalibrationError, match="act"):
        compute_qparams(float("nan"), 1.0, name="act")


def _naive_kl_threshold(hist: np.ndarray, quant_bins: int) -> int:
    """Reference loop (as in TensorRT / pytorch-quantization) returning the best bin count."""
    best, best_i = np.inf, len(hist)
    for i in range(quant_bins, len(hist) + 1):
        p = hist[:i].astype(np.float64).copy()
        p[-1] += hist[i:].sum()
        group = (np.arange(i) * quant_bins) // i
        q = np.zeros(i)
        for g in range(quant_bins):
            members = (group == g) & (hist[:i] > 0)
            if members.any():
                q[members] = hist[:i][members].sum() / members.sum()
        p, q = p / p.sum(), q / q.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = float(np.sum(np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)))
        if kl < best:
            best, best_i = kl, i
    return best_i


def test_entropy_threshold_matches_reference_loop():
    from autoglm_compress.calibration.search import entropy_threshold

    rng = np.random.default_rng(5)
    hist = np.histogram(np.abs(rng.laplace(size=20_000)), bins=300)[0].astype(np.float64)
    hist[200:290] = 0  # gaps make some candidates infinite
    got = entropy_threshold(torch.from_numpy(hist), 1.0, 64)
    assert got == float(_naive_kl_threshold(hist, 64))


def test_batched_calibration_equals_per_sample(saved):
    """vmap-batched calibration gives the per-sample ranges and channel means."""
    from autoglm_compress import load
    from autoglm_compress.inputs import random_feeds
    from autoglm_compress.quantization.collect import collect_stats

    for name in ("cnn", "transformer"):
        model = load(saved(name, "onnx"))
        feeds = random_feeds(model, 40, seed=0)
        a, b = collect_stats(model, feeds, "minmax", batch=1), collect_stats(model, feeds, "minmax")
        ra, rb = a.ranges(), b.ranges()
        assert ra.keys() == rb.keys() and b.samples == 40
        for k in ra:
            np.testing.assert_allclose(ra[k], rb[k], rtol=1e-5, atol=1e-5)
        for k in a.channel_means:
            np.testing.assert_allclose(a.channel_means[k], b.channel_means[k], rtol=1e-5, atol=1e-6)

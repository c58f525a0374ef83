"""Layer-wise weight reconstruction (GPTQ-style rounding): exact where it claims to be, smaller
layer-output error than plain rounding, and on the digits CNN a smaller model-output error in
onnxruntime; the auto choice and its record."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
import torch
from conftest import CALIB, DEMO, EVAL, calibrated_digits, run_cli
from qhelpers import int8_weights as _int8_weights
from qhelpers import quantize_for

from autoglm_compress.ir_utils import ort_run, ort_session
from autoglm_compress.quantization.reconstruct import from_k_order, gptq_round, k_order
from autoglm_compress.targets.x86 import X86Target

RNG = np.random.default_rng(0)


def _plain(w, s, qmax):
    return np.clip(np.round(w / s[..., None]), -qmax, qmax)


def _err(w, q, s, h):
    d = q * s[..., None] - w  # [G, O, K]
    return float(np.einsum("gok,gkl,gol->", d, h, d))


def test_identity_hessian_is_plain_rounding():
    w = RNG.normal(size=(1, 6, 20))
    s = np.abs(w).max(-1) / 127
    q = gptq_round(torch.tensor(w), torch.eye(20)[None] * 3.0, torch.tensor(s), 127).numpy()
    np.testing.assert_array_equal(q, _plain(w, s, 127))


@pytest.mark.parametrize("groups,qmax", [(1, 127), (1, 63), (4, 127)])
def test_output_error_below_plain_rounding(groups, qmax):
    k, o = 24, 8
    mix = RNG.normal(size=(groups, k, k))
    x = RNG.normal(size=(groups, 2000, k)) @ mix  # correlated inputs, like a conv's taps
    h = np.einsum("gpk,gpl->gkl", x, x)
    w = RNG.normal(size=(groups, o, k))
    s = np.abs(w).max(-1) / qmax
    q = gptq_round(torch.tensor(w), torch.tensor(h), torch.tensor(s), qmax).numpy()
    assert np.abs(q).max() <= qmax and np.all(q == np.round(q))
    assert _err(w, q, s, h) < 0.7 * _err(w, _plain(w, s, qmax), s, h)


@pytest.mark.parametrize("shape,attrs,op", [
    ((8, 3, 3, 3), {}, "Conv"), ((8, 2, 3, 3), {"group": 4}, "Conv"), ((6, 1, 5, 5), {"group": 6}, "Conv"),
    ((10, 7), {"transB": 1}, "Gemm"), ((7, 10), {}, "MatMul")])
def test_k_order_round_trip(shape, attrs, op):
    node = ir.node(op, [None, None], attributes=attrs)
    w = RNG.normal(size=shape).astype(np.float32)
    wk = k_order(node, w)
    assert wk.shape[0] == attrs.get("group", 1)
    np.testing.assert_array_equal(from_k_order(node, wk, w.shape), w)
    if op == "Conv":  # K is channels-last: (kh, kw, c)
        np.testing.assert_array_equal(wk[0, 0, : shape[1]], w[0, :, 0, 0])


@pytest.fixture(scope="module")
def digits():
    return calibrated_digits(128, 200)


def _rel_err(q, feeds, ref, simulate=False):
    sess = ort_session(q, simulate=simulate)
    err = sum(float(((ort_run(sess, f)[0] - r[0]) ** 2).sum()) for f, r in zip(feeds, ref))
    return err / sum(float((r[0] ** 2).sum()) for r in ref)


@pytest.mark.parametrize("cpu", ["avx2", "vnni"])
def test_digits_error_smaller_than_plain(digits, cpu):
    model, stats, feeds, _, ref = digits
    target = X86Target(cpu=cpu)
    from qhelpers import _ctx

    from autoglm_compress import lowering
    from autoglm_compress.config import Int8Config

    plain = lowering.quantizer(target, _ctx(stats, target), Int8Config(reconstruct=False))(model)
    rec = lowering.quantizer(target, _ctx(stats, target), Int8Config(reconstruct=True))(model)
    assert rec[1]["weights_reconstructed"] == 4 and "weights_reconstructed" not in plain[1]
    wp, wr = _int8_weights(plain[0]), _int8_weights(rec[0])
    assert wp.keys() == wr.keys() and any((wp[k] != wr[k]).any() for k in wp)
    # same grid (same scales), other rounding: the output error drops — in this CPU's kernels
    # when the scheme is for this CPU, else in the QDQ maths (a VNNI scheme on an AVX2 host would
    # be judged by saturation it was never meant to meet)
    sim = not target.int8_runs_here
    assert _rel_err(rec[0], feeds, ref, sim) < 0.8 * _rel_err(plain[0], feeds, ref, sim)


def test_auto_choice_is_recorded(digits):
    model, stats, *_ = digits
    q, record = quantize_for(model, X86Target(cpu="vnni"), stats, reconstruct=None)
    r = record.stats["reconstruct"]
    if "skipped" in r:  # weight rounding a small share of the int8 error: not worth the Hessians
        assert r["used"] is False and "weight rounding is" in r["skipped"]
    else:
        assert r["used"] == (r["holdout_cosine_reconstructed"] > r["holdout_cosine_plain"])
    assert record.config["reconstruct"] is r["used"]


def test_auto_skips_when_weights_are_not_the_error(digits, monkeypatch):
    """The gate: with the share threshold above any share, reconstruction is never tried (no
    Hessians); with it at 0 it is always tried."""
    from autoglm_compress import int8_strategies

    model, stats, *_ = digits
    monkeypatch.setattr(int8_strategies, "RECONSTRUCT_MIN_SHARE", 10.0)
    r = quantize_for(model, X86Target(cpu="vnni"), stats, reconstruct=None)[1].stats["reconstruct"]
    assert r["used"] is False and "skipped" in r and "holdout_cosine_reconstructed" not in r
    monkeypatch.setattr(int8_strategies, "RECONSTRUCT_MIN_SHARE", 0.0)
    r = quantize_for(model, X86Target(cpu="vnni"), stats, reconstruct=None)[1].stats["reconstruct"]
    assert "skipped" not in r and "holdout_cosine_reconstructed" in r


def test_cli_flag_and_report(tmp_path):
    out = tmp_path / "o"
    r = run_cli(DEMO, "--int8", "--target", "x86", "--calib", CALIB, "--eval", EVAL, "--samples",
                "200", "--reconstruct", "-o", out)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    q = next(p for p in rep["passes"] if p["name"].startswith("quantize"))
    assert q["stats"]["weights_reconstructed"] == 4 and q["config"]["reconstruct"] is True
    off = tmp_path / "off"
    r = run_cli(DEMO, "--int8", "--target", "x86", "--calib", CALIB, "--samples", "50",
                "--no-reconstruct", "-o", off)
    assert r.returncode == 0, r.stderr
    rep = json.loads((off / "report.json").read_text())
    q = next(p for p in rep["passes"] if p["name"].startswith("quantize"))
    assert "weights_reconstructed" not in q["stats"] and q["config"]["reconstruct"] is False

"""x86 weight width per layer: the VPMADDUBSW model against onnxruntime, the bound, the rule on the
digits CNN, and the CLI/report.

The kernel model is checked against onnxruntime itself on whatever CPU runs the tests: on an AVX2
host without VNNI onnxruntime's output must equal the *saturated* simulation (and differ from the
exact one); on a VNNI (or non-x86) host it must equal the exact one. Under
``qemu-x86_64 -cpu Haswell`` (no VNNI) both branches were seen to hold.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import CALIB, DEMO, EVAL, calibrated_digits, run_cli
from onnx import TensorProto, helper, numpy_helper
from qhelpers import finetune_with, quantize_with
from qhelpers import int8_weights as _int8_weights

from autoglm_compress.ir_utils import ort_run, ort_session
from autoglm_compress.quantization import saturation
from autoglm_compress.quantization.im2col import im2col as _im2col
from autoglm_compress.quantization.saturation import (
    host_cpu,
    pair_bounds,
    pair_layout,
    saturation_error,
    weight_widths,
)
from autoglm_compress.targets.x86 import X86Target
from autoglm_compress.targets.x86.target import x86_scheme

RNG = np.random.default_rng(0)


def _qdq_model(op: str, wq: np.ndarray, attrs: dict, s_x: float, s_w: np.ndarray, s_y: float,
               u8: bool = False):
    """u8 x → DQ → op(DQ(int8 W)) → Q(u8, zp 128) → DQ: onnxruntime fuses it into QLinear*.
    ``u8``: the same weights stored as uint8 q + 128 with zero point 128 (the U8U8 kernel)."""
    w_store = (wq.astype(np.int16) + 128).astype(np.uint8) if u8 else wq.astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(s_x, np.float32), "sx"),
        numpy_helper.from_array(np.array(0, np.uint8), "zx"),
        numpy_helper.from_array(w_store, "wq"),
        numpy_helper.from_array(s_w.astype(np.float32), "sw"),
        numpy_helper.from_array(np.full(s_w.shape, 128 if u8 else 0, w_store.dtype), "zw"),
        numpy_helper.from_array(np.array(s_y, np.float32), "sy"),
        numpy_helper.from_array(np.array(128, np.uint8), "zy"),
    ]
    w_axis = {"axis": 0 if op == "Conv" else 1} if s_w.ndim else {}
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wf"], **w_axis),
        helper.make_node(op, ["xf", "wf"], ["yf"], **attrs),
        helper.make_node("QuantizeLinear", ["yf", "sy", "zy"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"]),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _case(kind):
    if kind == "conv3x3_cin3":  # odd C: pairs cross taps
        w = RNG.integers(-127, 128, (6, 3, 3, 3))
        x = RNG.integers(160, 256, (1, 3, 9, 9))
        return "Conv", w, {"pads": [1, 1, 1, 1]}, x
    if kind == "conv1x1_cin16":
        w = RNG.integers(-127, 128, (8, 16, 1, 1))
        return "Conv", w, {}, RNG.integers(150, 256, (1, 16, 7, 7))
    if kind == "conv3x3_group2":
        w = RNG.integers(-127, 128, (8, 4, 3, 3))
        return "Conv", w, {"group": 2, "strides": [2, 2]}, RNG.integers(150, 256, (1, 8, 9, 9))
    w = RNG.integers(-127, 128, (24, 10))  # MatMul [K, N]
    return "MatMul", w, {}, RNG.integers(150, 256, (5, 24))


@pytest.mark.parametrize("kind", ["conv3x3_cin3", "conv1x1_cin16", "conv3x3_group2", "matmul"])
def test_kernel_model_matches_onnxruntime(kind):
    op, wq, attrs, x = _case(kind)
    x = x.astype(np.uint8)
    proto = _qdq_model(op, wq, attrs, 0.02, np.full(wq.shape[0] if op == "Conv" else wq.shape[1], 0.01),
                       1.0)
    node = next(n for n in ir.serde.deserialize_model(proto).graph if n.op_type == op)
    exact, sat = [], []
    for rows, wk, chan in pair_layout(node, wq.astype(np.float32)):
        wk = wk.astype(np.int64)
        if op == "Conv":
            xr = _im2col(node, wq.shape[2:], x.astype(np.int64), 0, rows, attrs.get("group", 1))
        else:
            xr = x.astype(np.int64)
        acc = xr @ wk.T
        exact.append(acc)
        sat.append(acc + saturation_error(xr, wk))
    exact, sat = (np.concatenate(a, axis=1) for a in (exact, sat))
    assert np.count_nonzero(sat != exact) > 0.2 * exact.size  # the case does saturate
    s_y = float(np.abs(exact).max()) * 0.02 * 0.01 / 100  # every accumulator fits the u8 output

    proto = _qdq_model(op, wq, attrs, 0.02, np.full(wq.shape[0] if op == "Conv" else wq.shape[1], 0.01),
                       s_y)
    got = ort_run(ort_session(proto.SerializeToString()), {"x": x})[0]
    got = got.reshape(got.shape[0], got.shape[1], -1).transpose(0, 2, 1).reshape(-1, got.shape[1]) \
        if op == "Conv" else got
    want = {k: np.clip(np.round(a * 0.02 * 0.01 / s_y) + 128, 0, 255) - 128
            for k, a in (("exact", exact), ("saturated", sat))}
    steps = got / s_y
    expected = "saturated" if host_cpu() == "avx2" else "exact"
    other = "exact" if expected == "saturated" else "saturated"
    np.testing.assert_allclose(steps, want[expected], atol=1e-3)
    assert np.abs(steps - want[other]).max() > 1
    # the same weights stored uint8 (zero point 128): exact on every CPU — the U8U8 kernel adds
    # int16 × int16 products in int32, nothing to saturate
    proto = _qdq_model(op, wq, attrs, 0.02, np.full(wq.shape[0] if op == "Conv" else wq.shape[1], 0.01),
                       s_y, u8=True)
    got = ort_run(ort_session(proto.SerializeToString()), {"x": x})[0]
    got = got.reshape(got.shape[0], got.shape[1], -1).transpose(0, 2, 1).reshape(-1, got.shape[1]) \
        if op == "Conv" else got
    np.testing.assert_allclose(got / s_y, want["exact"], atol=1e-3)


def test_pair_bounds_are_the_extremes():
    wq = RNG.integers(-127, 128, (5, 7))
    lo, hi = RNG.integers(0, 120, 7), RNG.integers(120, 256, 7)
    got_hi, got_lo = pair_bounds(wq, lo, hi)
    corners = np.array(np.meshgrid(*[[a, b] for a, b in zip(lo, hi)])).reshape(7, -1).T  # [128, 7]
    pairs = corners[:, None, :] * wq[None]  # [corner, O, K]
    pairs = np.concatenate([pairs, np.zeros(pairs.shape[:2] + (1,), pairs.dtype)], -1)
    ps = pairs.reshape(pairs.shape[0], 5, 4, 2).sum(-1)
    np.testing.assert_array_equal(got_hi, ps.max(0))
    np.testing.assert_array_equal(got_lo, ps.min(0))


def test_depthwise_is_exempt_and_unknown_layouts_are_7bit():
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4,5,5] x) => (float[1,4,5,5] y) { y = Conv <group=4, pads=[1,1,1,1]> (x, w) }""")
    proto.graph.initializer.append(numpy_helper.from_array(
        RNG.normal(size=(4, 1, 3, 3)).astype(np.float32), "w"))
    m = ir.serde.deserialize_model(proto)
    got = weight_widths(m, x86_scheme(cpu="avx2"), {"x": (-1.0, 1.0)})
    assert got == {next(iter(m.graph)).name: {"bits": 8, "rule": "exempt (depthwise)"}}


def _three_convs():
    """x → Relu → r, and three 1×1 convs reading r (8 channels, range [0, 1] → u8 0..255):
    ``sat``: equal positive weights, half its pair sums leave int16 on these inputs; ``rare``:
    one big same-sign pair on channels 0/1, which carry small values only (the tensor's range says
    they could saturate, the samples never do); ``safe``: signs alternate within every pair (no
    pair can leave int16)."""
    w_sat = 1.0 + 0.01 * RNG.standard_normal((4, 8, 1, 1))
    w_rare = 0.3 * RNG.uniform(-1, 1, (4, 8, 1, 1))
    w_rare[:, :2] = 1.0
    w_safe = RNG.uniform(0.2, 1.0, (4, 8, 1, 1)) * np.array([1, -1] * 4)[None, :, None, None]
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,8,6,6] x) => (float[1,4,6,6] a, float[1,4,6,6] b, float[1,4,6,6] c) {
            r = Relu (x)
            a = Conv (r, w_sat)
            b = Conv (r, w_rare)
            c = Conv (r, w_safe)
        }""")
    for name, w in (("w_sat", w_sat), ("w_rare", w_rare), ("w_safe", w_safe)):
        proto.graph.initializer.append(numpy_helper.from_array(w.astype(np.float32), name))
    m = ir.serde.deserialize_model(proto)
    for i, n in enumerate(m.graph):
        n.name = f"n{i}"
    by_w = {n.inputs[1].name: n.name for n in m.graph if n.op_type == "Conv"}
    feeds = []
    for _ in range(6):
        x = RNG.uniform(0, 1, (1, 8, 6, 6)).astype(np.float32)
        x[:, :2] *= 0.05
        feeds.append({"x": x})
    return m, {k[2:]: v for k, v in by_w.items()}, feeds


def _haswell_output(node, w, x, s_x, uint8_weights):
    """A 1×1 conv's float output as onnxruntime's AVX2 kernel computes it: u8 x (zero point 0),
    8-bit symmetric per-channel weights; int8 weights saturate their pair sums (VPMADDUBSW),
    uint8 ones (U8U8 kernel) do not. ``[P, O]``."""
    (_, wk, _), = pair_layout(node, w)
    s_w = np.abs(wk).max(1) / 127
    wq = np.clip(np.round(wk / s_w[:, None]), -127, 127)
    u = np.clip(np.round(x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1]) / s_x), 0, 255)
    acc = u @ wq.T
    if not uint8_weights:
        acc = acc + saturation_error(u, wq)
    return acc * s_x * s_w


def test_measured_rule_stores_uint8_only_where_saturation_matters():
    m, node_of, feeds = _three_convs()
    scheme = x86_scheme(cpu="avx2")  # the AVX2 scheme whatever this host is: numpy decides
    assert scheme.saturation_guard
    got = weight_widths(m, scheme, {"r": (0.0, 1.0)}, feeds=feeds)
    sat, rare, safe = (got[node_of[k]] for k in ("sat", "rare", "safe"))
    assert safe == {"bits": 8, "rule": "bound"}
    # both others can saturate by the bound; only the one whose samples do is uint8
    assert sat["storage"] == "uint8" and sat["pairs_that_can_saturate"] == 1.0
    assert sat["saturated_outputs"] > 0.3 and sat["saturation_vs_rounding"] > 100 * saturation.RATIO
    assert "storage" not in rare and rare["rule"].startswith("measured")
    assert 0 < rare["pairs_that_can_saturate"] < 1
    assert rare["saturated_outputs"] == 0 and rare["saturation_vs_rounding"] == 0
    assert sum(v.get("storage") == "uint8" for v in got.values()) == 1
    # without samples every layer that can saturate is uint8 (nothing measured, nothing risked)
    blind = weight_widths(m, scheme, {"r": (0.0, 1.0)})
    assert {k for k, v in blind.items() if v.get("storage")} == {node_of["sat"], node_of["rare"]}
    # the outputs in the AVX2 kernel model: with the picked storage every conv computes what the
    # unsaturated int8 maths does (within 8-bit rounding of FP32); int8 weights on ``sat`` would not
    nodes = {n.name: n for n in m.graph}
    s_x = 1.0 / 255
    for key in ("sat", "rare", "safe"):
        node = nodes[node_of[key]]
        w = node.inputs[1].const_value.numpy()
        for f in feeds:
            x = f["x"]
            ref = x.transpose(0, 2, 3, 1).reshape(-1, 8) @ w.reshape(4, 8).T
            exact = _haswell_output(node, w, x, s_x, True)
            y = _haswell_output(node, w, x, s_x, got[node.name].get("storage") == "uint8")
            np.testing.assert_allclose(y, exact, rtol=0, atol=1e-6)
            assert np.abs(y - ref).max() < 0.02 * np.abs(ref).max(), key
            if key == "sat":
                assert np.abs(_haswell_output(node, w, x, s_x, False) - ref).max() > \
                    0.1 * np.abs(ref).max()


@pytest.fixture(scope="module")
def digits():
    return calibrated_digits(128, 200)


def test_rule_on_digits_stores_uint8_only_where_it_can_saturate(digits):
    model, stats, feeds, _, ref = digits
    q, qs = quantize_with(model, X86Target(cpu="avx2"), stats)
    rule = {la["node"]: la for la in qs["layers"]}
    first = next(n.name for n in model.graph if n.op_type == "Conv")
    # the first conv reads the image (u8 values at both ends, zero point 127): its pairs do
    # leave int16 on the held-out samples, so its 8-bit weights are stored uint8; every layer
    # keeps 8 bits; uint8 exactly where the measured saturation exceeds the rounding
    assert rule[first]["weight_dtype"] == "uint8" and rule[first]["pairs_that_can_saturate"] > 0
    for n, la in rule.items():
        assert la["weight_bits"] == 8
        if la["weight_width_rule"] == "bound":
            assert "weight_dtype" not in la and "pairs_that_can_saturate" not in la
            continue
        ratio = la["saturation_vs_rounding"]
        assert (la.get("weight_dtype") == "uint8") == (ratio == "inf" or ratio > saturation.RATIO), la
    assert qs["weight_widths"]["uint8_stored"] == sum(
        la.get("weight_dtype") == "uint8" for la in rule.values()) >= 1
    assert qs["weight_widths"]["7bit"] == 0
    # the classifier has one row per sample: the rule must see enough samples to catch its
    # saturation (with 4 it saw none, kept int8, and AVX2 kernels gave 5.4x the QDQ error)
    fc = next(n.name for n in model.graph if n.op_type == "Gemm")
    assert rule[fc]["weight_dtype"] == "uint8" and rule[fc]["saturation_vs_rounding"] > 10
    # in this CPU's kernels when they are AVX2's, in the QDQ maths otherwise: the artifact's error
    # is the QDQ maths' (nothing left to saturate that matters)
    def rel(sim):
        sess = ort_session(q, simulate=sim)
        err = sum(float(((ort_run(sess, f)[0] - r[0]) ** 2).sum()) for f, r in zip(feeds, ref))
        return err / sum(float((r[0] ** 2).sum()) for r in ref)
    assert rel(host_cpu() != "avx2") < 1.1 * rel(True)
    # the same grid as the VNNI scheme: the weights' values are equal, only their storage differs
    vnni, vs = quantize_with(model, X86Target(cpu="vnni"), stats)
    assert "weight_dtype" not in vs["layers"][0] and _int8_weights(vnni).keys() == _int8_weights(
        q).keys()
    for k, v in _int8_weights(vnni).items():
        np.testing.assert_array_equal(_int8_weights(q)[k], v)
    forced = quantize_with(model, X86Target(cpu="avx2", reduce_range=True), stats)[1]
    assert {la["weight_bits"] for la in forced["layers"]} == {7}
    full = quantize_with(model, X86Target(cpu="avx2", reduce_range=False), stats)[1]
    assert {la["weight_bits"] for la in full["layers"]} == {8}
    assert not any("weight_dtype" in la for la in full["layers"])
    # the int8 values really have the picked range
    assert _int8_max(q) == {la["weight"]: 127 for la in qs["layers"]}


def _int8_max(model) -> dict[str, int]:
    return {k: int(np.abs(v).max()) for k, v in _int8_weights(model).items()}


def test_qat_trains_and_exports_each_layers_width(digits):
    import torch

    from autoglm_compress.quantization import qat as qn

    model, stats, *_ = digits
    target = X86Target(cpu="avx2")
    ptq, qs = quantize_with(model, target, stats)
    want = {la["weight"]: 63 if la["weight_bits"] == 7 else 127 for la in qs["layers"]}
    fake, _ = quantize_with(model, target, stats, fake_weights=True)
    params = {k: torch.from_numpy(v.const_value.numpy().copy())
              for k, v in fake.graph.initializers.items() if v.const_value is not None}
    assert qn.weight_qmax(params, qn.weight_quantizers(fake.graph)) == want
    tuned, _, rec = finetune_with(model, ptq, target, stats, steps=20)
    assert rec.stats["kept"] in ("qat", "ptq") and _int8_max(tuned) == want


def test_cli_reports_cpu_and_widths(tmp_path):
    out = tmp_path / "o"
    r = run_cli(DEMO, "--int8", "--target", "x86", "--calib", CALIB, "--eval", EVAL, "--samples",
                "200", "--cpu", "avx2", "-o", out)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    text = json.dumps(rep)
    assert '"cpu": "avx2 (--cpu)"' in text and '"scheme": "x86-u8s8-sat"' in text
    ww = next(p["stats"]["weight_widths"] for p in rep["passes"] if "weight_widths" in p["stats"])
    assert ww["uint8_stored"] >= 1 and ww["7bit"] == 0 and '"weight_dtype": "uint8"' in text

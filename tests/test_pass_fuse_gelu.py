"""fuse_gelu: every exporter spelling of the exact GELU becomes one com.microsoft.Gelu node, the
graph computes the same in onnxruntime, and a pattern whose inner values are read elsewhere is
left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from autoglm_compress.ir_utils import ort_run, ort_session
from autoglm_compress.pipeline import Pipeline, build_passes

_SQRT2 = float(np.sqrt(2.0))


def _model(nodes, extra_out=()):
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (
        ("sqrt2", _SQRT2), ("inv_sqrt2", 1 / _SQRT2), ("one", 1.0), ("half", 0.5))]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 16]) for n in ("y", *extra_out)]
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc")] + nodes, "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])], outs,
        inits + [helper.make_tensor("w", TensorProto.FLOAT, [8, 16],
                                    np.random.default_rng(0).standard_normal(128).tolist())])
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _n(op, ins, out, name=None):
    return helper.make_node(op, ins, [out], name=name or out)


SPELLINGS = {
    # torch: x · (1 + erf(x / √2)) · 0.5
    "torch": [_n("Div", ["h", "sqrt2"], "d"), _n("Erf", ["d"], "e"), _n("Add", ["e", "one"], "a"),
              _n("Mul", ["h", "a"], "m"), _n("Mul", ["m", "half"], "y")],
    # x · ((1 + erf(x · 1/√2)) · 0.5)
    "half_inside": [_n("Mul", ["h", "inv_sqrt2"], "d"), _n("Erf", ["d"], "e"),
                    _n("Add", ["one", "e"], "a"), _n("Mul", ["a", "half"], "m"),
                    _n("Mul", ["h", "m"], "y")],
    # (0.5 · x) · (1 + erf(x / √2))
    "half_first": [_n("Mul", ["h", "half"], "hx"), _n("Div", ["h", "sqrt2"], "d"),
                   _n("Erf", ["d"], "e"), _n("Add", ["e", "one"], "a"), _n("Mul", ["hx", "a"], "y")],
    # paddle2onnx: x · (1 + erf(x / √2)), the 0.5 folded into the next layer
    "paddle": [_n("Div", ["h", "sqrt2"], "d"), _n("Erf", ["d"], "e"), _n("Add", ["e", "one"], "a"),
               _n("Mul", ["h", "a"], "y")],
}


def _run(model, x):
    return ort_run(ort_session(model), {"x": x})


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_each_spelling_fuses_to_one_gelu(spelling):
    m = _model(SPELLINGS[spelling])
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    before = _run(m, x)
    recs = Pipeline(build_passes(["fuse_gelu"]), progress=False).run(m)
    ops = [n.op_type for n in m.graph]
    assert recs[0].stats == {"gelu_fused": 1} and recs[0].modified
    assert ops == (["MatMul", "Gelu", "Mul"] if spelling == "paddle" else ["MatMul", "Gelu"])
    assert next(n for n in m.graph if n.op_type == "Gelu").domain == "com.microsoft"
    assert m.graph.outputs[0].name == "y"  # calibration statistics are keyed by it
    onnx.checker.check_model(ir.to_proto(m))
    np.testing.assert_allclose(_run(m, x)[0], before[0], rtol=1e-5, atol=1e-6)


def test_pattern_with_an_inner_reader_is_left_alone():
    nodes = SPELLINGS["torch"] + [_n("Neg", ["e"], "z")]  # erf's value is read elsewhere
    m = _model(nodes, extra_out=("z",))
    recs = Pipeline(build_passes(["fuse_gelu"]), progress=False).run(m)
    assert recs[0].stats == {"gelu_fused": 0} and not recs[0].modified
    assert "Erf" in [n.op_type for n in m.graph]


def test_wrong_constant_is_not_gelu():
    nodes = list(SPELLINGS["torch"])
    nodes[0] = _n("Div", ["h", "one"], "d")  # erf(x / 1): not a GELU
    m = _model(nodes)
    recs = Pipeline(build_passes(["fuse_gelu"]), progress=False).run(m)
    assert recs[0].stats == {"gelu_fused": 0}


def test_x86_int8_runs_gelu_as_one_float_kernel(saved, tmp_path, monkeypatch):
    """The x86 target fuses the exported Erf GELU before quantization: onnxruntime runs one Gelu
    between a DequantizeLinear and a QuantizeLinear (no float Erf chain, no int8 Mul of its own),
    and the artifact is closer to FP32 than the unfused quantization, whose Erf-chain Add and Mul
    had Q/DQ pairs of their own."""
    from autoglm_compress import compress
    from autoglm_compress.targets.x86.target import X86Target

    src = saved("transformer", "onnx")

    def run(out):
        return compress(src, int8=True, targets="x86", calib_random=True, calib_samples=32,
                        samples=8, latency_repeats=1, out_dir=tmp_path / out).artifact("x86")

    fused = run("fused")
    assert any("GELU patterns fused" in n for n in fused.notes)
    ops = [(n.domain, n.op_type) for n in onnx.load(str(fused.path)).graph.node]
    assert ("com.microsoft", "Gelu") in ops and ("", "Erf") not in ops
    monkeypatch.setattr(X86Target, "prepare_passes", lambda self, precision: ())
    plain = run("plain")
    assert ("", "Erf") in [(n.domain, n.op_type) for n in onnx.load(str(plain.path)).graph.node]
    # both hold in this CPU's int8 kernels; the fewer quantization points are judged on the QDQ
    # maths itself (simulated: on AVX2 without VNNI the kernels' int16 saturation noise of the
    # MatMuls is as large as the difference, and would decide it by the CPU)
    assert min(fused.fidelity["cosine_pooled"], plain.fidelity["cosine_pooled"]) > 0.999
    rng = np.random.default_rng(1)
    feeds = [{"input_ids": rng.integers(0, 50, (1, 16)),
              "attention_mask": np.ones((1, 16), np.int64)} for _ in range(16)]
    ref_sess = ort_session(str(src))
    ref = [ort_run(ref_sess, f)[0] for f in feeds]

    def err(path):
        sess = ort_session(str(path), simulate=True)
        return sum(float(((ort_run(sess, f)[0] - r) ** 2).sum()) for f, r in zip(feeds, ref))

    assert err(fused.path) < err(plain.path)


def test_paddle_gelu_gets_the_pattern_range_halved():
    """Run after calibration (a target's prepare pass): the paddle spelling's new Gelu output gets
    the observed range of the pattern's output divided by 2 (y = 2·GELU), so the quantizer puts a
    Q after the Gelu; the torch spelling keeps y's name and needs none."""
    import torch

    from autoglm_compress.calibration.observers import MinMaxObserver
    from autoglm_compress.passes.context import PassContext
    from autoglm_compress.quantization.collect import CalibrationStats

    for spelling, derived in (("paddle", {"y_gelu": (-0.15, 2.0)}), ("torch", {})):
        obs = MinMaxObserver(name="y")
        obs.observe(torch.tensor([-0.3, 1.0, 4.0]))
        stats = CalibrationStats("minmax", 1, {"y": obs}, {}, {}, 0.0, 0.0)
        recs = Pipeline(build_passes(["fuse_gelu"]), progress=False).run(
            _model(SPELLINGS[spelling]), PassContext(stats=stats))
        got = {k: v for k, v in stats.ranges().items() if k != "y"}
        assert got.keys() == derived.keys()
        for k, (lo, hi) in derived.items():
            assert got[k] == pytest.approx((lo, hi))
        assert recs[0].stats.get("gelu_ranges_derived", 0) == len(derived)

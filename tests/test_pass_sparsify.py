"""sparsify: magnitude sparsity in the conv/FC weights — the requested share of zeros per layer (or
globally), the 2:4 pattern exactly, a valid IR, and a smaller compressed size reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoglm_compress import load
from autoglm_compress.ir_utils import ort_run, ort_session
from autoglm_compress.passes.sparsify import two_of_four
from autoglm_compress.pipeline import Pipeline, build_passes

DEMO = Path(__file__).resolve().parents[1] / "examples" / "digits_cnn.pt"


def _run(cfg):
    m = load(DEMO)
    Pipeline(build_passes(["cleanup", "fold_bn"]), progress=False).run(m)
    rec = Pipeline(build_passes(["sparsify"], {"sparsify": cfg}), progress=False).run(m)[0]
    weights = [n.inputs[1].const_value.numpy() for n in m.graph if n.op_type in ("Conv", "Gemm")]
    return m, rec, weights


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_half_the_weights_zero(scope):
    m, rec, weights = _run({"sparsity": 0.5, "scope": scope})
    total = sum(w.size for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert abs(zeros / total - 0.5) < 0.01 and rec.stats["zero_share"] == pytest.approx(
        zeros / total, abs=1e-3)
    if scope == "layer":
        assert all(abs((w == 0).mean() - 0.5) < 0.02 for w in weights)
    assert rec.stats["zlib_bytes_after"] < 0.8 * rec.stats["zlib_bytes_before"]
    out = ort_run(ort_session(m), {"x": np.zeros((1, 1, 8, 8), np.float32)})[0]
    assert out.shape == (1, 10)


def test_two_of_four_along_input_channels():
    from autoglm_compress.ir_ops import in_channel_axis

    m, rec, _ = _run({"pattern": "2:4"})
    checked = 0
    for n in m.graph:
        if n.op_type not in ("Conv", "Gemm"):
            continue
        w = n.inputs[1].const_value.numpy()
        ax = in_channel_axis(n, w.ndim)
        if w.shape[ax] % 4 == 0:
            moved = np.moveaxis(w, ax, -1)
            assert ((moved.reshape(*moved.shape[:-1], -1, 4) != 0).sum(-1) <= 2).all()
            checked += 1
    assert checked == 3
    assert rec.stats["skipped_2_4"]  # the first conv has 1 input channel: no groups of 4


def test_two_of_four_keeps_the_largest():
    w = np.array([[1.0, -5.0, 0.5, 3.0, 2.0, 0.1, -0.2, 9.0]], np.float32)
    np.testing.assert_array_equal(two_of_four(w, 1), [[0, -5.0, 0, 3.0, 2.0, 0, 0, 9.0]])


def test_distillation_keeps_the_zeros(tmp_path):
    """--sparsity 0.5 then --distill-steps: the zeros stay (masked after every step) and the
    accuracy comes back."""
    import sys

    import onnx
    from onnx import numpy_helper

    from autoglm_compress import compress

    root = DEMO.parents[1]
    sys.path.insert(0, str(root / "examples"))
    from digits import load_digits_split

    train = tmp_path / "train.npz"
    np.savez(train, x=load_digits_split()[0])
    kw = dict(targets="x86", eval_data=root / "examples" / "digits_eval.npz", samples=500,
              latency_repeats=3, sparsity=0.5)
    bare = compress(DEMO, out_dir=tmp_path / "s", **kw).artifact("x86")
    res = compress(DEMO, out_dir=tmp_path / "d", distill_steps=300, distill_lr=1.5e-2,
                   train_data=train, **kw)
    art = res.artifact("x86")
    assert [p["name"] for p in res.report["passes"]][-2:] == ["sparsify", "distill"]
    ws = [numpy_helper.to_array(i) for i in onnx.load(art.path).graph.initializer]
    ws = [w for w in ws if w.ndim >= 2]
    assert sum(int((w == 0).sum()) for w in ws) / sum(w.size for w in ws) == pytest.approx(0.5,
                                                                                           abs=0.01)
    acc = lambda a: next(iter(a.fidelity["outputs"].values()))["accuracy"]  # noqa: E731
    assert acc(art) > acc(bare) + 0.2

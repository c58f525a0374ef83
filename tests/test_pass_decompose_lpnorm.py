"""decompose_lpnorm: LpNormalization → Mul/Abs, ReduceSum, Sqrt, Div; counts, IR check, outputs
unchanged in onnxruntime; and a sentence-embedding head (mean pool + L2 normalize) lowered to both
arm formats, run in LiteRT and ncnn."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import run_cli

from autoglm_compress.ir_utils import check, from_proto, ort_run, ort_session, to_proto
from autoglm_compress.passes.decompose_lpnorm import DecomposeLpNormPass

RNG = np.random.default_rng(0)


def _model(shape, axis, p):
    dims = ",".join(str(d) for d in shape)
    text = (f'<ir_version: 8, opset_import: ["" : 17]>\nagraph (float[{dims}] x) => (float[{dims}] y) '
            f"{{ y = LpNormalization <axis = {axis}, p = {p}> (x) }}")
    return from_proto(onnx.parser.parse_model(text))


@pytest.mark.parametrize("shape,axis,p", [((2, 16), -1, 2), ((1, 8, 5, 5), 1, 2), ((3, 7), 0, 1)])
def test_decomposed_equals_lpnormalization(shape, axis, p):
    model = _model(shape, axis, p)
    before = from_proto(to_proto(model))
    x = RNG.normal(0, 3, shape).astype(np.float32)
    want = ort_run(ort_session(before), {"x": x})[0]
    pas = DecomposeLpNormPass()
    pas(model)
    check(model)
    assert pas.stats == {"decomposed": 1}
    ops = [n.op_type for n in model.graph]
    assert ops == (["Mul", "ReduceSum", "Sqrt", "Div"] if p == 2 else ["Abs", "ReduceSum", "Div"])
    assert model.graph.outputs[0].name == "y"
    got = ort_run(ort_session(model), {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, ord=p, axis=axis), 1.0, rtol=1e-5)


def test_other_p_is_left_alone():
    model = _model((2, 4), -1, 2)
    next(iter(model.graph)).attributes["p"] = __import__("onnx_ir").AttrInt64("p", 3)
    pas = DecomposeLpNormPass()
    pas(model)
    assert pas.stats == {"decomposed": 0} and [n.op_type for n in model.graph] == ["LpNormalization"]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """Mean pool over tokens, then x / ‖x‖ (the loader makes that one LpNormalization)."""
    import torch

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(32, 24)

        def forward(self, x):
            y = self.proj(x).mean(1)
            return y / y.norm(dim=-1, keepdim=True)

    d = tmp_path_factory.mktemp("lpnorm")
    torch.manual_seed(0)
    torch.onnx.export(Head().eval(), (torch.randn(1, 16, 32),), str(d / "emb.onnx"), dynamo=False,
                      input_names=["x"], output_names=["embedding"])
    np.savez(d / "calib.npz", x=RNG.normal(0, 1, (32, 16, 32)).astype(np.float32))
    np.savez(d / "eval.npz", x=RNG.normal(0, 1, (16, 16, 32)).astype(np.float32))
    return d


@pytest.mark.parametrize("fmt", ["tflite", "ncnn"])
@pytest.mark.parametrize("int8", [False, True])
def test_embedding_head_lowers_to_arm(embedder, fmt, int8):
    out = embedder / f"out_{fmt}_{int8}"
    args = [str(embedder / "emb.onnx"), "--target", "arm", "--format", fmt, "-o", str(out),
            "--calib", str(embedder / "calib.npz"), "--eval", str(embedder / "eval.npz")]
    r = run_cli(*args, *(["--int8"] if int8 else []))
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    rec = next(p for p in rep["passes"] if p["name"] == f"decompose_lpnorm[arm/{fmt}]")
    assert rec["stats"]["decomposed"] == 1
    art = rep["artifacts"][0]
    fid = art["fidelity"]["outputs"]["embedding"]
    assert fid["kind"] == "embedding" and fid["nn_agreement"] == 1.0
    assert art["fidelity"]["cosine_min"] > (0.995 if int8 else 0.99999)

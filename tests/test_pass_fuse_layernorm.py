"""fuse_layernorm: the op-by-op LayerNorm (x − μ, its square's mean, + ε, √, ÷, · γ, + β) becomes
one LayerNormalization on opset ≥ 17 — same numbers in onnxruntime — and is left alone where a
part is read elsewhere or the opset has no LayerNormalization; the ncnn lowering writes its
LayerNorm layer from the same match on any opset."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from autoglm_compress.ir_utils import from_proto, ort_run, ort_session
from autoglm_compress.passes.fuse_layernorm import FuseLayerNormPass


class _ManualLN(nn.Module):
    def __init__(self, square: str = "pow", affine: bool = True, leak: bool = False):
        super().__init__()
        self.square, self.affine, self.leak = square, affine, leak
        self.g, self.b = nn.Parameter(torch.rand(16) + 0.5), nn.Parameter(torch.randn(16))

    def forward(self, x):
        d = x - x.mean(-1, keepdim=True)
        sq = d.pow(2) if self.square == "pow" else d * d
        y = d / torch.sqrt(sq.mean(-1, keepdim=True) + 1e-5)
        y = y * self.g + self.b if self.affine else y
        return y + d if self.leak else y  # leak: d read outside the pattern


def _model(tmp_path, opset=17, **kw):
    torch.manual_seed(0)
    path = tmp_path / "ln.onnx"
    torch.onnx.export(_ManualLN(**kw).eval(), (torch.randn(1, 5, 16),), str(path), dynamo=False,
                      opset_version=opset, input_names=["x"], output_names=["y"])
    return from_proto(onnx.shape_inference.infer_shapes(onnx.load(str(path))))


@pytest.mark.parametrize(("square", "affine"), [("pow", True), ("mul", True), ("pow", False)])
def test_fused_to_one_node_same_outputs(tmp_path, square, affine):
    m = _model(tmp_path, square=square, affine=affine)
    x = np.random.default_rng(1).normal(size=(1, 5, 16)).astype(np.float32) * 3 + 1
    before = ort_run(ort_session(m), {"x": x})[0]
    p = FuseLayerNormPass()
    p(m)
    assert p.stats["layernorm_fused"] == 1
    ops = Counter(n.op_type for n in m.graph if n.op_type != "Constant")  # (dead ε / 2 consts)
    assert ops == Counter({"LayerNormalization": 1})
    np.testing.assert_allclose(ort_run(ort_session(m), {"x": x})[0], before, rtol=1e-5, atol=1e-5)


def test_left_alone_when_a_part_leaks_or_the_opset_is_old(tmp_path):
    p = FuseLayerNormPass()
    p(_model(tmp_path, leak=True))
    assert p.stats["layernorm_fused"] == 0
    p = FuseLayerNormPass()
    p(_model(tmp_path, opset=13))
    assert p.stats["layernorm_fused"] == 0 and "opset" in p.stats["skipped"]


def test_ncnn_writes_layernorm_on_an_old_opset(tmp_path):
    pytest.importorskip("ncnn")
    from autoglm_compress import compress

    torch.manual_seed(0)
    path = tmp_path / "ln13.onnx"
    torch.onnx.export(_ManualLN().eval(), (torch.randn(1, 5, 16),), str(path), dynamo=False,
                      opset_version=13, input_names=["x"], output_names=["y"])
    art = compress(path, targets="arm", arm_format="ncnn", out_dir=tmp_path / "o", samples=4,
                   latency_repeats=2).artifact("arm", "ncnn")
    types = art.extra["ncnn_layers"]["types"]
    assert types.get("LayerNorm") == 1 and "Reduction" not in types and "UnaryOp" not in types
    assert art.fidelity["cosine_pooled"] >= 0.99999

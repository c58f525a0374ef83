"""quantize pass: QDQ placement per scheme, int8 weights / int32 biases, numbers in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from qhelpers import quantize_with as _quantize

from autoglm_compress import load
from autoglm_compress.errors import ModelLoadError
from autoglm_compress.inputs import random_feeds
from autoglm_compress.ir_utils import check, ort_run, ort_session, save_atomic
from autoglm_compress.metrics import fidelity
from autoglm_compress.pipeline import Pipeline, build_passes
from autoglm_compress.quantization.collect import collect_stats
from autoglm_compress.targets.cuda import CudaTarget
from autoglm_compress.targets.x86 import X86Target
from autoglm_compress.targets.x86.fusion import fusion_report


@pytest.fixture(scope="module")
def cnn(saved):
    model = load(saved("cnn", "onnx"))
    Pipeline(build_passes(["cleanup", "fold_bn"]), progress=False).run(model)
    feeds = random_feeds(model, n=16, seed=1)
    return model, collect_stats(model, feeds, "minmax"), random_feeds(model, n=8, seed=2)


def _ops(model):
    return [n.op_type for n in model.graph]


def _cos(fp32, q, feeds):
    a, b = ort_session(fp32), ort_session(q)
    names = [v.name for v in fp32.graph.outputs]
    return fidelity([ort_run(a, f) for f in feeds], [ort_run(b, f) for f in feeds], names)[
        "cosine_pooled"
    ]


def test_x86_qdq_fuses_every_conv(cnn, tmp_path):
    model, stats, feeds = cnn
    q, qs = _quantize(model, X86Target(), stats, (), False)
    check(q)
    n_w = sum(1 for op in _ops(model) if op in ("Conv", "Gemm", "MatMul"))
    assert qs["weights_quantized"] == n_w and qs["biases_int32"] == n_w
    assert qs["qdq_inserted"] >= n_w
    inits = {v.name: v.const_value.numpy() for v in q.graph.initializers.values()}
    # int8, or uint8 (zero point 128) where AVX2's VPMADDUBSW could saturate (the host's rule)
    assert sum(1 for k, a in inits.items() if a.ndim >= 2 and (
        a.dtype == np.int8 or a.dtype == np.uint8 and k.endswith("_quantized_u8"))) == n_w
    assert all(a.dtype == np.uint8 for k, a in inits.items() if k.endswith("_zp") and a.ndim == 0)
    assert _cos(model, q, feeds) > 0.99
    path = tmp_path / "q.onnx"
    save_atomic(q, path)
    fus = fusion_report(str(path))
    assert fus["float_compute_nodes"] == 0, fus
    assert fus["int8_compute_nodes"] >= n_w


def test_tensorrt_scheme_symmetric_inputs_only(cnn):
    model, stats, feeds = cnn
    q, qs = _quantize(model, CudaTarget(), stats, (), False)
    check(q)
    for n in q.graph:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.inputs) > 2:
            assert not n.inputs[2].const_value.numpy().any(), f"{n.name} has a non-zero zero point"
    for n in q.graph:
        if n.op_type == "QuantizeLinear":  # Q/DQ only where a TensorRT-quantizable op reads it
            dq = next(iter(n.outputs[0].uses()))[0]
            readers = {u[0].op_type for u in dq.outputs[0].uses()}
            assert readers <= {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"}, readers
        if n.op_type == "Conv":
            assert n.inputs[1].producer().op_type == "DequantizeLinear"
        if n.op_type == "Add":
            dq_inputs = [
                v
                for v in n.inputs
                if v.producer() is not None and v.producer().op_type == "DequantizeLinear"
            ]
            assert len(dq_inputs) <= 1, "only the residual branch of a skip Add is quantized"
    assert qs.get("biases_int32", 0) == 0
    assert _cos(model, q, feeds) > 0.99


def test_keep_fp32_by_op_type_and_name(cnn):
    model, stats, _ = cnn
    q, qs = _quantize(model, X86Target(), stats, ("Gemm",), False)
    gemm = next(n for n in q.graph if n.op_type == "Gemm")
    assert (
        gemm.inputs[1].producer() is None or gemm.inputs[1].producer().op_type != "DequantizeLinear"
    )
    first_conv = next(n for n in model.graph if n.op_type == "Conv").name
    q2, _ = _quantize(model, X86Target(), stats, (first_conv,), False)
    conv = next(n for n in q2.graph if n.name == first_conv)
    assert conv.inputs[1].const_value is not None, "kept conv keeps float weights"


def test_per_tensor_weights(cnn):
    model, stats, feeds = cnn
    q, qs = _quantize(model, X86Target(), stats, (), True)
    assert all(not layer["per_channel"] for layer in qs["layers"])
    assert _cos(model, q, feeds) > 0.98


def test_nan_weights_are_refused(cnn):
    model, stats, _ = cnn
    from autoglm_compress.ir_utils import from_proto, to_proto

    m = from_proto(to_proto(model))
    conv = next(n for n in m.graph if n.op_type == "Conv")
    w = conv.inputs[1].const_value.numpy().copy()
    w.flat[0] = np.nan
    conv.inputs[1].const_value = ir.tensor(w, name=conv.inputs[1].name)
    with pytest.raises(ModelLoadError, match="NaN"):
        _quantize(m, X86Target(), stats, (), False)


class _DetectHead(__import__("torch").nn.Module):
    """A detector's tail: boxes (a conv output × stride, 0…~100) and class scores (a Sigmoid of
    negative logits: mostly < 0.05) joined by the final Concat, which is the graph output."""

    def __init__(self):
        import torch

        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.box = torch.nn.Conv2d(16, 4, 1)
        self.cls = torch.nn.Conv2d(16, 3, 1)
        self.extra = torch.nn.Conv2d(16, 2, 1)

    def forward(self, x):
        import torch

        f = torch.relu(self.body(x))
        boxes = self.box(f).flatten(2) * 8.0
        scores = torch.sigmoid(self.cls(f).flatten(2) - 4.0)
        return torch.cat([boxes, scores, self.extra(f).flatten(2)], 1)


def test_x86_final_concat_keeps_scores_float(tmp_path):
    """The output Concat runs float on x86 (a graph output gets no Q), so Q/DQ on its inputs only
    loses resolution: the Sigmoid scores and the Mul'd boxes reach it unquantized, while a conv
    writing into it directly keeps its output Q (its int8 compute needs it)."""
    import models
    import torch

    zm = models.ZooModel("detect_head", _DetectHead().eval(), {"x": torch.randn(1, 3, 8, 8)},
                         ["out"], "detector")
    model = load(models.save_onnx(zm, tmp_path / "head.onnx"))
    feeds = random_feeds(model, n=16, seed=1)
    q, _ = _quantize(model, X86Target(), collect_stats(model, feeds, "minmax"), (), False)
    check(q)
    quantized = {n.inputs[0].name for n in q.graph if n.op_type == "QuantizeLinear"}
    by_op = {n.op_type: n.outputs[0].name for n in model.graph if n.op_type in ("Sigmoid", "Mul")}
    assert by_op["Sigmoid"] not in quantized and by_op["Mul"] not in quantized
    extra = next(n for n in model.graph if n.op_type == "Conv" and n.inputs[1].shape[0] == 2)
    assert extra.outputs[0].name in quantized
    a, b = ort_session(model), ort_session(q)
    ref = np.concatenate([ort_run(a, f)[0] for f in feeds[:4]])[:, 4:7]
    got = np.concatenate([ort_run(b, f)[0] for f in feeds[:4]])[:, 4:7]
    assert np.abs(got - ref).max() < 0.1 * ref.max()  # scores: no 1/256-of-the-box-range steps


def test_x86_residual_add_before_layernorm_stays_float(saved, tmp_path, monkeypatch):
    """An Add whose output only LayerNorm (and other such Adds) read runs float in onnxruntime
    whatever its inputs (QLinearAdd needs a Q on its output): it gets no Q/DQ, its producers keep
    int8 compute (MatMulIntegerToFloat / QGemm with float output), and the encoder gets closer to
    FP32 than with those Adds quantized."""
    from autoglm_compress.passes import quantize as qmod

    model = load(saved("transformer", "onnx"))
    feeds = random_feeds(model, n=16, seed=1)
    stats = collect_stats(model, feeds, "minmax")
    q, _ = _quantize(model, X86Target(), stats, (), False)
    check(q)
    # the residual stream (pre-norm blocks): each Add is read by a LayerNorm and the next Add
    to_ln = [n.outputs[0].name for n in model.graph if n.op_type == "Add" and any(
        u.op_type == "LayerNormalization" for u, _ in n.outputs[0].uses())]
    assert len(to_ln) >= 2
    quantized = {n.inputs[0].name for n in q.graph if n.op_type == "QuantizeLinear"}
    assert not quantized & set(to_ln)
    save_atomic(q, tmp_path / "q.onnx")
    fus = fusion_report(str(tmp_path / "q.onnx"))
    assert fus["float_compute_nodes"] == 0 and fus["int8_compute_nodes"] > 0, fus
    # the old rule: every Add quantized, every output read by anybody
    monkeypatch.setattr(qmod, "_float_islands", lambda *a: (set(), lambda v: any(v.uses())))
    q_all, _ = _quantize(model, X86Target(), stats, (), False)
    assert set(to_ln) <= {n.inputs[0].name for n in q_all.graph if n.op_type == "QuantizeLinear"}
    test = random_feeds(model, n=8, seed=2)
    assert 1 - _cos(model, q, test) < 0.8 * (1 - _cos(model, q_all, test))

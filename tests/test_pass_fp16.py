"""fp16: IR check, I/O types, block list, bytes halved, fidelity bounds in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from autoglm_compress import load
from autoglm_compress.inputs import random_feeds
from autoglm_compress.ir_utils import check, from_proto, ort_run, ort_session, to_proto
from autoglm_compress.metrics import fidelity
from autoglm_compress.passes.fp16 import ConvertFloat16Pass, Float16Config


def _run(saved, name, **cfg):
    model = load(saved(name, "onnx"))
    ref = from_proto(to_proto(model))
    p = ConvertFloat16Pass(Float16Config(**cfg))
    p(model)
    check(model)
    return ref, model, p.stats


@pytest.mark.parametrize("name", ["cnn", "transformer", "mlp", "two_input"])
def test_fp16_fidelity_and_size(saved, name):
    ref, model, stats = _run(saved, name)
    assert all(v.dtype != ir.DataType.FLOAT16 for v in (*model.graph.inputs, *model.graph.outputs))
    floats = [
        v
        for v in model.graph.initializers.values()
        if v.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16)
    ]
    assert all(v.dtype == ir.DataType.FLOAT16 for v in floats if v.const_value.size > 16)
    assert stats["bytes_after"] <= 0.55 * stats["bytes_before"]
    feeds = random_feeds(ref, 4, seed=2)
    a, b = ort_session(ref), ort_session(model)
    fid = fidelity(
        [ort_run(a, f) for f in feeds],
        [ort_run(b, f) for f in feeds],
        [v.name for v in ref.graph.outputs],
    )
    assert fid["cosine_min"] >= 0.9999
    for out in fid["outputs"].values():
        assert out["max_abs_err"] < 0.02


def test_block_list_keeps_ops_fp32(saved):
    _, model, stats = _run(saved, "transformer", op_block_list=("Softmax", "LayerNormalization"))
    for n in model.graph:
        if n.op_type in ("Softmax", "LayerNormalization"):
            assert n.outputs[0].dtype == ir.DataType.FLOAT
            assert all(v.dtype != ir.DataType.FLOAT16 for v in n.inputs if v is not None)
    assert stats["nodes_kept_fp32"] >= 4 and stats["casts_inserted"] >= 8


def test_fp16_io(saved):
    ref, model, _ = _run(saved, "cnn", keep_io_types=False)
    assert model.graph.inputs[0].dtype == ir.DataType.FLOAT16
    assert model.graph.outputs[0].dtype == ir.DataType.FLOAT16
    feed = random_feeds(ref, 1)[0]
    out = ort_run(ort_session(model), {"x": feed["x"].astype(np.float16)})[0]
    want = ort_run(ort_session(ref), feed)[0]
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), want, rtol=0.02, atol=0.02)

"""x86 INT8 quantizes embedding tables weight-only (int8 rows, one scale per row, DequantizeLinear →
Gather), as onnxruntime's quantizer does: a BERT's tables are most of its bytes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from autoglm_compress import compress


def test_embedding_table_is_int8_per_row(saved, tmp_path):
    res = compress(saved("transformer", "onnx"), targets="x86", int8=True, calib_random=True,
                   calib_samples=16, out_dir=tmp_path, samples=4, latency_repeats=3)
    art = res.artifact("x86")
    m = onnx.load(art.path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    gather = next(n for n in m.graph.node if n.op_type == "Gather")
    dq = producers[gather.input[0]]
    assert dq.op_type == "DequantizeLinear"
    table, scale = inits[dq.input[0]], inits[dq.input[1]]
    assert table.dtype == np.int8 and table.shape == (100, 32) and scale.shape == (100,)
    assert not any(a.dtype == np.float32 and a.shape == (100, 32) for a in inits.values())
    stats = next(p for p in res.report["passes"] if p["name"].startswith("quantize"))["stats"]
    assert stats["embeddings_quantized"] == 1
    assert art.fidelity["cosine_pooled"] > 0.99

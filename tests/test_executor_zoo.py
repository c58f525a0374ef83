"""The torch executor against onnxruntime on every zoo model (≤ 1e-4 relative)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from autoglm_compress import load
from autoglm_compress.errors import UnsupportedOpError
from autoglm_compress.inputs import random_feeds
from autoglm_compress.ir_utils import from_proto, ort_run, ort_session
from autoglm_compress.runtime import TorchExecutor, run_model


@pytest.mark.parametrize("fmt", ["onnx", "export"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer", "two_input"])
def test_executor_matches_onnxruntime(saved, name, fmt):
    model = load(saved(name, fmt))
    sess = ort_session(model)
    for feed in random_feeds(model, n=3, seed=5):
        want = ort_run(sess, feed)
        got = run_model(model, feed)
        for w, v in zip(want, model.graph.outputs):
            np.testing.assert_allclose(got[v.name], w, rtol=1e-4, atol=1e-5)


def test_unknown_op_named_at_construction():
    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
        g (float[2] x) => (float[2] y) { t = Relu(x)  y = custom.Frobnicate(t) }""")
    m.graph.node[1].name = "frob1"
    with pytest.raises(UnsupportedOpError, match="Frobnicate.*frob1"):
        TorchExecutor(from_proto(m))


def test_hook_sees_and_replaces_every_tensor(saved):
    model = load(saved("mlp", "onnx"))
    feed = random_feeds(model, n=1)[0]
    seen = []

    def hook(name, node, t):
        seen.append(name)
        return t * 0 if node is not None and node.op_type == "Relu" else None

    out = TorchExecutor(model).run(feed, hook=hook)
    produced = [v.name for n in model.graph for v in n.outputs] + [
        v.name for v in model.graph.inputs
    ]
    assert set(produced) <= set(seen)
    base = run_model(model, feed)
    name = model.graph.outputs[0].name
    assert not np.allclose(out[name].numpy(), base[name])


def test_gradients_reach_parameters(saved):
    import torch

    model = load(saved("cnn", "onnx"))
    ex = TorchExecutor(model)
    feed = random_feeds(model, n=1)[0]
    out = ex.run(feed, keep_grad=True)
    loss = sum(o.float().pow(2).sum() for o in out.values())
    loss.backward()
    grads = [p.grad for p in ex.parameters().values()]
    assert sum(g is not None and torch.count_nonzero(g) > 0 for g in grads) >= 8

"""Front end: every load format into a checked IR; shapes and dtypes; pickles refused without opt-in."""

from __future__ import annotations

import numpy as np
import pytest

from autoglm_compress import load
from autoglm_compress.errors import ConfigError, ModelLoadError
from autoglm_compress.frontend import detect_format
from autoglm_compress.inputs import parse_input_shape, random_feeds
from autoglm_compress.ir_utils import check, ort_run, ort_session


def _torch_out(name):
    import models

    zm = models.ZOO[name]()
    out = zm.module(*zm.example_inputs.values())
    out = out[0] if isinstance(out, (tuple, list)) else out
    return zm, out.detach().numpy()


@pytest.mark.parametrize("fmt", ["torchscript", "export", "onnx"])
@pytest.mark.parametrize("name", ["cnn", "transformer", "two_input"])
def test_load_formats_match_torch(saved, name, fmt):
    path = saved(name, fmt)
    assert detect_format(path) == fmt
    model = load(path)
    check(model)
    zm, want = _torch_out(name)
    specs = {v.name: v for v in model.graph.inputs}
    assert list(specs) == list(zm.example_inputs), (
        "input names follow the model's forward arguments"
    )
    for n, t in zm.example_inputs.items():
        assert tuple(specs[n].shape) == tuple(t.shape)
        assert specs[n].dtype.numpy() == t.numpy().dtype
    feeds = {n: t.numpy() for n, t in zm.example_inputs.items()}
    got = ort_run(ort_session(model), feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_pickle_needs_opt_in(saved):
    path = saved("mlp", "pickle")
    assert detect_format(path) == "pickle"
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load(path)
    with pytest.raises(ConfigError, match="--input-shape"):
        load(path, trust_pickle=True)
    model = load(path, [parse_input_shape("x=1x64")], trust_pickle=True)
    assert [tuple(v.shape) for v in model.graph.inputs] == [(1, 64)]


def test_state_dict_is_refused_with_advice(tmp_path):
    import torch

    p = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), p)
    with pytest.raises(ModelLoadError, match="state_dict"):
        load(p)


@pytest.mark.parametrize(
    "content", [b"", b"\x00" * 10, bytes(range(256)) * 40, b"PK\x03\x04garbage"]
)
def test_garbage_files(tmp_path, content):
    p = tmp_path / "model.onnx"
    p.write_bytes(content)
    with pytest.raises(ModelLoadError):
        load(p)


def test_truncated_torchscript(saved, tmp_path):
    data = saved("cnn", "torchscript").read_bytes()
    p = tmp_path / "cut.pt"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        load(p)


def test_symbolic_dims_and_wrong_input_shape(tmp_path):
    import onnx

    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, C] x) => (float[N, C] y) { y = Relu(x) }""")
    p = tmp_path / "dyn.onnx"
    onnx.save(m, p)
    model = load(p)  # symbolic dims load and stay symbolic
    assert [str(d) for d in model.graph.inputs[0].shape] == ["N", "C"]
    with pytest.raises(ConfigError, match="--input-shape x="):
        random_feeds(model)  # only random data needs a concrete non-batch dim
    model = load(p, [parse_input_shape("x=2x5")])
    assert [str(d) for d in model.graph.inputs[0].shape] == ["N", "C"]
    assert random_feeds(model)[0]["x"].shape == (2, 5)
    with pytest.raises(ConfigError, match="rank"):
        load(p, [parse_input_shape("x=2x5x3")])
    with pytest.raises(ConfigError, match="not among"):
        load(p, [parse_input_shape("nope=2x5")])
    with pytest.raises(ConfigError):
        parse_input_shape("x=2xfoo")

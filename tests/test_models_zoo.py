"""The test zoo itself: each model runs, saves in every format; its ONNX matches torch in ORT."""

from __future__ import annotations

import collections

import models
import numpy as np
import pytest
import torch

NAMES = [*models.ZOO, "digits_cnn"]


def _zoo(name: str) -> models.ZooModel:
    return models.digits_cnn() if name == "digits_cnn" else models.ZOO[name]()


@pytest.mark.parametrize("name", NAMES)
def test_runs_and_is_deterministic(name):
    zm = _zoo(name)
    assert zm.name == name and not zm.module.training
    assert zm.kind and zm.output_names
    a, b = zm.run(), _zoo(name).run()
    assert a.ndim == 2 and a.shape[0] == 1 and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("fmt", ["torchscript", "export", "onnx", "pickle"])
@pytest.mark.parametrize("name", NAMES)
def test_save_helpers_write_files(tmp_path, name, fmt):
    zm = _zoo(name)
    path = getattr(models, f"save_{fmt}")(zm, tmp_path / f"{name}.{fmt}")
    assert path.is_file() and path.stat().st_size > 0
    if fmt == "torchscript":
        loaded = torch.jit.load(str(path))
        inputs = [i.debugName().split(".")[0] for i in list(loaded.graph.inputs())[1:]]
        assert inputs == list(zm.example_inputs)
        with torch.no_grad():
            torch.testing.assert_close(loaded(*zm.args), zm.run())
    elif fmt == "pickle":
        loaded = torch.load(str(path), weights_only=False)
        with torch.no_grad():
            torch.testing.assert_close(loaded(*zm.args), zm.run())


@pytest.mark.parametrize("name", NAMES)
def test_onnx_matches_torch_in_onnxruntime(tmp_path, name):
    import onnx
    import onnxruntime as ort

    zm = _zoo(name)
    path = models.save_onnx(zm, tmp_path / f"{name}.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == list(zm.example_inputs)
    assert [o.name for o in proto.graph.output] == zm.output_names
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    if name in ("cnn", "digits_cnn"):
        assert ops["BatchNormalization"] >= 3, "BN must survive export so that fold_bn is tested"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {k: v.numpy() for k, v in zm.example_inputs.items()}
    got = sess.run(None, feeds)[0]
    np.testing.assert_allclose(got, zm.run().numpy(), rtol=1e-4, atol=1e-4)


def test_transformer_mask_matters():
    zm = models.transformer()
    ids, mask = zm.args
    ids2 = ids.clone()
    ids2[:, -4:] = (ids2[:, -4:] + 1) % 100  # masked positions: output must not change
    with torch.no_grad():
        torch.testing.assert_close(zm.module(ids2, mask), zm.run())
        assert not torch.allclose(zm.module(ids, torch.ones_like(mask)), zm.run())


def test_cnn_batchnorms_are_nontrivial():
    bns = [m for m in models.cnn().module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) >= 5
    for bn in bns:
        assert bn.running_mean.abs().sum() > 0 and not torch.allclose(bn.running_var, torch.ones(1))
        assert not torch.allclose(bn.weight, torch.ones(1))


def test_digits_split_shapes():
    x_train, y_train, x_calib, x_eval, y_eval = models.load_digits_split()
    assert x_train.shape == (1297, 1, 8, 8) and x_eval.shape == (500, 1, 8, 8)
    assert x_calib.shape[1:] == (1, 8, 8) and len(x_calib) >= 100
    assert x_train.dtype == x_calib.dtype == x_eval.dtype == np.float32
    assert y_train.dtype == y_eval.dtype == np.int64
    assert x_train.min() >= -1 and x_train.max() <= 1
    again = models.load_digits_split()
    np.testing.assert_array_equal(again[3], x_eval)


def test_digits_training_accuracy():
    zm = models.train_digits_cnn(num_threads=2)
    assert zm.meta["eval_accuracy"] >= 0.95, zm.meta
    assert not zm.module.training
    _, _, _, x_eval, y_eval = models.load_digits_split()
    assert models.accuracy(zm.module, x_eval, y_eval) == zm.meta["eval_accuracy"]

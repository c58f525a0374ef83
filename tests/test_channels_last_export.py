"""arm formats on a tf2onnx-style channels-last export (issue 31, item 4).

A speech-embedding net exported from TensorFlow: its input is flat ([unk, 76·32]) or NHWC, and it
starts with Reshape(-1, 1, 76, 32) → Transpose(0, 3, 1, 2) before its first Conv, then goes back to
NHWC (Transpose(0, 2, 3, 1)) to flatten for its dense layer. The batch is the input's dim 0 as it
reaches the Conv through that leading chain; ncnn (batch-less blobs) and TFLite both take the export
as it is, and a batch ≠ 1 is refused with advice that works.
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from qhelpers import ncnn_extract

pytest.importorskip("ncnn")
ort = pytest.importorskip("onnxruntime")
litert = pytest.importorskip("ai_edge_litert.interpreter")

FRAMES, MELS = 76, 32
INPUTS = {"flat": ["unk__612", FRAMES * MELS], "nhwc": ["unk__612", 1, FRAMES, MELS]}


def _export(kind: str, batch=None) -> onnx.ModelProto:
    """tf2onnx's pattern: Reshape(-1, 1, 76, 32) → Transpose(0, 3, 1, 2) → Conv → Relu → Conv →
    Relu → Transpose(0, 2, 3, 1) → Reshape(-1, 608) → MatMul → Add."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        w = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        return nh.from_array(w.astype(np.float32), name)

    dims = [batch if batch is not None else INPUTS[kind][0], *INPUTS[kind][1:]]
    inits = [nh.from_array(np.array([-1, 1, FRAMES, MELS], np.int64), "const_shape"),
             weight("w1", 16, MELS, 1, 3), weight("w2", 16, 16, 1, 3), weight("w3", 608, 8),
             nh.from_array(np.array([-1, 608], np.int64), "flat_shape"),
             nh.from_array(rng.standard_normal(8).astype(np.float32), "bias")]
    nodes = [
        oh.make_node("Reshape", ["input", "const_shape"], ["r"], name="model/reshape/Reshape"),
        oh.make_node("Transpose", ["r"], ["t"], perm=[0, 3, 1, 2], name="model/conv1/Conv2D__6"),
        oh.make_node("Conv", ["t", "w1"], ["c1"], pads=[0, 1, 0, 1], name="model/conv1/Conv2D"),
        oh.make_node("Relu", ["c1"], ["a1"], name="model/conv1/Relu"),
        oh.make_node("Conv", ["a1", "w2"], ["c2"], pads=[0, 1, 0, 1], strides=[1, 2],
                     name="model/conv2/Conv2D"),
        oh.make_node("Relu", ["c2"], ["a2"], name="model/conv2/Relu"),
        oh.make_node("Transpose", ["a2"], ["t2"], perm=[0, 2, 3, 1], name="model/conv2/Relu__12"),
        oh.make_node("Reshape", ["t2", "flat_shape"], ["f"], name="model/flatten/Reshape"),
        oh.make_node("MatMul", ["f", "w3"], ["mm"], name="model/dense/MatMul"),
        oh.make_node("Add", ["mm", "bias"], ["embedding"], name="model/dense/BiasAdd"),
    ]
    graph = oh.make_graph(
        nodes, "tf2onnx", [oh.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [oh.make_tensor_value_info("embedding", TensorProto.FLOAT, ["unk__613", 8])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)], producer_name="tf2onnx")
    onnx.checker.check_model(model, full_check=True)
    return model


def _files(tmp_path, kind: str, batch=None):
    path = tmp_path / f"speech_{kind}.onnx"
    onnx.save(_export(kind, batch), str(path))
    shape = INPUTS[kind][1:]
    data = tmp_path / "mels.npz"
    np.savez(data, input=np.random.default_rng(1).random((16, *shape), np.float32))
    return path, data


def _reference(model, x):
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(["embedding"], {"input": x})[0]


def _ncnn(param, x, int8=False):
    return ncnn_extract(param, {"input": x}, ["embedding"], int8)["embedding"].reshape(1, -1)


def _tflite(path, x):
    it = litert.Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert list(inp["shape"]) == list(x.shape)  # the export's own layout, batch 1
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(out["index"])


def _close(got, ref, int8):
    a, b = got.reshape(-1), ref.reshape(-1)
    if int8:
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cos >= 0.99, cos
    else:
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("kind", ["flat", "nhwc"])
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_channels_last_export_on_arm(tmp_path, kind, int8):
    model, data = _files(tmp_path, kind)
    out = tmp_path / "out"
    prec = ["--int8", "--calib", data] if int8 else []
    r = run_cli(model, "--target", "arm", "--format", "all", *prec, "--eval", data,
                "--samples", "8", "--latency-repeats", "2", "-o", out)
    assert r.returncode == 0, r.stderr
    p = "int8" if int8 else "fp32"
    x = np.load(data)["input"][3:4]
    ref = _reference(model, x)
    _close(_ncnn(out / f"speech_{kind}.arm.{p}.ncnn.param", x, int8), ref, int8)
    _close(_tflite(out / f"speech_{kind}.arm.{p}.tflite", x), ref, int8)


def test_batch_advice_works(tmp_path):
    """Run at batch 4 (--input-shape), ncnn refuses naming the --input-shape that makes it 1;
    the advised command then gives an artifact that matches onnxruntime."""
    model, _ = _files(tmp_path, "flat")
    out = tmp_path / "out"
    args = [model, "--target", "arm", "--format", "ncnn", "--samples", "4",
            "--latency-repeats", "2", "-o", out]
    r = run_cli(*args, "--input-shape", "input=4x2432")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "model/conv1/Conv2D" in lines[0], lines
    advised = re.search(r"give (--input-shape) (\S+);", lines[0])
    assert advised and advised.group(2) == "input=1x2432"
    assert not out.exists()
    r = run_cli(*args, *advised.groups())
    assert r.returncode == 0, r.stderr
    x = np.random.default_rng(2).random((1, FRAMES * MELS), np.float32)
    _close(_ncnn(out / "speech_flat.arm.fp32.ncnn.param", x), _reference(model, x), False)


def test_fixed_batch_advice(tmp_path):
    """A file that fixes batch 4: ncnn says to re-export (--input-shape cannot change it, so it
    is not advised); TFLite runs that batch as it is."""
    model, _ = _files(tmp_path, "nhwc", batch=4)
    out = tmp_path / "out"
    r = run_cli(model, "--target", "arm", "--format", "ncnn", "--samples", "2", "-o", out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "fixes input 'input' to batch 4: re-export" in lines[0], lines
    assert "--input-shape" not in lines[0]
    r = run_cli(model, "--target", "arm", "--format", "tflite", "--samples", "2",
                "--latency-repeats", "2", "-o", out)
    assert r.returncode == 0, r.stderr
    x = np.random.default_rng(3).random((4, 1, FRAMES, MELS), np.float32)
    _close(_tflite(out / "speech_nhwc.arm.fp32.tflite", x), _reference(model, x), False)


def test_symbolic_batch_is_taken_from_the_data_for_ncnn(tmp_path):
    """A plain NCHW export with a symbolic batch (PP-OCR's classifier kind): ncnn takes batch 1 from
    the data with no --input-shape, and the report says where the shape came from."""
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(tmp_path / "cls.onnx"), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(0, 1, (16, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "out"
    r = run_cli(str(tmp_path / "cls.onnx"), "--target", "arm", "--format", "ncnn", "--int8",
                "--calib", str(tmp_path / "calib.npz"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["input_shapes"]["x"] == {"model": ["batch", 3, 32, 32], "shape": [1, 3, 32, 32],
                                        "from": "calibration data"}
    assert rep["artifacts"][0]["fidelity"]["cosine_min"] > 0.99

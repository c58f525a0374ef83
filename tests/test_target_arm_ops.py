"""arm target (TFLite): the spatial ops beyond conv/pool — TRANSPOSE_CONV (with a crop and
output_padding), PRELU, TANH (int8 with its fixed 1/128 output), MIRROR_PAD / PADV2, ELU,
HardSigmoid, unfolded BatchNormalization, ceil-mode max pooling, reductions, and ONNX
``auto_pad`` — each lowered at FP32, FP16 and INT8 and run in LiteRT against the FP32 model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
torch = pytest.importorskip("torch")

from autoglm_compress import compress  # noqa: E402

nn = torch.nn


class _Spatial(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3)  # reads the input: nothing to fold it into
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pr = nn.PReLU(8)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.up = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.c2 = nn.Conv2d(4, 4, 3)
        self.hs = nn.Hardsigmoid()

    def forward(self, x):
        y = self.pr(self.c1(self.bn_in(x)))
        y = self.pool(y)
        y = torch.relu(self.up(y))
        y = torch.tanh(self.up2(y))
        y = nn.functional.pad(y, (1, 2, 0, 1), mode="reflect")
        y = nn.functional.elu(self.c2(y)) * self.hs(y[:, :, 1:-1, 1:-1])
        y = nn.functional.pad(y, (1, 1, 1, 1), value=0.5)
        return y.amax(dim=(2, 3)) + y.sum(dim=(2, 3))


@pytest.fixture(scope="module")
def spatial(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    m = _Spatial().eval()
    with torch.no_grad():
        m.bn_in.running_mean.uniform_(-0.5, 0.5)
        m.bn_in.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("arm_ops") / "spatial.onnx"
    torch.onnx.export(m, (torch.randn(1, 3, 15, 15),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    return path


def _ops(path) -> list[str]:
    import ai_edge_litert.schema_py_generated as s

    m = s.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    codes = [names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in m.operatorCodes]
    return [codes[o.opcodeIndex] for o in m.subgraphs[0].operators]


def _tensors(path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it.get_tensor_details()


@pytest.mark.parametrize(("precision", "min_cos"),
                         [("fp32", 0.99999), ("fp16", 0.9995), ("int8", 0.99)])
def test_spatial_ops_in_litert(spatial, tmp_path, precision, min_cos):
    res = compress(spatial, targets="arm", out_dir=tmp_path, samples=4, latency_repeats=3,
                   fp16=precision == "fp16", int8=precision == "int8", calib_random=True,
                   calib_samples=32)
    art = res.artifact("arm")
    ops = _ops(art.path)
    assert {"TRANSPOSE_CONV", "PRELU", "TANH", "MIRROR_PAD", "PADV2", "ELU", "REDUCE_MAX",
            "SUM", "STRIDED_SLICE", "MAX_POOL_2D"} <= set(ops)
    assert ops.count("TRANSPOSE_CONV") == 2
    assert art.fidelity["cosine_pooled"] >= min_cos
    assert art.extra["reference_kernels"]["cosine_pooled"] >= min_cos
    if precision != "int8":
        return
    assert art.extra["vs_qdq_simulation"]["cosine_min"] > 0.999
    details = _tensors(art.path)
    tanh = [d for d in details if "Tanh_output_0" in d["name"]]
    assert tanh and tanh[0]["dtype"] == np.int8
    assert tanh[0]["quantization"] == (pytest.approx(1 / 128), 0)  # TANH's fixed output
    deconv_w = {d["name"].split(".")[0]: d for d in details
                if d["name"].startswith(("up.weight", "up2.weight"))}
    assert set(deconv_w) == {"up", "up2"}
    for d in deconv_w.values():  # both TRANSPOSE_CONV filters int8 [O,H,W,I], per output channel
        assert d["dtype"] == np.int8
        assert d["quantization_parameters"]["scales"].size == d["shape"][0]
        assert d["quantization_parameters"]["quantized_dimension"] == 0


def _auto_pad_model(path: Path) -> Path:
    """Conv with auto_pad SAME_UPPER (stride 2, even kernel) and SAME_LOWER, as paddle2onnx and
    TF exporters write them; the pads are not in the node."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 2, 2)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((5, 4, 3, 3)).astype(np.float32), "w2")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["a"], name="upper", auto_pad="SAME_UPPER",
                          strides=[2, 2], kernel_shape=[2, 2]),
         helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="lower", auto_pad="SAME_LOWER",
                          strides=[2, 2], kernel_shape=[3, 3])],
        "autopad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 11, 11])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w1, w2])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_auto_pad_same_upper_and_lower(tmp_path):
    src = _auto_pad_model(tmp_path / "autopad.onnx")
    art = compress(src, targets="arm", out_dir=tmp_path, samples=4,
                   latency_repeats=3).artifact("arm")
    assert art.fidelity["cosine_pooled"] >= 0.99999
    y = [d for d in _tensors(art.path) if d["name"] == "y"]
    assert list(y[0]["shape"]) == [1, 5, 3, 3]

"""TorchScript the exporter refuses (dict outputs, fused attention, odd ops, int inputs) and control
flow: each loads and matches torch, or is refused in one line naming the op and the way out."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as onh

from autoglm_compress import compress, load
from autoglm_compress.errors import CompressError, ModelLoadError, UnsupportedOpError
from autoglm_compress.inputs import parse_input_shape
from autoglm_compress.ir_utils import ort_run, ort_session

SILERO = pytest.importorskip("silero_vad").__file__.replace("__init__.py", "data/")


def _one_line(err: Exception) -> str:
    msg = str(err)
    assert "\n" not in msg and "INTERNAL ASSERT" not in msg and "Traceback" not in msg
    return msg


def _ort(model, feeds):
    return ort_run(ort_session(model), {k: v.numpy() for k, v in feeds.items()})


def _bert(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=1000,
    )
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 1000, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    path = tmp_path / "bert_dict.pt"
    with torch.no_grad():
        torch.jit.trace(model, (ids, mask), strict=False).save(str(path))
    return model, path


def test_bert_dict_output_loads_named_from_keys_and_fp16_verifies(tmp_path):
    model, path = _bert(tmp_path)
    ir_model = load(path)
    assert [v.name for v in ir_model.graph.outputs] == ["last_hidden_state", "pooler_output"]
    feeds = {
        "input_ids": torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(1)),
        "attention_mask": torch.tensor([[1] * 16, [1] * 10 + [0] * 6]),
    }
    with torch.no_grad():
        want = model(**feeds)
    got = _ort(ir_model, feeds)
    np.testing.assert_allclose(got[0], want.last_hidden_state.numpy(), atol=1e-4)
    np.testing.assert_allclose(got[1], want.pooler_output.numpy(), atol=1e-4)

    result = compress(path, targets=("x86",), fp16=True, out_dir=tmp_path / "out")
    fidelity = result.report["artifacts"][0]["fidelity"]["outputs"]
    assert set(fidelity) == {"last_hidden_state", "pooler_output"}
    assert min(o["cosine_min"] for o in fidelity.values()) > 0.999


class _FusedAttention(torch.nn.Module):
    """Eval-mode fast paths: _transformer_encoder_layer_fwd (post- and pre-norm, relu and gelu)
    and _native_multi_head_attention with a key padding mask and head-averaged weights."""

    def __init__(self):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer
        self.post = layer(32, 4, 64, batch_first=True)
        self.pre = layer(32, 4, 64, batch_first=True, norm_first=True, activation="gelu")
        self.mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x, pad):
        h = self.pre(self.post(x))
        return self.mha(h, h, h, key_padding_mask=pad, need_weights=True)


def test_fused_attention_ops_are_decomposed_and_match_torch(tmp_path):
    torch.manual_seed(0)
    model = _FusedAttention().eval()
    x, pad = torch.randn(2, 8, 32), torch.zeros(2, 8, dtype=torch.bool)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x, pad))
    kinds = {n.kind() for n in traced.inlined_graph.nodes()}
    assert {"aten::_transformer_encoder_layer_fwd", "aten::_native_multi_head_attention"} <= kinds
    traced.save(str(tmp_path / "attn.pt"))
    ir_model = load(tmp_path / "attn.pt")
    feeds = {"x": torch.randn(2, 8, 32), "pad": torch.zeros(2, 8, dtype=torch.bool)}
    feeds["pad"][1, 5:] = True
    with torch.no_grad():
        want = model(**feeds)
    got = _ort(ir_model, feeds)
    np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(got[1], want[1].numpy(), atol=1e-5)
    assert got[1][1, :, 5:].max() == 0.0, "padded keys get no attention"


def _traced(tmp_path, name, module, *args):
    path = tmp_path / f"{name}.pt"
    with torch.no_grad():
        torch.jit.trace(module.eval(), args).save(str(path))
    return path


def test_pnnx_route_when_torch_exporter_fails(tmp_path, monkeypatch):
    from autoglm_compress import pnnx_route, torch_import

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 5),
    )
    path = _traced(tmp_path, "cnn", net, torch.randn(1, 3, 16, 16))
    real_legacy, used = torch_import.export_legacy, []

    def refuse_scriptmodules(module, *a, **k):
        if isinstance(module, torch.jit.ScriptModule):
            raise RuntimeError(  # noqa: TRY004 - mimics the exporter's error
                "Exporting the operator 'aten::fake_op' to ONNX is not supported"
            )
        return real_legacy(module, *a, **k)

    def spy(*a, **k):
        used.append(True)
        return real_convert(*a, **k)

    real_convert = pnnx_route.convert
    monkeypatch.setattr(torch_import, "export_legacy", refuse_scriptmodules)
    monkeypatch.setattr(pnnx_route, "convert", spy)
    ir_model = load(path)
    assert used == [True]
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        want = net(x).numpy()
    assert [v.name for v in ir_model.graph.inputs] == ["input"]  # Sequential.forward(input)
    np.testing.assert_allclose(_ort(ir_model, {"input": x})[0], want, atol=1e-4)


class _CumMax(torch.nn.Module):
    def forward(self, x):
        return torch.cummax(x, 1)[0]


def test_unconvertible_op_is_named_in_one_line(tmp_path):
    path = _traced(tmp_path, "cummax", _CumMax(), torch.randn(2, 8))
    with pytest.raises(ModelLoadError) as err:
        load(path)
    msg = _one_line(err.value)
    assert "aten::cummax" in msg and "pnnx failed" in msg and "torch.export" in msg


def test_internal_assert_text_is_not_passed_through():
    from autoglm_compress.torch_import import first_line

    e = RuntimeError('false INTERNAL ASSERT FAILED at "x.cpp":1, please report a bug\nmore')
    assert first_line(e) == "RuntimeError inside torch (an internal assertion)"


class _WithInt(torch.nn.Module):
    def forward(self, x, k: int = 3):
        return x * k


def test_int_argument_with_default_is_bound(tmp_path):
    path = tmp_path / "withint.pt"
    torch.jit.script(_WithInt()).save(str(path))
    ir_model = load(path, [parse_input_shape("x=2x4")])
    assert [v.name for v in ir_model.graph.inputs] == ["x"]
    x = torch.randn(2, 4)
    np.testing.assert_allclose(_ort(ir_model, {"x": x})[0], (x * 3).numpy(), rtol=1e-6)


def test_silero_jit_int_input_and_control_flow_end_in_one_line(tmp_path):
    path = SILERO + "silero_vad.jit"
    with pytest.raises(ModelLoadError, match="'sr' is int, not a tensor") as err:
        load(path, [parse_input_shape("x=1x512")])
    _one_line(err.value)
    vad = torch.jit.load(path)

    class Fixed16k(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vad = vad

        def forward(self, x):
            return self.vad(x, 16000)

    fixed = tmp_path / "vad16k.pt"
    torch.jit.script(Fixed16k()).save(str(fixed))
    with pytest.raises(ModelLoadError) as err:
        load(fixed, [parse_input_shape("x=1x512")])
    msg = _one_line(err.value)
    assert "exporter failed" in msg and "pnnx failed" in msg and "torch.export" in msg


def _branch(name: str, k: float) -> onnx.GraphProto:
    """Mul by a branch constant then Relu; intermediate names collide with the main graph's."""
    const = onh.from_array(np.full((1, 4), k, np.float32), f"k_{name}")
    nodes = [
        oh.make_node("Mul", ["x", f"k_{name}"], ["tb"], name="m"),
        oh.make_node("Relu", ["tb"], ["r"], name="relu"),
    ]
    out = [oh.make_tensor_value_info("r", TensorProto.FLOAT, [1, 4])]
    return oh.make_graph(nodes, name, [], out, [const])


def _if_model(path, cond_node: onnx.NodeProto, extra_inputs=()):
    nodes = [
        oh.make_node("Add", ["x", "x"], ["if0/tb"], name="m"),
        oh.make_node("Identity", ["if0/tb"], ["t"], name="if0/m"),
        cond_node,
        oh.make_node(
            "If",
            ["c"],
            ["y"],
            name="if0",
            then_branch=_branch("a", 2.0),
            else_branch=_branch("b", -3.0),
        ),
        oh.make_node("Add", ["y", "t"], ["out"], name="final"),
    ]
    inputs = [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]), *extra_inputs]
    out = [oh.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])]
    graph = oh.make_graph(nodes, "g", inputs, out)
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("simplify", [True, False])
def test_constant_if_is_inlined(tmp_path, simplify):
    const = oh.make_node("Constant", [], ["c"], value=onh.from_array(np.array(False)))
    ir_model = load(_if_model(tmp_path / "if.onnx", const), simplify=simplify)
    ops = [n.op_type for n in ir_model.graph]
    assert "If" not in ops and ops.count("Relu") == 1
    names = [n.name for n in ir_model.graph if n.name]
    assert len(names) == len(set(names)), "inlined node names stay unique"
    x = np.array([[1, -2, 3, -4]], np.float32)
    got = ort_run(ort_session(ir_model), {"x": x})[0]
    np.testing.assert_allclose(got, np.maximum(-3 * x, 0) + 2 * x)  # else branch taken


def test_data_dependent_control_flow_is_refused_at_load(tmp_path):
    flag = oh.make_tensor_value_info("flag", TensorProto.BOOL, [])
    cond = oh.make_node("Identity", ["flag"], ["c"])
    path = _if_model(tmp_path / "if_data.onnx", cond, [flag])
    with pytest.raises(UnsupportedOpError, match=r"'If' \(node 'if0'\).*input\(s\) \['flag'\]"):
        load(path)
    shapes = [parse_input_shape("input=1x512"), parse_input_shape("state=2x1x128")]
    with pytest.raises(UnsupportedOpError, match=r"'If'.*\['sr'\].*without data-dependent") as err:
        load(SILERO + "silero_vad.onnx", shapes)
    _one_line(err.value)


def test_loop_is_refused_at_load(tmp_path):
    body = oh.make_graph(
        [
            oh.make_node("Identity", ["cond_in"], ["cond_out"]),
            oh.make_node("Add", ["acc_in", "acc_in"], ["acc_out"]),
        ],
        "body",
        [
            oh.make_tensor_value_info("i", TensorProto.INT64, []),
            oh.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            oh.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 4]),
        ],
        [
            oh.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            oh.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 4]),
        ],
    )
    graph = oh.make_graph(
        [oh.make_node("Loop", ["n", "", "x"], ["y"], name="loop0", body=body)],
        "g",
        [
            oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            oh.make_tensor_value_info("n", TensorProto.INT64, []),
        ],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "loop.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    with pytest.raises(CompressError, match=r"'Loop' \(node 'loop0'\).*unrolled") as err:
        load(path)
    _one_line(err.value)

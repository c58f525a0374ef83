"""Executor ops LSTM/GRU/RNN, GatherND/ScatterND/ScatterElements/OneHot/NonZero, GroupNormalization,
InstanceNormalization and Attention: against their ONNX backend cases, against onnxruntime on
random graphs exercising the attributes, and gradients through the recurrent layers."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from autoglm_compress.ir_utils import from_proto, ort_run, ort_session
from autoglm_compress.runtime import run_model
from autoglm_compress.runtime.executor import TorchExecutor

RNG = np.random.default_rng(0)
_CASE_MODULES = [
    "lstm", "gru", "rnn", "gathernd", "scatternd", "scatterelements", "onehot", "nonzero",
    "groupnormalization", "instance_normalization", "attention",
]  # fmt: skip
_PREFIXES = (
    "test_lstm_", "test_gru_", "test_rnn_", "test_simple_rnn_", "test_gathernd_",
    "test_scatternd", "test_scatter_elements_", "test_onehot_", "test_nonzero_",
    "test_group_normalization_", "test_instancenorm_", "test_attention_",
)  # fmt: skip


def _backend_cases() -> dict:
    """The onnx wheel's node cases of these ops. `_expanded` variants (function bodies of other
    ops: the conformance test's business) and bfloat16 feeds (no numpy→torch route) are left out."""
    import onnx.backend.test.case.node as node_cases

    for m in _CASE_MODULES:
        importlib.import_module(f"{node_cases.__name__}.{m}")
    return {
        c.name: c
        for c in node_cases._NodeTestCases
        if c.name.startswith(_PREFIXES)
        and not c.name.endswith("_expanded")
        and "bf16" not in c.name
        and "bfloat16" not in c.name
    }


CASES = _backend_cases()


def test_backend_cases_found():
    assert len(CASES) >= 90, sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_backend_case(name):
    case = CASES[name]
    model = from_proto(case.model)
    ex = TorchExecutor(model, device="cpu")
    for inputs, expected in case.data_sets:
        feeds = {v.name: np.asarray(a) for v, a in zip(model.graph.inputs, inputs)}
        got = ex.run(feeds)
        for v, want in zip(model.graph.outputs, expected):
            g = got[v.name].detach().numpy()
            assert g.shape == want.shape
            np.testing.assert_allclose(g, want, rtol=case.rtol, atol=case.atol)


def _check(text: str, feeds: dict, inits=None, opset: int = 22, tol=1e-5, checker=True):
    proto = onnx.parser.parse_model(f'<ir_version: 10, opset_import: ["" : {opset}]>\n' + text)
    for name, arr in (inits or {}).items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
    if checker:  # off only for GroupNormalization-18, which the checker calls deprecated
        onnx.checker.check_model(proto, full_check=True)
    model = from_proto(proto)
    want = ort_run(ort_session(proto.SerializeToString()), feeds)
    got = run_model(model, feeds)
    for w, v in zip(want, model.graph.outputs):
        assert got[v.name].shape == w.shape, v.name
        np.testing.assert_allclose(got[v.name], w, rtol=tol, atol=tol)


def _x(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _rnn_inits(op: str, dirs: int, hidden: int, inp: int, batch: int, peep: bool = False):
    g = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    inits = {
        "W": _x(dirs, g * hidden, inp, scale=0.4),
        "R": _x(dirs, g * hidden, hidden, scale=0.4),
        "B": _x(dirs, 2 * g * hidden, scale=0.2),
        "lens": np.array([5, 2, 4][:batch], np.int32),
    }
    if peep:
        inits["P"] = _x(dirs, 3 * hidden, scale=0.3)
    return inits


def _lstm_text(attrs: str, layout: int, dirs: int, seq=5, batch=3, inp=4, hid=6) -> str:
    xs, hs = (
        ((batch, seq, inp), (batch, dirs, hid))
        if layout
        else ((seq, batch, inp), (dirs, batch, hid))
    )
    ys = (batch, seq, dirs, hid) if layout else (seq, dirs, batch, hid)
    xd, hd, yd = (",".join(map(str, s)) for s in (xs, hs, ys))
    return (
        f"g (float[{xd}] x, float[{hd}] h0, float[{hd}] c0)"
        f" => (float[{yd}] y, float[{hd}] yh, float[{hd}] yc) {{\n"
        f"  y, yh, yc = LSTM <hidden_size={hid}, layout={layout}, {attrs}>"
        " (x, W, R, B, lens, h0, c0, P) }"
    )


@pytest.mark.parametrize(
    "attrs",
    [
        'direction="bidirectional"',
        'direction="reverse", clip=0.7',
        'input_forget=1, activations=["HardSigmoid", "Tanh", "Relu"]',
        (
            'activations=["LeakyRelu", "Tanh", "ScaledTanh"], activation_alpha=[0.3, 0.8],'
            " activation_beta=[1.5]"
        ),
    ],
)
def test_lstm_vs_ort(attrs):
    dirs = 2 if "bidirectional" in attrs else 1
    _check(
        _lstm_text(attrs, 0, dirs),
        {"x": _x(5, 3, 4), "h0": _x(dirs, 3, 6, scale=0.5), "c0": _x(dirs, 3, 6, scale=0.5)},
        _rnn_inits("LSTM", dirs, 6, 4, 3, peep=True),
    )


def test_lstm_layout1_vs_ort_layout0():
    """onnxruntime refuses layout=1: compare with its layout-0 result on transposed tensors."""
    inits = _rnn_inits("LSTM", 2, 6, 4, 3, peep=True)
    feeds = {"x": _x(5, 3, 4), "h0": _x(2, 3, 6, scale=0.5), "c0": _x(2, 3, 6, scale=0.5)}
    protos = []
    for layout in (0, 1):
        head = '<ir_version: 10, opset_import: ["" : 22]>\n'
        proto = onnx.parser.parse_model(head + _lstm_text('direction="bidirectional"', layout, 2))
        for name, arr in inits.items():
            proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
        protos.append(proto)
    y, yh, yc = ort_run(ort_session(protos[0].SerializeToString()), feeds)
    t = {k: np.ascontiguousarray(v.swapaxes(0, 1)) for k, v in feeds.items()}
    got = run_model(from_proto(protos[1]), t)
    np.testing.assert_allclose(got["y"], y.transpose(2, 0, 1, 3), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["yh"], yh.swapaxes(0, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["yc"], yc.swapaxes(0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "attrs",
    ['direction="bidirectional"', "linear_before_reset=1", 'direction="reverse", clip=0.5'],
)
def test_gru_vs_ort(attrs):
    dirs = 2 if "bidirectional" in attrs else 1
    _check(
        f"g (float[5,3,4] x, float[{dirs},3,6] h0) => (float[5,{dirs},3,6] y, float[{dirs},3,6] yh)"
        f" {{ y, yh = GRU <hidden_size=6, {attrs}> (x, W, R, B, lens, h0) }}",
        {"x": _x(5, 3, 4), "h0": _x(dirs, 3, 6, scale=0.5)},
        _rnn_inits("GRU", dirs, 6, 4, 3),
    )


def test_rnn_vs_ort():
    _check(
        "g (float[5,3,4] x) => (float[5,2,3,6] y, float[2,3,6] yh) {"
        ' y, yh = RNN <hidden_size=6, direction="bidirectional", activations=["Relu", "Tanh"]>'
        " (x, W, R, B, lens) }",
        {"x": _x(5, 3, 4)},
        _rnn_inits("RNN", 2, 6, 4, 3),
    )


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_recurrent_gradients(op):
    """loss.backward through the executor reaches W, R and B with finite, non-zero gradients that
    match central finite differences (float64)."""
    inits = {k: v.astype(np.float64) for k, v in _rnn_inits(op, 2, 5, 3, 3).items() if k != "lens"}
    outs = "y, yh, yc" if op == "LSTM" else "y, yh"
    decl = ", double[2,3,5] yc" if op == "LSTM" else ""
    text = (
        f"g (double[4,3,3] x) => (double[4,2,3,5] y, double[2,3,5] yh{decl}) {{\n"
        f'  {outs} = {op} <hidden_size=5, direction="bidirectional"> (x, W, R, B) }}'
    )
    proto = onnx.parser.parse_model('<ir_version: 10, opset_import: ["" : 22]>\n' + text)
    for name, arr in inits.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
    ex = TorchExecutor(from_proto(proto), device="cpu")
    feeds = {"x": RNG.standard_normal((4, 3, 3))}

    def loss():
        out = ex.run(feeds, keep_grad=True)
        return (out["y"] ** 2).sum() + out["yh"].sum()

    loss().backward()
    params = ex.parameters()
    for name in ("W", "R", "B"):
        grad = params[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 1e-4, name
    w, eps = params["R"], 1e-6
    with torch.no_grad():
        for idx in [(0, 0, 0), (1, 7, 3), (0, 12, 4)]:
            w[idx] += eps
            up = loss().item()
            w[idx] -= 2 * eps
            down = loss().item()
            w[idx] += eps
            assert abs((up - down) / (2 * eps) - w.grad[idx].item()) < 1e-6


@pytest.mark.parametrize("out, batch_dims", [("[2,6,4,5]", 0), ("[2,6,5]", 1)])
def test_gathernd_vs_ort(out, batch_dims):
    hi = 3 if batch_dims else 2
    idx = np.stack([RNG.integers(-hi, hi, (2, 6)), RNG.integers(-3, 3, (2, 6))], -1)
    _check(
        f"g (float[2,3,4,5] d, int64[2,6,2] i) => (float{out} y) {{ y = GatherND <batch_dims={batch_dims}> (d, i) }}",
        {"d": _x(2, 3, 4, 5), "i": idx.astype(np.int64)},
    )


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatternd_vs_ort(reduction):
    idx = np.array([[[0, 1], [2, 3]], [[1, 0], [0, 1]]], np.int64)
    if reduction == "none":
        idx[1, 1] = [2, 2]  # distinct targets: duplicates are undefined without a reduction
    _check(
        "g (float[3,4,5] d, int64[2,2,2] i, float[2,2,5] u) => (float[3,4,5] y) {"
        f' y = ScatterND <reduction="{reduction}"> (d, i, u) }}',
        {"d": _x(3, 4, 5), "i": idx, "u": _x(2, 2, 5)},
    )


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_elements_vs_ort(reduction):
    idx = np.array([[1, -1, 0], [3, 2, 0]], np.int64)
    _check(
        "g (float[2,4] d, int64[2,3] i, float[2,3] u) => (float[2,4] y) {"
        f' y = ScatterElements <axis=1, reduction="{reduction}"> (d, i, u) }}',
        {"d": _x(2, 4), "i": idx, "u": _x(2, 3)},
    )


def test_onehot_and_nonzero_vs_ort():
    _check(
        "g (int64[2,3] i, int64[1] depth, float[2] v) => (float[2,5,3] y, int64[2,?] nz) {"
        " y = OneHot <axis=1> (i, depth, v)\n nz = NonZero (i) }",
        {
            "i": np.array([[0, -1, 7], [4, 0, 2]], np.int64),
            "depth": np.array([5], np.int64),
            "v": np.array([-2.0, 3.0], np.float32),
        },
    )


@pytest.mark.parametrize("opset", [18, 21])
def test_group_norm_vs_ort(opset):
    """Opset 18: scale/bias per group; opset 21: per channel."""
    c, groups = 6, 3
    n = groups if opset == 18 else c
    _check(
        f"g (float[2,{c},5,4] x) => (float[2,{c},5,4] y) {{"
        f" y = GroupNormalization <num_groups={groups}, epsilon=1e-3> (x, s, b) }}",
        {"x": _x(2, c, 5, 4, scale=3.0)},
        {"s": _x(n), "b": _x(n)},
        opset=opset,
        tol=1e-4,
        checker=opset != 18,
    )


def test_instance_norm_vs_ort():
    _check(
        "g (float[2,3,7] x) => (float[2,3,7] y) {"
        " y = InstanceNormalization <epsilon=1e-2> (x, s, b) }",
        {"x": _x(2, 3, 7, scale=2.0)},
        {"s": _x(3), "b": _x(3)},
        tol=1e-4,
    )


@pytest.mark.parametrize(
    "attrs, mask",
    [
        ("q_num_heads=4, kv_num_heads=2", None),
        ("q_num_heads=4, kv_num_heads=2, is_causal=1, softcap=2.0", None),
        ("q_num_heads=4, kv_num_heads=4, scale=0.3", "float"),
        ("q_num_heads=4, kv_num_heads=1", "bool"),
    ],
)
def test_attention_3d_vs_ort(attrs, mask):
    kv_heads = int(attrs.split("kv_num_heads=")[1].split(",")[0])
    feeds = {"q": _x(2, 5, 16), "k": _x(2, 7, 4 * kv_heads), "v": _x(2, 7, 3 * kv_heads)}
    args, decl = (
        "q, k, v",
        f"float[2,5,16] q, float[2,7,{4 * kv_heads}] k, float[2,7,{3 * kv_heads}] v",
    )
    if mask == "float":
        feeds["m"], args, decl = _x(5, 7), args + ", m", decl + ", float[5,7] m"
    if mask == "bool":
        m = RNG.random((2, 1, 5, 7)) > 0.3
        m[..., 0] = True
        feeds["m"], args, decl = m, args + ", m", decl + ", bool[2,1,5,7] m"
    _check(
        f"g ({decl}) => (float[2,5,12] y) {{ y = Attention <{attrs}> ({args}) }}",
        feeds,
        opset=23,
        tol=1e-5,
    )


def test_attention_4d_past_present_vs_ort():
    _check(
        "g (float[1,4,3,8] q, float[1,2,3,8] k, float[1,2,3,8] v, float[1,2,6,8] pk,"
        " float[1,2,6,8] pv) => (float[1,4,3,8] y, float[1,2,9,8] kk, float[1,2,9,8] vv) {"
        " y, kk, vv = Attention <is_causal=1> (q, k, v, , pk, pv) }",
        {"q": _x(1, 4, 3, 8), "k": _x(1, 2, 3, 8), "v": _x(1, 2, 3, 8), "pk": _x(1, 2, 6, 8),
         "pv": _x(1, 2, 6, 8)},
        opset=23,
    )  # fmt: skip


def test_attention_gradients_finite():
    """Fully masked rows give zeros and no NaN gradients."""
    text = "g (float[1,2,3,4] q, bool[3,5] m) => (float[1,2,3,4] y) { y = Attention (q, K, V, m) }"
    proto = onnx.parser.parse_model('<ir_version: 10, opset_import: ["" : 23]>\n' + text)
    for name in ("K", "V"):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(_x(1, 2, 5, 4), name))
    ex = TorchExecutor(from_proto(proto), device="cpu")
    mask = np.ones((3, 5), bool)
    mask[1] = False
    y = ex.run({"q": _x(1, 2, 3, 4), "m": mask}, keep_grad=True)["y"]
    y.sum().backward()
    assert torch.all(y[:, :, 1] == 0)
    for p in ex.parameters().values():
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0


SILERO = Path(__file__).parents[1] / ".venv/lib/python3.11/site-packages/silero_vad/data"


@pytest.mark.skipif(not SILERO.exists(), reason="silero-vad wheel not installed")
def test_silero_vad_lstm_model_vs_ort():
    """silero-vad's If-free sequence variant (Conv encoder + LSTM decoder) end to end."""
    proto = onnx.load(SILERO / "silero_vad_16k_sequence.onnx")
    feeds = {"input": _x(6, 576, scale=0.1), "h": _x(1, 1, 128, scale=0.1),
             "c": _x(1, 1, 128, scale=0.1)}  # fmt: skip
    want = ort_run(ort_session(proto.SerializeToString()), feeds)
    model = from_proto(proto)
    got = run_model(model, feeds)
    for w, v in zip(want, model.graph.outputs):
        np.testing.assert_allclose(got[v.name], w, rtol=1e-4, atol=1e-5)

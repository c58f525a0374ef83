"""ir_ops: the weighted-op facts checked against onnxruntime's semantics, the one quant_range, and
the quantization package's import boundary (no passes/pipeline/targets/api)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autoglm_compress.calibration.qparams import MIN_SCALE, compute_qparams, quant_range
from autoglm_compress.errors import ConfigError
from autoglm_compress.ir_ops import (
    WEIGHTED_OPS,
    activation_channel_axis,
    bias_input,
    const_array,
    groups,
    in_channel_axis,
    in_channels,
    is_weighted,
    out_channel_axis,
    out_channels,
    weight_input,
)
from autoglm_compress.ir_utils import from_proto, ort_run, ort_session
from autoglm_compress.quantization.scheme import TensorQuant

ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(0)

# op, attributes, x shape, W shape, bias length, output channel axis of y
CASES = {
    "conv_g2": ("Conv", {"group": 2}, [1, 4, 5, 5], [6, 2, 3, 3], 6, 1),
    "convT_g2": (
        "ConvTranspose",
        {"group": 2, "strides": [2, 2]},
        [1, 4, 3, 3],
        [4, 3, 2, 2],
        6,
        1,
    ),
    "gemm": ("Gemm", {}, [2, 5], [5, 3], 3, 1),
    "gemm_tb": ("Gemm", {"transB": 1}, [2, 5], [3, 5], 3, 1),
    "gemm_ta": ("Gemm", {"transA": 1, "transB": 1}, [5, 2], [3, 5], 3, 1),
    "matmul": ("MatMul", {}, [2, 4, 5], [5, 3], None, 2),
    "matmul3d": ("MatMul", {}, [2, 4, 5], [2, 5, 3], None, 2),
}
# Expected facts, written out: (out axis, in axis, out channels, in channels, activation axis)
FACTS = {
    "conv_g2": (0, 1, 6, 4, 1),
    "convT_g2": (1, 0, 6, 4, 1),
    "gemm": (1, 0, 3, 5, -1),
    "gemm_tb": (0, 1, 3, 5, -1),
    "gemm_ta": (0, 1, 3, 5, 0),
    "matmul": (1, 0, 3, 5, -1),
    "matmul3d": (2, 1, 3, 5, -1),
}


def _one_node(case: str, w: np.ndarray, b: np.ndarray | None) -> onnx.ModelProto:
    op, attrs, xs, _, _, _ = CASES[case]
    inits = [numpy_helper.from_array(w, "W")] + (
        [numpy_helper.from_array(b, "B")] if b is not None else []
    )
    node = helper.make_node(
        op, ["x", "W"] + (["B"] if b is not None else []), ["y"], name=case, **attrs
    )
    graph = helper.make_graph(
        [node],
        case,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(case: str, w, b, x) -> np.ndarray:
    return ort_run(ort_session(from_proto(_one_node(case, w, b))), {"x": x})[0]


def _arrays(case: str):
    _, _, xs, ws, nb, _ = CASES[case]
    w = RNG.standard_normal(ws).astype(np.float32)
    b = RNG.standard_normal(nb).astype(np.float32) if nb else None
    return w, b, RNG.standard_normal(xs).astype(np.float32)


@pytest.mark.parametrize("case", sorted(CASES))
def test_table_facts(case):
    w, b, _ = _arrays(case)
    node = next(iter(from_proto(_one_node(case, w, b)).graph))
    out_ax, in_ax, n_out, n_in, act_ax = FACTS[case]
    assert is_weighted(node) and weight_input(node) == 1
    assert bias_input(node) == (None if node.op_type == "MatMul" else 2)
    assert (out_channel_axis(node), in_channel_axis(node)) == (out_ax, in_ax)
    assert (out_channels(node, w.shape), in_channels(node, w.shape)) == (n_out, n_in)
    assert activation_channel_axis(node) == act_ax
    assert groups(node) == CASES[case][1].get("group", 1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_out_axis_matches_onnxruntime(case):
    """Perturbing slice k of W along out_channel_axis changes exactly the output channels that
    slice feeds: k, and for groups k + j·(C_out/g)."""
    w, b, x = _arrays(case)
    node = next(iter(from_proto(_one_node(case, w, b)).graph))
    ax, y_ax = out_channel_axis(node), CASES[case][5]
    k, g = 1, groups(node)
    share = out_channels(node, w.shape) // g if node.op_type == "ConvTranspose" else None
    w2 = w.copy()
    np.moveaxis(w2, ax, 0)[k] += 1.0
    d = np.abs(_run(case, w2, b, x) - _run(case, w, b, x))
    changed = set(np.flatnonzero(np.moveaxis(d, y_ax, 0).reshape(d.shape[y_ax], -1).max(1) > 1e-4))
    assert changed == ({k + j * share for j in range(g)} if share else {k})


@pytest.mark.parametrize("case", ["conv_g2", "gemm", "gemm_tb", "gemm_ta", "matmul"])
def test_in_axis_and_activation_axis_match_onnxruntime(case):
    """With activation channel j zeroed (along activation_channel_axis), slice j of W along
    in_channel_axis does not matter, while slice j - 1 does (grouped: j indexes each group's share)."""
    w, b, x = _arrays(case)
    node = next(iter(from_proto(_one_node(case, w, b)).graph))
    j = 1
    np.moveaxis(x, activation_channel_axis(node), 0)[j] = 0.0
    w2 = w.copy()
    np.moveaxis(w2, in_channel_axis(node), 0)[j] += 5.0
    if groups(node) > 1:  # the perturbed slice also feeds group 2's channel j + C_in/g: zero it too
        np.moveaxis(x, activation_channel_axis(node), 0)[j + w.shape[1]] = 0.0
    np.testing.assert_allclose(_run(case, w2, b, x), _run(case, w, b, x), atol=1e-5)
    w3 = w.copy()
    np.moveaxis(w3, in_channel_axis(node), 0)[j - 1] += 5.0  # a live input channel: it matters
    assert np.abs(_run(case, w3, b, x) - _run(case, w, b, x)).max() > 1e-2


def test_table_is_the_weighted_ops():
    assert set(WEIGHTED_OPS) == {"Conv", "ConvTranspose", "Gemm", "MatMul"}
    relu = next(iter(from_proto(_one_node("gemm", *_arrays("gemm")[:2])).graph))
    relu.op_type = "Relu"
    assert not is_weighted(relu)
    with pytest.raises(KeyError):
        weight_input(relu)


def test_const_array_reads_constant_nodes():
    import onnx_ir as ir

    c = ir.node("Constant", [], attributes={"value_floats": [1.5, -2.0]})
    i = ir.node("Constant", [], attributes={"value_int": 7})
    assert const_array(c.outputs[0]).tolist() == [1.5, -2.0]
    assert const_array(i.outputs[0]).dtype == np.int64 and int(const_array(i.outputs[0])) == 7
    assert const_array(None) is None


def test_quant_range_one_rule():
    x86_w = TensorQuant("int8", per_channel=True, narrow_range=True, reduce_range=True)
    assert quant_range(x86_w) == (-63, 63)
    assert quant_range(TensorQuant("int8", narrow_range=True)) == (-127, 127)
    assert quant_range(TensorQuant("uint8", symmetric=False)) == (0, 255)
    assert quant_range(TensorQuant("uint8", reduce_range=True)) == (0, 127)
    assert quant_range("int8", reduce_range=True) == quant_range(TensorQuant(reduce_range=True))
    with pytest.raises(ConfigError):
        quant_range(TensorQuant("int4"))
    # compute_qparams with a TensorQuant uses its dtype, symmetry and range flags
    s, z = compute_qparams(-1.0, 2.0, TensorQuant("uint8", symmetric=False))
    assert float(s) == pytest.approx(3 / 255) and int(z) == 85
    s, z = compute_qparams(-1.0, 2.0, TensorQuant("int8", symmetric=True, narrow_range=True))
    assert float(s) == pytest.approx(2 / 127) and int(z) == 0
    assert compute_qparams(0.0, 0.0, TensorQuant())[0] == np.float32(MIN_SCALE)


_FORBIDDEN = (
    "autoglm_compress.passes",
    "autoglm_compress.pipeline",
    "autoglm_compress.targets",
    "autoglm_compress.api",
    "autoglm_compress.lowering",
)
_MOVING: set[str] = set()  # every quantization module is held to the rule (flow.py is gone)


def _quant_modules() -> list[str]:
    files = sorted((ROOT / "autoglm_compress" / "quantization").glob("*.py"))
    return [f"autoglm_compress.quantization.{f.stem}" for f in files if f.name not in _MOVING]


@pytest.mark.slow
def test_quantization_imports_no_passes_in_fresh_interpreter():
    """Each quantization module imported in a fresh interpreter leaves no passes/pipeline/
    targets/api module in sys.modules; ir_ops imports neither torch nor those."""
    code = (
        "import importlib, sys\n"
        f"forbidden = {_FORBIDDEN!r}\n"
        "for mod in sys.argv[1:]:\n"
        "    before = set(sys.modules)\n"
        "    importlib.import_module(mod)\n"
        "    bad = sorted(m for m in sys.modules if m.startswith(forbidden))\n"
        "    print(mod, ','.join(bad) or '-')\n"
        "    if mod.endswith('ir_ops'):\n"
        "        print('torch', 'torch' in sys.modules)\n"
    )
    mods = ["autoglm_compress.ir_ops", *_quant_modules(), "autoglm_compress.calibration"]
    for mod in mods:  # one fresh interpreter per module
        res = subprocess.run(
            [sys.executable, "-c", code, mod],
            check=False,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        lines = res.stdout.split("\n")
        assert lines[0] == f"{mod} -", f"{mod} pulls in {lines[0].split()[-1]}"
        if mod.endswith("ir_ops"):
            assert lines[1] == "torch False"


def test_quantization_has_no_lazy_imports_of_passes():
    """Imports inside functions count too: no quantization module names a forbidden package."""
    bad = []
    for f in sorted((ROOT / "autoglm_compress" / "quantization").glob("*.py")):
        if f.name in _MOVING:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            bad += [f"{f.name}: {n}" for n in names if n.startswith(_FORBIDDEN)]
            if isinstance(node, ast.ImportFrom) and node.module == "autoglm_compress":
                bad += [f"{f.name}: {a.name}" for a in node.names if a.name in ("passes", "api")]
    assert bad == []


@pytest.mark.parametrize("trans_b,alpha,beta", [(0, 1.0, 1.0), (1, 1.0, 1.0), (0, 2.0, 0.5)])
def test_bias_correction_follows_gemm_layout(trans_b, alpha, beta):
    """After correction, the quantized Gemm's mean output over the data equals the FP32 one:
    α·x̄·Ŵ + β·C' = α·x̄·W + β·C per channel (Gemm is linear, so this is exact)."""
    from autoglm_compress.quantization.bias_correction import correct_biases
    from autoglm_compress.quantization.qdq import quantize_array, weight_qparams

    x = (RNG.standard_normal((64, 5)) + 3.0).astype(np.float32)  # a mean far from 0
    w = RNG.standard_normal((3, 5) if trans_b else (5, 3)).astype(np.float32)
    c = RNG.standard_normal(3).astype(np.float32)
    proto = _one_node("gemm_tb" if trans_b else "gemm", w, c)
    node_proto = proto.graph.node[0]
    node_proto.attribute.extend([helper.make_attribute("alpha", alpha)])
    node_proto.attribute.extend([helper.make_attribute("beta", beta)])
    model = from_proto(proto)
    tq = TensorQuant("int8", per_channel=True, narrow_range=True)
    stats = correct_biases(model, {"x": x.mean(0)}, tq)
    assert stats["biases_corrected"] == 1
    node = next(iter(model.graph))
    c2 = const_array(node.inputs[2])
    ax = out_channel_axis(node)
    s, _ = weight_qparams(w, ax, tq)
    wq = quantize_array(w, s, ax, tq) * s.reshape([-1 if i == ax else 1 for i in range(2)])
    kn = (lambda a: a.T) if trans_b else (lambda a: a)
    fp32 = alpha * x @ kn(w) + beta * c
    before = alpha * x @ kn(wq) + beta * c
    after = alpha * x @ kn(wq) + beta * c2
    assert np.abs((before - fp32).mean(0)).max() > 1e-3  # quantization did shift the mean
    np.testing.assert_allclose((after - fp32).mean(0), 0.0, atol=2e-5)

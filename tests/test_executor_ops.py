"""The torch executor op by op against onnxruntime (graphs in ONNX text, ≤ 1e-4 relative)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from autoglm_compress.ir_utils import from_proto, ort_run, ort_session
from autoglm_compress.runtime import run_model

HEAD = '<ir_version: 8, opset_import: ["" : 17]>\n'
RNG = np.random.default_rng(0)


def _check(text: str, feeds: dict, inits: dict | None = None):
    proto = onnx.parser.parse_model(HEAD + text)
    for name, arr in (inits or {}).items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
    onnx.checker.check_model(proto)
    model = from_proto(proto)
    want = ort_run(ort_session(proto.SerializeToString()), feeds)
    got = run_model(model, feeds)
    for w, v in zip(want, model.graph.outputs):
        np.testing.assert_allclose(got[v.name], w, rtol=1e-4, atol=1e-5)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(
    "attrs",
    [
        "pads=[1,0,2,1]",
        'auto_pad="SAME_UPPER", strides=[2,2]',
        'auto_pad="SAME_LOWER", strides=[2,1]',
        "dilations=[2,2], pads=[2,2,2,2]",
        "group=4",
        'auto_pad="VALID"',
    ],
)
def test_conv(attrs):
    w = _x(8, 1 if "group" in attrs else 4, 3, 3)
    _check(
        f"g (float[1,4,9,9] x) => (float[1,8,?,?] y) {{ y = Conv <{attrs}> (x, w, b) }}",
        {"x": _x(1, 4, 9, 9)},
        {"w": w, "b": _x(8)},
    )


@pytest.mark.parametrize(
    "attrs",
    [
        "strides=[2,2]",
        "strides=[2,2], pads=[1,1,1,1], output_padding=[1,1]",
        "group=2, strides=[1,2]",
    ],
)
def test_conv_transpose(attrs):
    _check(
        f"g (float[1,4,5,5] x) => (float[1,?,?,?] y) {{ y = ConvTranspose <{attrs}> (x, w, b) }}",
        {"x": _x(1, 4, 5, 5)},
        {"w": _x(4, 3, 3, 3), "b": _x(6 if "group" in attrs else 3)},
    )


@pytest.mark.parametrize(
    "op,attrs",
    [
        ("MaxPool", "kernel_shape=[3,3], strides=[2,2], ceil_mode=1"),
        ("MaxPool", "kernel_shape=[2,2], pads=[1,0,0,1]"),
        ("AveragePool", "kernel_shape=[3,3], pads=[1,1,1,1], count_include_pad=1"),
        ("AveragePool", "kernel_shape=[3,3], pads=[1,1,1,1]"),
        ("AveragePool", "kernel_shape=[2,2], pads=[0,1,1,0], strides=[2,2]"),
    ],
)
def test_pools(op, attrs):
    _check(
        f"g (float[1,2,7,7] x) => (float[1,2,?,?] y) {{ y = {op} <{attrs}> (x) }}",
        {"x": _x(1, 2, 7, 7)},
    )


@pytest.mark.parametrize(
    "attrs",
    [
        'mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"',
        'mode="nearest"',
        'mode="linear"',
        'mode="linear", coordinate_transformation_mode="align_corners"',
    ],
)
def test_resize(attrs):
    _check(
        f"g (float[1,2,4,5] x) => (float[1,2,?,?] y) {{ y = Resize <{attrs}> (x, , s) }}",
        {"x": _x(1, 2, 4, 5)},
        {"s": np.array([1, 1, 2, 1.5], np.float32)},
    )


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad(mode):
    _check(
        f'g (float[1,2,4,5] x) => (float[?,?,?,?] y) {{ y = Pad <mode="{mode}"> (x, p) }}',
        {"x": _x(1, 2, 4, 5)},
        {"p": np.array([0, 0, 1, 2, 0, 1, 2, 1], np.int64)},
    )


def test_slicing_and_indexing():
    _check(
        """g (float[4,6,5] x) => (float[?,?,?] y, float[?,?,?] z, float[?,?] u, float[?,?,?] v) {
        y = Slice(x, st, en, ax, sp)
        z = Gather <axis=1> (x, idx)
        sp0, sp1 = Split <axis=1> (x, sizes)
        u = Flatten <axis=2> (sp1)
        v = Expand(sp0, shp)
    }""",
        {"x": _x(4, 6, 5)},
        {
            "st": np.array([-1, 1], np.int64),
            "en": np.array([-10, 100], np.int64),
            "ax": np.array([0, 2], np.int64),
            "sp": np.array([-2, 2], np.int64),
            "idx": np.array([[0, -1], [2, 3]], np.int64),
            "sizes": np.array([2, 4], np.int64),
            "shp": np.array([2, 4, 2, 5], np.int64),
        },
    )


@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm(ta, tb):
    a = _x(3, 4) if not ta else _x(4, 3)
    b = _x(4, 5) if not tb else _x(5, 4)
    _check(
        f"g (float[{a.shape[0]},{a.shape[1]}] a) => (float[3,5] y) "
        f"{{ y = Gemm <alpha=0.5, beta=2.0, transA={ta}, transB={tb}> (a, b, c) }}",
        {"a": a},
        {"b": b, "c": _x(5)},
    )


def test_math_mix():
    _check(
        """g (float[2,3,4] x, int64[2,3,4] k) => (float[?,?,?] a, float[?,?,?] b, float[?,?,?] c,
              int64[?,?,?] d, float[?,?,?] e, float[?,?] f, float[?,?,?] h) {
        a = Softmax <axis=1> (x)
        b = Clip(x, lo, hi)
        m = Greater(x, lo)
        c = Where(m, x, hi)
        d = Div(k, two)
        e = CumSum(x, ax)
        f = ReduceSum <keepdims=0> (x, axes)
        h = HardSigmoid <alpha=0.3> (x)
    }""",
        {"x": _x(2, 3, 4), "k": RNG.integers(-9, 9, (2, 3, 4))},
        {
            "lo": np.array(-0.5, np.float32),
            "hi": np.array(0.7, np.float32),
            "two": np.array(2, np.int64),
            "ax": np.array(2, np.int64),
            "axes": np.array([1], np.int64),
        },
    )


def test_topk_depth_to_space_einsum_layernorm():
    _check(
        """g (float[1,8,2,3] x) => (float[?,?,?,?] v, int64[?,?,?,?] i, float[?,?,?,?] d,
              float[?,?,?,?] e, float[?,?,?,?] n) {
        v, i = TopK <axis=1> (x, k)
        d = DepthToSpace <blocksize=2, mode="CRD"> (x)
        e = Einsum <equation="bchw,bkhw->bckw"> (x, x)
        n = LayerNormalization <axis=-1, epsilon=1e-3> (x, s, b)
    }""",
        {"x": _x(1, 8, 2, 3)},
        {"k": np.array([3], np.int64), "s": _x(3), "b": _x(3)},
    )


@pytest.mark.parametrize("per_axis", [False, True])
def test_qdq(per_axis):
    scale = np.array([0.02, 0.05, 0.1], np.float32) if per_axis else np.array(0.03, np.float32)
    zp = np.array([0, 10, 250], np.uint8) if per_axis else np.array(128, np.uint8)
    _check(
        "g (float[2,3,4] x) => (float[2,3,4] y) { q = QuantizeLinear <axis=1> (x, s, z)  "
        "y = DequantizeLinear <axis=1> (q, s, z) }",
        {"x": _x(2, 3, 4) * 3},
        {"s": scale, "z": zp},
    )

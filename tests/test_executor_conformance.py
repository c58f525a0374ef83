"""The torch executor against the ONNX backend node test suite shipped in the onnx wheel.

Every case of ``onnx.backend.test.case.node.collect_testcases()`` whose nodes are all in the
executor's op table (default domain; Constant included) and whose inputs and outputs are all
tensors of float32/float16/float64/int8/uint8/int32/int64/bool runs through ``TorchExecutor`` on
the CPU. Each output must have the expected shape and dtype, and values within the tolerance of
onnx's own backend runner, |got − want| ≤ atol + rtol·|want| with the case's rtol/atol (1e-3 and
1e-7), exactly for integers and bools. Cases that cannot pass are listed in ``EXCLUDED`` with the
reason and a check of their own, so that the list cannot silently rot.
"""

from __future__ import annotations

import logging
import warnings
from functools import cache

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from autoglm_compress.ir_utils import from_proto, ort_run, ort_session
from autoglm_compress.runtime.executor import OPS, TorchExecutor

__all__ = ["EXCLUDED", "eligible_cases"]

logger = logging.getLogger(__name__)

DTYPES = {
    np.dtype(t)
    for t in ("float32", "float16", "float64", "int8", "uint8", "int32", "int64", "bool")
}
FP16_RTOL = 4e-3  # two float16 ulps

# name → (check, reason). check "fails": a known gap, the case must still fail; "ort": must fail
# and match onnxruntime instead (the executor is the reference for onnxruntime artifacts); "fp16":
# must fail at the runner's tolerance and pass within FP16_RTOL; "random": shapes, dtypes and
# y = x·mask/(1 − ratio) are checked instead of the values.
_RANDOM_DROPOUT = (
    "random",
    (
        "training-mode Dropout: the reference draws its mask from numpy's global RNG, the executor "
        "from torch's generator; the values cannot agree"
    ),
)
_ALIGN_CORNERS = (
    "ort",
    (
        "align_corners with scale·L not an integer: the reference divides by scale·L − 1, the spec "
        "text and onnxruntime by the integer output length − 1; the executor follows onnxruntime"
    ),
)
EXCLUDED: dict[str, tuple[str, str]] = {
    "test_resize_downsample_scales_cubic_align_corners": _ALIGN_CORNERS,
    "test_resize_downsample_scales_linear_align_corners": _ALIGN_CORNERS,
    "test_training_dropout": _RANDOM_DROPOUT,
    "test_training_dropout_default": _RANDOM_DROPOUT,
    "test_training_dropout_default_mask": _RANDOM_DROPOUT,
    "test_training_dropout_mask": _RANDOM_DROPOUT,
    "test_attention_4d_causal_fp16_expanded": (
        "fp16",
        (
            "the reference rounds every step of the expanded Softmax to float16, torch rounds once "
            "at the end: the outputs differ by up to two float16 ulps"
        ),
    ),
}


def _array(a) -> np.ndarray | None:
    """A case's input/output as an ndarray, or None when it is not a tensor (sequence, optional)."""
    if isinstance(a, onnx.TensorProto):
        a = numpy_helper.to_array(a)
    if isinstance(a, np.generic):
        a = np.asarray(a)
    return a if isinstance(a, np.ndarray) else None


def _eligible(case) -> bool:
    for node in case.model.graph.node:
        if node.domain not in ("", "ai.onnx") or (
            node.op_type not in OPS and node.op_type != "Constant"
        ):
            return False
    for inputs, outputs in case.data_sets:
        for a in (*inputs, *outputs):
            a = _array(a)
            if a is None or a.dtype not in DTYPES:
                return False
    return True


@cache
def eligible_cases() -> dict:
    """name → onnx backend TestCase, for every case the executor is expected to run."""
    import onnx.backend.test.case.node as node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node_cases.collect_testcases()
    return {c.name: c for c in cases if _eligible(c)}


def _run(case) -> list[tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]]:
    """(inputs, outputs got, outputs wanted) for each data set of ``case``."""
    model = from_proto(case.model)
    ex = TorchExecutor(model, device="cpu")
    names = [v.name for v in model.graph.inputs]
    runs = []
    for inputs, outputs in case.data_sets:
        feeds = [_array(a) for a in inputs]
        got = ex.run(dict(zip(names, feeds)))
        runs.append(
            (
                feeds,
                [np.asarray(got[v.name].detach().cpu().numpy()) for v in model.graph.outputs],
                [_array(a) for a in outputs],
            )
        )
    return runs


def _compare(case, rtol: float | None = None, expected=None) -> None:
    """Outputs against the case's (or ``expected(inputs)``) in shape, dtype and value."""
    for inputs, got, want in _run(case):
        want = expected(inputs) if expected is not None else want
        assert len(got) == len(want), f"{len(got)} outputs, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.shape == w.shape, f"output {i}: shape {g.shape}, expected {w.shape}"
            assert g.dtype == w.dtype, f"output {i}: dtype {g.dtype}, expected {w.dtype}"
            if w.dtype.kind == "f":
                np.testing.assert_allclose(
                    g, w, rtol=rtol or case.rtol, atol=case.atol, err_msg=f"output {i}"
                )
            else:
                np.testing.assert_array_equal(g, w, err_msg=f"output {i}")


_NAMES = sorted(eligible_cases())


@pytest.mark.parametrize("name", [n for n in _NAMES if n not in EXCLUDED])
def test_node_case(name):
    _compare(eligible_cases()[name])


@pytest.mark.parametrize("name", sorted(EXCLUDED))
def test_excluded_case(name):
    """Each exclusion is still needed and still what its reason says."""
    assert name in eligible_cases(), f"{name} is no longer an eligible case: drop it"
    case, (check, reason) = eligible_cases()[name], EXCLUDED[name]
    if check == "random":
        _check_dropout(case)
        return
    with pytest.raises(AssertionError):
        _compare(case)
    if check == "fp16":
        _compare(case, rtol=FP16_RTOL)
    elif check == "ort":
        _compare(case, expected=lambda inputs: _onnxruntime(case, inputs))
    else:
        assert check == "fails", f"unknown check {check!r} ({reason})"


def _onnxruntime(case, inputs: list[np.ndarray]) -> list[np.ndarray]:
    sess = ort_session(case.model.SerializeToString(), threads=1)
    return ort_run(sess, dict(zip([i.name for i in case.model.graph.input], inputs)))


def _check_dropout(case) -> None:
    for (x, ratio, _), got, want in _run(case):
        assert [(g.shape, g.dtype) for g in got] == [(w.shape, w.dtype) for w in want]
        mask = got[1] if len(got) > 1 else got[0] != 0
        np.testing.assert_allclose(got[0], x * mask / (1 - ratio), rtol=1e-6)
        assert abs(mask.mean() - (1 - ratio)) < 0.2


def test_case_count():
    """The filter keeps the bulk of the suite (a broken import or filter would empty it)."""
    assert len(_NAMES) >= 1000, len(_NAMES)
    assert len(EXCLUDED) <= 10


def _node_model(text: str):
    proto = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 21]>\n' + text)
    onnx.checker.check_model(proto, full_check=True)
    return from_proto(proto)


@pytest.mark.parametrize(("axis", "shape"), [(2, (6, 1)), (-2, (1, 6)), (0, (1, 6)), (1, (2, 3))])
def test_flatten_axis_up_to_rank(axis, shape):
    """Flatten accepts axis in [-r, r]; axis == r gives [numel, 1] (a traced-BERT export)."""
    model = _node_model(
        f"g (float[2,3] x) => (float[{shape[0]},{shape[1]}] y) {{ y = Flatten <axis={axis}> (x) }}"
    )
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = TorchExecutor(model, device="cpu").run({"x": x})["y"].numpy()
    np.testing.assert_array_equal(y, x.reshape(shape))


_GRAPHS = {
    "resize_cubic_asymmetric": (
        (
            'g (float[1,2,5,6] x) => (float[1,2,8,9] y) { y = Resize <mode="cubic", '
            'coordinate_transformation_mode="asymmetric", cubic_coeff_a=-0.5> (x, , s) }'
        ),
        {"s": np.array([1, 1, 1.6, 1.5], dtype=np.float32)},
    ),
    "avgpool_dilated": (
        (
            "g (float[1,2,7,7] x) => (float[1,2,4,4] y) { y = AveragePool <kernel_shape=[2,2], "
            "dilations=[2,2], pads=[1,1,0,0], ceil_mode=1> (x) }"
        ),
        {},
    ),
    "convtranspose_output_shape": (
        (
            "g (float[1,2,3,3] x) => (float[1,3,8,7] y) { y = ConvTranspose <strides=[3,2], "
            "output_shape=[8,7]> (x, w) }"
        ),
        {"w": np.linspace(-1, 1, 2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)},
    ),
    "layernorm_stats": (
        (
            "g (float[1,3,4] x) => (float[1,3,4] y, float[1,3,1] m, float[1,3,1] r) "
            "{ y, m, r = LayerNormalization <axis=-1> (x, w) }"
        ),
        {"w": np.linspace(0.5, 1.5, 4, dtype=np.float32)},
    ),
}


@pytest.mark.parametrize("graph", sorted(_GRAPHS))
def test_vmap_and_grad(graph):
    """The rewritten ops batch under torch.func.vmap (as calibration uses them) and pass
    gradients to their input."""
    text, inits = _GRAPHS[graph]
    proto = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 18]>\n' + text)
    for k, v in inits.items():
        proto.graph.initializer.append(numpy_helper.from_array(v, k))
    ex = TorchExecutor(from_proto(proto), device="cpu")
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    xs = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))

    def first(x):
        return ex.run({"x": x}, keep_grad=True)[proto.graph.output[0].name]

    batched = torch.func.vmap(first)(xs)
    looped = torch.stack([first(x) for x in xs])
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-6)
    x = xs[0].clone().requires_grad_(True)
    (first(x) * torch.linspace(-1, 1, looped[0].numel()).reshape(looped[0].shape)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0

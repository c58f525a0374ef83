"""Fuzzing the three readers of user files: the ONNX loader (mutated bytes of a small valid model),
the recipe parser (generated TOML, mutated text, raw bytes) and the .npz calibration reader
(generated archives, mutated bytes). Whatever the input, a reader succeeds or raises a
:class:`CompressError` — never another exception, never a hang (each example runs under an alarm).

Derandomized (the same examples on every run); about 800 examples, well under a minute on 2 cores.
"""

from __future__ import annotations

import contextlib
import io
import math
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoglm_compress.errors import CompressError

FUZZ = settings(
    derandomize=True,
    deadline=None,  # the alarm below is the hang guard; CI machines differ in speed
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
)
ALARM_S = 20


@contextlib.contextmanager
def _no_hang(what: str):
    def ring(signum, frame):
        raise TimeoutError(f"{what}: still running after {ALARM_S} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, ALARM_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _only_compress_errors(fn, what: str):
    """Run ``fn``; a CompressError is a fine answer to bad input, anything else fails the test."""
    with _no_hang(what):
        try:
            return fn()
        except CompressError:
            return None


def _tiny_onnx() -> bytes:
    """x float [1, 4] → MatMul W[4, 3] → Relu → + Cast(k int64 [1, 3]) → y: two inputs, two
    dtypes, one weight."""
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], np.linspace(-1, 1, 12).tolist())
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT, name="cast"),
            helper.make_node("Add", ["r", "kf"], ["y"], name="add"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


TINY = _tiny_onnx()


@st.composite
def _mutated(draw, data: bytes) -> bytes:
    """``data`` with a few edits: flipped bytes, a cut, an inserted or overwritten run, a splice."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "overwrite", "dup"]))
        n = len(out)
        at = draw(st.integers(0, max(n - 1, 0)))
        if kind == "flip" and n:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and n:
            out[at] = draw(st.sampled_from([0, 0x7F, 0x80, 0xFF, 0x08, 0x0A, 0x12]))
        elif kind == "cut":
            out = out[:at] if draw(st.booleans()) else out[:at] + out[at + draw(st.integers(1, 64)):]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            out[at:at + len(chunk)] = chunk
        elif kind == "dup" and n:
            end = min(n, at + draw(st.integers(1, 64)))
            out[at:at] = out[at:end]
    return bytes(out)


# ------------------------------------------------------------------------------- ONNX loader


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(FUZZ, max_examples=250)
@given(blob=_mutated(TINY))
def test_onnx_loader_mutated_bytes(work, blob):
    from autoglm_compress.frontend import load
    from autoglm_compress.stats import model_stats

    path = work / "m.onnx"
    path.write_bytes(blob)

    def inspect():  # what `autoglm-compress inspect m.onnx` does
        model_stats(load(path, simplify=False))

    _only_compress_errors(inspect, "loading a mutated ONNX file")


# ------------------------------------------------------------------------------- recipe parser

_KEYS = {
    "": ["model", "out_dir", "targets", "precision", "passes", "base_dir", "bogus"],
    "calibration": ["data", "method", "samples", "random", "image"],
    "calibration.image": ["size", "crop", "scale", "mean", "std", "layout", "grayscale"],
    "int8": ["keep_fp32", "per_tensor", "smoothquant", "equalize", "reconstruct"],
    "qat": ["steps", "lr", "batch", "device"],
    "prune": ["ratio", "multiple", "macs", "scope", "importance", "sparsity"],
    "distill": ["enabled", "steps", "epochs", "lr", "data", "loss", "temperature"],
    "verify": ["eval_data", "samples", "latency_repeats"],
    "gates": ["min_cosine", "max_drop", "max_size", "max_latency_ratio"],
    "debug": ["dump_ir_after"],
    "target_options": ["x86", "cuda", "arm", "mips"],
    "target_options.x86": ["reduce_range", "bogus"],
    "target_options.arm": ["format", "io"],
}

_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(["x86", "int8", "fp16", "auto", "NCHW", "2:4", "0.5", "1x3x224x224", "nan",
                     "x.py:f", "pkg.mod:fn", "", "0.5,0.5,0.5", "../m.onnx", "\u00e9\u00e9"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(["a", "x86", "mean", "steps"]), inner,
                                            max_size=3)),
    max_leaves=8,
)


@st.composite
def _recipe_tree(draw) -> dict:
    tree: dict = {}
    for section in draw(st.lists(st.sampled_from(sorted(_KEYS)), min_size=1, max_size=5)):
        node = tree
        for part in [p for p in section.split(".") if p]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            for key in draw(st.lists(st.sampled_from(_KEYS[section]), max_size=4)):
                node[key] = draw(_values)
    if draw(st.booleans()):
        tree.setdefault("model", draw(st.sampled_from(["m.onnx", "", "missing.pt"])))
    return tree


def _load_and_check(path: Path):
    from autoglm_compress.config_build import check_combinations
    from autoglm_compress.recipe import load_recipe

    def run():
        check_combinations(load_recipe(path, trust_code=False))

    _only_compress_errors(run, f"loading recipe {path.read_bytes()[:200]!r}")


def _toml(tree: dict) -> str | None:
    import tomli_w

    try:
        return tomli_w.dumps(tree)
    except (TypeError, ValueError):  # something TOML cannot spell (nan keys, mixed arrays …)
        return None


@settings(FUZZ, max_examples=250)
@given(tree=_recipe_tree())
def test_recipe_parser_generated_trees(work, tree):
    text = _toml(tree)
    if text is None:
        return
    path = work / "r.toml"
    path.write_text(text)
    _load_and_check(path)


_VALID_RECIPE = b"""model = "m.onnx"
out_dir = "out"
targets = ["x86", "cuda"]
precision = "int8"
base_dir = "."

[calibration]
data = "calib/"
samples = 16
[calibration.image]
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
size = [256]

[int8]
keep_fp32 = ["/head/*"]
smoothquant = 0.5
[qat]
steps = 3
[gates]
min_cosine = 0.99
[target_options.x86]
reduce_range = true
"""


@settings(FUZZ, max_examples=150)
@given(blob=st.one_of(_mutated(_VALID_RECIPE), st.binary(max_size=300)))
def test_recipe_parser_mutated_bytes(work, blob):
    path = work / "m.toml"
    path.write_bytes(blob)
    _load_and_check(path)


# ------------------------------------------------------------------------------- .npz reader

_DTYPES = ["float32", "float64", "float16", "int64", "int32", "uint8", "bool", "complex64",
           "U3", "S2", "object", "datetime64[s]"]


@st.composite
def _array(draw) -> np.ndarray:
    dtype = draw(st.sampled_from(_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    size = math.prod(shape)
    if dtype == "object":
        a = np.empty(shape, dtype=object)
        a.flat[:] = [draw(st.sampled_from([None, 1.5, "s", (1, 2)])) for _ in range(size)]
        return a
    if dtype.startswith(("float", "complex")):
        vals = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32),
                             min_size=size, max_size=size))
        with np.errstate(over="ignore"):  # float32 values past float16's range: inf
            return np.array(vals, dtype=dtype).reshape(shape)
    if dtype in ("int64", "int32", "uint8", "bool"):
        vals = draw(st.lists(st.integers(0, 255), min_size=size, max_size=size))
        return np.array(vals).astype(dtype).reshape(shape)
    return np.zeros(shape, dtype=dtype)


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


_VALID_NPZ = _npz_bytes({
    "x": np.linspace(0, 1, 24, dtype=np.float32).reshape(6, 4),
    "k": np.arange(18).reshape(6, 3),
    "labels": np.arange(6),
})


@st.composite
def _npz(draw) -> bytes:
    """np.savez archives of generated arrays, or mutated bytes of a valid one."""
    if draw(st.booleans()):
        names = st.sampled_from(["x", "k", "labels", "y", "arr_0"])
        return _npz_bytes(draw(st.dictionaries(names, _array(), max_size=4)))
    return draw(_mutated(_VALID_NPZ))


@st.composite
def _npz_members(draw) -> bytes:
    """A valid zip whose members are not .npy files, or broken ones."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in draw(st.lists(st.sampled_from(["x.npy", "k.npy", "x", "labels.npy"]),
                                  min_size=1, max_size=3, unique=True)):
            z.writestr(name, draw(st.one_of(st.binary(max_size=80),
                                            _mutated(_npz_member("x")))))
    return buf.getvalue()


def _npz_member(name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(_VALID_NPZ)) as z:
        return z.read(f"{name}.npy")


@pytest.fixture(scope="module")
def tiny_model():
    import onnx_ir as ir

    return ir.from_proto(__import__("onnx").load_from_string(TINY))


def _read_npz(blob: bytes, path: Path, model) -> None:
    """``blob`` as an .npz file, read as calibration data and as eval data."""
    from autoglm_compress.calibration.data import open_calibration_source
    from autoglm_compress.inputs import load_npz_feeds

    path.write_bytes(blob)

    def calibrate():
        list(open_calibration_source(path, model).take(4))

    def evaluate():
        feeds, _labels = load_npz_feeds(path, model, limit=4)
        list(feeds)

    _only_compress_errors(calibrate, "reading a fuzzed .npz as calibration data")
    _only_compress_errors(evaluate, "reading a fuzzed .npz as eval data")


@settings(FUZZ, max_examples=250)
@given(blob=_npz())
def test_npz_reader(work, tiny_model, blob):
    _read_npz(blob, work / "d.npz", tiny_model)


@settings(FUZZ, max_examples=60)
@given(blob=_npz_members())
def test_npz_reader_zip_members(work, tiny_model, blob):
    _read_npz(blob, work / "z.npz", tiny_model)

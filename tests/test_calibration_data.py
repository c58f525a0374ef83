"""Calibration data sources: npz, image folders, callables, random; validation messages."""

from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from PIL import Image

from autoglm_compress.calibration.data import ImagePreprocess, batched, open_calibration_source
from autoglm_compress.errors import CalibrationError, ConfigError


def _model(inputs: str, out: str = "float[1] y", body: str = "") -> ir.Model:
    first = re.match(r"\s*\w+\[[^\]]*\]\s+(\w+)", inputs).group(1)
    text = f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g ({inputs}) => ({out}) {{ {body or f"y = Identity({first})"} }}
    """
    return ir.serde.deserialize_model(onnx.parser.parse_model(text))


@pytest.fixture
def two_inputs() -> ir.Model:
    return _model("float[1,3] a, int64[1,4] b", "float[1,3] y")


def _img(path, pixels: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path)


def _pattern(seed: int, h: int = 4, w: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3))


# --- npz ---------------------------------------------------------------------------------------


def test_npz_two_inputs(tmp_path, two_inputs):
    a = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    b = np.arange(20, dtype=np.int64).reshape(5, 4)
    np.savez(tmp_path / "c.npz", a=a, b=b)
    src = open_calibration_source(tmp_path / "c.npz", two_inputs)
    assert (src.kind, src.is_random) == ("npz", False)
    feeds = list(src)
    assert len(feeds) == 5
    assert feeds[2]["a"].shape == (1, 3) and feeds[2]["b"].dtype == np.int64
    np.testing.assert_array_equal(feeds[2]["b"][0], b[2])
    assert len(list(src.take(2))) == 2


def test_npz_nan_is_rejected(tmp_path, two_inputs):
    a = np.ones((2, 3), np.float32)
    a[1, 1] = np.nan
    np.savez(tmp_path / "c.npz", a=a, b=np.zeros((2, 4), np.int64))
    with pytest.raises(CalibrationError, match="NaN"):
        list(open_calibration_source(tmp_path / "c.npz", two_inputs))


# --- images ------------------------------------------------------------------------------------

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_image_folder_pixels_after_mean_std_nchw(tmp_path):
    pix = {name: _pattern(i) for i, name in enumerate(["b.png", "a.png", "sub/c.bmp"])}
    for name, p in pix.items():
        _img(tmp_path / name, p)
    pre = ImagePreprocess(mean=MEAN, std=STD)
    src = open_calibration_source(tmp_path, _model("float[1,3,4,4] x"), preprocess=pre)
    assert (src.kind, src.size) == ("images", 3)
    feeds = list(src)
    order = ["a.png", "b.png", "sub/c.bmp"]  # sorted, recursive
    for feed, name in zip(feeds, order):
        x = feed["x"]
        assert x.shape == (1, 3, 4, 4) and x.dtype == np.float32
        for c in range(3):
            want = (pix[name][1, 2, c] / 255.0 - MEAN[c]) / STD[c]
            assert x[0, c, 1, 2] == pytest.approx(want, abs=1e-5)


def test_image_nhwc_bgr_and_grayscale(tmp_path):
    p = _pattern(7)
    _img(tmp_path / "i.png", p)
    pre = ImagePreprocess(channel_order="BGR", scale=1.0, mean=(10.0, 20.0, 30.0), std=(2.0,))
    src = open_calibration_source(tmp_path, _model("float[1,4,4,3] x"), preprocess=pre)
    x = next(iter(src))["x"]
    assert x.shape == (1, 4, 4, 3)
    for c in range(3):  # model channel c holds image channel 2 - c
        assert x[0, 3, 0, c] == pytest.approx((p[3, 0, 2 - c] - (10.0, 20.0, 30.0)[c]) / 2.0)
    _img(tmp_path / "i.png", np.full((4, 4, 3), 200))
    g = next(iter(open_calibration_source(tmp_path, _model("float[1,1,4,4] x"))))["x"]
    assert g.shape == (1, 1, 4, 4) and g[0, 0, 2, 2] == pytest.approx(200 / 255.0)


def test_image_resize_and_center_crop(tmp_path):
    img = np.zeros((6, 12, 3))
    img[:, 2:10] = 255  # white center band, black borders
    _img(tmp_path / "wide.png", img)
    x = next(iter(open_calibration_source(tmp_path, _model("float[1,3,2,2] x"))))["x"]
    assert x.shape == (1, 3, 2, 2)  # 6x12 → 2x4 (shorter side 2) → center 2x2 crop
    assert x.min() > 0.99  # the dark borders were cropped away
    pre = ImagePreprocess(size=(8, 8), crop=4)
    y = next(iter(open_calibration_source(tmp_path, _model("float[N,3,H,W] x"), preprocess=pre)))
    assert y["x"].shape == (1, 3, 4, 4)


def test_non_image_file_is_named(tmp_path, caplog):
    _img(tmp_path / "ok.png", _pattern(0))
    (tmp_path / "notes.txt").write_text("hello")
    model = _model("float[1,3,4,4] x")
    with pytest.raises(CalibrationError, match="notes.txt"):
        open_calibration_source(tmp_path, model, skip_invalid=False)
    with caplog.at_level(logging.INFO):
        src = open_calibration_source(tmp_path, model)  # default: skipped and counted
    assert src.size == 1 and "notes.txt" in caplog.text
    assert [Path(p).name for p in src.skipped] == ["notes.txt"]
    (tmp_path / "bad.png").write_text("not a png")
    (tmp_path / "notes.txt").unlink()
    with pytest.raises(CalibrationError, match="bad.png"):
        list(open_calibration_source(tmp_path, model, skip_invalid=False))
    src = open_calibration_source(tmp_path, model)
    assert len(list(src)) == 1
    assert [Path(p).name for p in src.skipped] == ["bad.png"]


def test_empty_image_folder(tmp_path):
    with pytest.raises(CalibrationError, match="empty calibration set"):
        open_calibration_source(tmp_path, _model("float[1,3,4,4] x"))


# --- callables ---------------------------------------------------------------------------------

SCRIPT = """
import numpy as np

def batches():
    yield {"a": np.ones((3, 3)), "b": np.zeros((3, 4), np.int64)}  # a batch of 3, float64
    yield {"a": np.full(3, 2.0, np.float32), "b": np.ones(4, np.int64)}  # one sample, no batch dim

def single():
    return np.arange(6, dtype=np.float32).reshape(2, 1, 3)

def wrong_shape():
    return [{"a": np.zeros((1, 5), np.float32), "b": np.zeros((1, 4), np.int64)}]

def wrong_dtype():
    return [{"a": np.zeros((1, 3), np.float32), "b": np.zeros((1, 4), np.float32)}]

def nan():
    return [{"a": np.array([[0.0, np.nan, 1.0]], np.float32), "b": np.zeros((1, 4), np.int64)}]

def nothing():
    return []

def boom():
    raise RuntimeError("disk on fire")
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "calib_data.py"
    path.write_text(textwrap.dedent(SCRIPT))
    return path


def test_callable_from_file_splits_batches(script, two_inputs):
    src = open_calibration_source(f"{script}:batches", two_inputs)
    feeds = list(src)
    assert src.kind == "callable" and len(feeds) == 4
    assert all(f["a"].shape == (1, 3) and f["a"].dtype == np.float32 for f in feeds)
    assert all(f["b"].shape == (1, 4) for f in feeds)
    assert feeds[3]["a"][0, 0] == 2.0
    assert len(list(src.take(2))) == 2


def test_callable_module_and_bare_array(script, monkeypatch):
    monkeypatch.syspath_prepend(str(script.parent))
    model = _model("float[N,1,3] a")
    feeds = list(open_calibration_source("calib_data:single", model))
    assert [f["a"].shape for f in feeds] == [(1, 1, 3), (1, 1, 3)]
    np.testing.assert_array_equal(feeds[1]["a"], [[[3.0, 4.0, 5.0]]])


def test_shape_and_dtype_messages(script, two_inputs):
    with pytest.raises(CalibrationError) as e:
        list(open_calibration_source(f"{script}:wrong_shape", two_inputs))
    assert "'a'" in str(e.value) and "expects float32 [1,3]" in str(e.value)
    assert "got float32 [1,5]" in str(e.value)
    with pytest.raises(CalibrationError) as e:
        list(open_calibration_source(f"{script}:wrong_dtype", two_inputs))
    assert "'b'" in str(e.value) and "expects int64 [1,4], got float32 [1,4]" in str(e.value)


def test_nan_empty_and_failing_callables(script, two_inputs):
    with pytest.raises(CalibrationError, match="NaN"):
        list(open_calibration_source(f"{script}:nan", two_inputs))
    with pytest.raises(CalibrationError, match="empty calibration set"):
        list(open_calibration_source(f"{script}:nothing", two_inputs))
    with pytest.raises(CalibrationError, match="disk on fire"):
        list(open_calibration_source(f"{script}:boom", two_inputs))
    with pytest.raises(CalibrationError, match="no callable 'missing'"):
        open_calibration_source(f"{script}:missing", two_inputs)
    with pytest.raises(CalibrationError, match="not found"):
        open_calibration_source("no/such/data.npz", two_inputs)


# --- random, batching ----------------------------------------------------------------------------


def test_random_only_when_asked(two_inputs):
    with pytest.raises(ConfigError):
        open_calibration_source(None, two_inputs)
    src = open_calibration_source(None, two_inputs, random=True, seed=1)
    assert src.is_random and src.kind == "random"
    feeds = list(src.take(3))
    assert len(feeds) == 3 and feeds[0]["a"].shape == (1, 3) and feeds[0]["b"].dtype == np.int64


def test_batched_concatenates_along_axis_0(two_inputs):
    feeds = list(open_calibration_source(None, two_inputs, random=True).take(5))
    out = list(batched(feeds, 2))
    assert [f["a"].shape for f in out] == [(2, 3), (2, 3), (1, 3)]
    np.testing.assert_array_equal(out[1]["b"][1], feeds[3]["b"][0])
    assert list(batched(feeds, 1)) == feeds
    with pytest.raises(ConfigError):
        list(batched(feeds, 0))


def test_cli_finds_calibration_module_in_current_folder(tmp_path):
    """`--calib mydata:fn` from a shell in the folder holding mydata.py (the console script's own
    sys.path[0] is its bin folder), and `--calib path/to/file.py:fn` from elsewhere."""
    import subprocess
    import sys

    (tmp_path / "digits_calib_fn.py").write_text(
        "import numpy as np\n"
        "def samples():\n"
        "    rng = np.random.default_rng(0)\n"
        "    return [{'x': rng.random((1, 1, 8, 8), dtype=np.float32)} for _ in range(8)]\n"
    )
    exe = Path(sys.executable).with_name("autoglm-compress")
    model = Path(__file__).resolve().parents[1] / "examples" / "digits_cnn.pt"
    for calib, cwd in (
        ("digits_calib_fn:samples", tmp_path),
        (f"{tmp_path}/digits_calib_fn.py:samples", "/"),
    ):
        r = subprocess.run(
            [
                str(exe),
                str(model),
                "--int8",
                "--calib",
                calib,
                "--samples",
                "4",
                "--latency-repeats",
                "2",
                "-o",
                str(tmp_path / "out"),
            ],
            cwd=cwd,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr


def test_calibration_total_is_the_folder_s_image_count(tmp_path, monkeypatch):
    """--calib-samples 128 on a folder of 3 photos: progress counts to 3, not to 3 of 128."""
    import io

    from autoglm_compress import progress_lines
    from autoglm_compress.lowering import calibrate
    from autoglm_compress.passes.context import PassContext

    for i in range(3):
        _img(tmp_path / f"{i}.png", _pattern(i))
    model = _model("float[1,3,4,4] x", "float[1,3,4,4] y", "y = Relu(x)")
    src = open_calibration_source(tmp_path, model, preprocess=ImagePreprocess())
    buf = io.StringIO()
    monkeypatch.setattr(progress_lines, "TICK_SECONDS", 0.0)
    progress_lines.enable(buf)
    try:
        stats, info = calibrate(model, PassContext(data=src), "minmax", 128)
    finally:
        progress_lines.disable()
    ticks = [ln.split("] ", 1)[1] for ln in buf.getvalue().splitlines()]
    assert ticks[-1].startswith("calibrating: 3/3") and all("/3," in t for t in ticks), ticks
    assert info["samples"] == 3


def test_data_typos_fail_before_the_model_loads(tmp_path):
    """An empty image folder or a missing file is one exit-2 line before any loading: shown with a
    model file that is not a model at all (its error would come first after a load)."""
    from conftest import run_cli

    bad_model = tmp_path / "m.onnx"
    bad_model.write_bytes(b"not a model")
    (tmp_path / "photos").mkdir()
    cases = {"empty calibration set": str(tmp_path / "photos"),
             "no such file or folder": str(tmp_path / "calib.npz")}
    for want, data in cases.items():
        out = tmp_path / f"out_{len(want)}"
        r = run_cli(str(bad_model), "--int8", "--calib", data, "-o", str(out))
        assert r.returncode == 2 and want in r.stderr and "not a model" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()

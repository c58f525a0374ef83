"""Shared fixtures: zoo models saved once per session in every format."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

os.environ.setdefault("OMP_NUM_THREADS", "2")
# --verify-arm auto emulates small models on aarch64 (seconds each): only
# tests/test_arm_emulation.py pays for that; everywhere else auto leaves a note
os.environ["AUTOGLM_ARM_AUTO_MAX_MACS"] = "0"
# CLI runs in tests count their stderr lines: no progress lines unless a test asks (test_progress_lines.py)
os.environ["AUTOGLM_PROGRESS"] = "off"

DEMO = ROOT / "examples" / "digits_cnn.pt"
CALIB = ROOT / "examples" / "digits_calib.npz"
EVAL = ROOT / "examples" / "digits_eval.npz"


def calibrated_digits(calib_samples: int = 128, eval_limit: int = 300):
    """The demo digits CNN after cleanup + fold_bn, calibrated (minmax), with eval feeds, labels and
    the FP32 model's onnxruntime outputs on them: (model, stats, feeds, labels, ref)."""
    from qhelpers import calibrate_with as calibrate

    from autoglm_compress import load
    from autoglm_compress.inputs import load_npz_feeds
    from autoglm_compress.ir_utils import ort_run, ort_session
    from autoglm_compress.pipeline import Pipeline, build_passes

    model = load(DEMO)
    Pipeline(build_passes(["cleanup", "fold_bn"]), progress=False).run(model)
    stats, _ = calibrate(model, str(CALIB), "minmax", calib_samples, False, False)
    feeds, labels = load_npz_feeds(EVAL, model, limit=eval_limit)
    sess = ort_session(model)
    return model, stats, feeds, labels, [ort_run(sess, f) for f in feeds]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def saved(model_dir):
    """saved(zoo_name, fmt) -> path of that zoo model saved as fmt (torchscript/export/onnx/pickle)."""
    import models

    cache: dict = {}
    savers = {
        "torchscript": (models.save_torchscript, ".pt"),
        "export": (models.save_export, ".pt2"),
        "onnx": (models.save_onnx, ".onnx"),
        "pickle": (models.save_pickle, ".pkl"),
    }

    def get(name: str, fmt: str) -> Path:
        key = (name, fmt)
        if key not in cache:
            fn, ext = savers[fmt]
            path = model_dir / f"{name}_{fmt}{ext}"
            fn(models.ZOO[name](), path)
            cache[key] = path
        return cache[key]

    return get


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would."""
    exe = Path(sys.executable).parent / "autoglm-compress"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "autoglm_compress.cli"]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run(
        [*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )

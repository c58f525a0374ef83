"""LiteRT's C++ logger prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on fd 2 the
first time a process applies XNNPACK: noise in a terminal or CI log that the user cannot turn off.
The interpreter factory drops that line and passes on anything else LiteRT prints."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import DEMO, EVAL, run_cli

pytest.importorskip("ai_edge_litert")

NOTE = "Created TensorFlow Lite XNNPACK delegate"
NOTE_LINE = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def test_filter_drops_the_note_and_keeps_other_native_lines():
    code = (
        "import os\n"
        "from autoglm_compress.targets.tflite.litert_run import _without_line\n"
        f"note = {NOTE_LINE!r}\n"
        "_without_line(lambda: os.write(2, b'ERROR: kept\\n' + note + b'\\nWARNING: also kept\\n'), note)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stderr.splitlines() == ["ERROR: kept", "WARNING: also kept"]


def test_arm_run_prints_no_delegate_note(tmp_path):
    """A fresh process (the note is printed once per process) verifying and timing a .tflite."""
    r = run_cli(DEMO, "--target", "arm", "--eval", EVAL, "--samples", "16", "-o", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "digits_cnn.arm.fp32.tflite").is_file()
    assert NOTE not in r.stderr and NOTE not in r.stdout, r.stderr

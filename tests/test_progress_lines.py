"""Progress when stderr is not a terminal (CI logs): a line per step of 2 s or more with the run's
elapsed time, loop positions with the time left, and a long training's duration estimate."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import pytest
from conftest import CALIB, DEMO, TESTS

from autoglm_compress import progress_lines as pl

LINE = re.compile(r"^\[\s*\d+\.\ds\] ")


@pytest.fixture
def stream():
    buf = io.StringIO()
    pl.enable(buf)
    yield buf
    pl.disable()


def test_a_step_gets_a_line_only_when_it_is_long(stream, monkeypatch):
    with pl.step("quick"):
        pass
    assert stream.getvalue() == ""
    monkeypatch.setattr(pl, "MIN_SECONDS", 0.0)
    with pl.step("calibration") as st:
        st["detail"] = "32 samples"
    (line,) = stream.getvalue().splitlines()
    assert LINE.match(line) and "calibration (32 samples): 0.0s" in line


def test_a_loop_ticks_at_most_every_interval_and_at_its_end(stream):
    started = time.perf_counter() - 40.0  # 40 s for the first 10 of 100: 360 s left
    pl.tick("calibrating", 10, 100, started, "samples")
    pl.tick("calibrating", 11, 100, started)  # within TICK_SECONDS of the last line: silent
    pl.tick("calibrating", 100, 100, started)  # the end of a loop that spoke before speaks
    pl.tick("other", 5, 5, time.perf_counter())  # a short loop that never spoke stays quiet
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "calibrating: 10/100, ~6 min left, samples" in lines[0]
    assert "calibrating: 100/100, ~0 s left" in lines[1]


def test_the_estimate_names_the_total_and_the_way_to_shorten_it(stream):
    started = time.perf_counter() - 12.0  # 3 steps in 12 s → 300 steps ≈ 20 min
    text = pl.estimate("training", 3, 300, started, "--distill-steps N to shorten")
    assert text and "~20 min for 300 steps" in text and "--distill-steps" in text
    assert text in stream.getvalue()
    assert pl.estimate("training", 3, 10, time.perf_counter() - 1.0, "x") is None  # < 1 min: quiet


def test_off_means_silent(monkeypatch):
    buf = io.StringIO()
    pl.enable(buf)
    pl.disable()  # the stream stays buf: anything printed would land there
    monkeypatch.setattr(pl, "MIN_SECONDS", 0.0)
    with pl.step("x"):
        pass
    pl.tick("x", 5, 5, time.perf_counter() - 100)
    assert pl.estimate("training", 3, 300, time.perf_counter() - 12.0, "x") is None
    assert buf.getvalue() == ""


def _cli(env_mode, tmp_path):
    exe = [sys.executable, "-m", "autoglm_compress.cli"]
    env = {**os.environ, "PYTHONPATH": str(TESTS), "AUTOGLM_PROGRESS": env_mode}
    return subprocess.run([*exe, str(DEMO), "--int8", "--calib", str(CALIB), "--calib-samples", "32",
                           "--samples", "16", "--target", "x86", "-o", str(tmp_path / env_mode)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_cli_in_a_log_prints_step_lines_not_bars(tmp_path):
    """stderr is a pipe here, as in CI: no tqdm carriage returns (``auto``: lines, here only for
    steps of 2 s or more); ``all`` prints every step as one timestamped line, in order."""
    r = _cli("auto", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    assert all(float(ln.rsplit(": ", 1)[1].rstrip("s")) >= 2.0
               for ln in r.stderr.splitlines() if LINE.match(ln) and ln.endswith("s"))
    r = _cli("all", tmp_path)
    assert r.returncode == 0 and "\r" not in r.stderr
    steps = [ln for ln in r.stderr.splitlines() if LINE.match(ln)]
    assert len(steps) >= 10, r.stderr
    stamps = [float(re.match(r"^\[\s*([\d.]+)s\]", ln).group(1)) for ln in steps]
    assert stamps == sorted(stamps)
    known = re.compile(r"^(load|FP32 reference|pass \w+|target checks|calibration|report"
                       r"|target x86: (int8 lowering|emit|verify in the runtime|per-layer error))\b")
    assert all(known.match(ln.split("] ", 1)[1]) for ln in steps), steps
    for first, then in [("load", "calibration"), ("calibration", "target x86: emit"),
                        ("target x86: emit", "report")]:
        assert [i for i, ln in enumerate(steps) if f"] {first}" in ln][0] < \
            [i for i, ln in enumerate(steps) if f"] {then}" in ln][0]
    quiet = _cli("off", tmp_path)
    assert quiet.returncode == 0 and not [ln for ln in quiet.stderr.splitlines() if LINE.match(ln)]

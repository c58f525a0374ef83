"""Plain progress lines for logs that are not a terminal (CI): one line per step that took
``MIN_SECONDS`` or more, with the run's elapsed time, and for long loops a line at most every
``TICK_SECONDS`` with the position and the time left. On a terminal the tqdm bars do this job and
these lines stay off; the Python API prints nothing unless asked (``compress(progress_lines=True)``).

Also the estimate a long training loop owes its user before it goes on (``estimate``): printed
on a terminal as well, since a bar's rate is no promise about the next hour.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

__all__ = ["ESTIMATE_SECONDS", "MIN_SECONDS", "TICK_SECONDS", "enable", "disable", "enabled", "step", "tick", "estimate"]

MIN_SECONDS = 2.0  # a step shorter than this is not worth a line
TICK_SECONDS = 30.0  # a long loop says where it is at most this often
ESTIMATE_SECONDS = 60.0  # a loop expected to take this long or more says so (``estimate``)

_state: dict = {"on": False, "t0": 0.0, "last": {}, "stream": None, "say": False, "min": MIN_SECONDS}


def enable(stream=None, *, lines: bool = True, every_step: bool = False) -> None:
    """Start a run's clock; ``lines``: print step lines (off: only ``estimate`` speaks);
    ``every_step``: a line for every step, however short (``AUTOGLM_PROGRESS=all``)."""
    _state.update(on=lines, t0=time.perf_counter(), last={}, stream=stream, say=True,
                  min=0.0 if every_step else None)


def disable() -> None:
    _state.update(on=False, say=False)


def enabled() -> bool:
    return bool(_state["on"])


def _print(text: str) -> None:
    stream = _state["stream"] or sys.stderr
    elapsed = time.perf_counter() - _state["t0"]
    print(f"[{elapsed:7.1f}s] {text}", file=stream, flush=True)


@contextmanager
def step(name: str):
    """Time a step; a line when it took ``MIN_SECONDS`` or more (lines mode only). The block may
    set ``detail`` on the yielded dict (e.g. ``"128 samples"``)."""
    info = {"detail": ""}
    t = time.perf_counter()
    try:
        yield info
    finally:
        dt = time.perf_counter() - t
        floor = MIN_SECONDS if _state["min"] is None else _state["min"]
        if _state["on"] and dt >= floor:
            detail = f" ({info['detail']})" if info["detail"] else ""
            _print(f"{name}{detail}: {dt:.1f}s")


def tick(name: str, done: int, total: int, started: float, extra: str = "") -> None:
    """Inside a loop (lines mode): at most one line per ``TICK_SECONDS`` with done/total and the
    time left at the rate so far, and a last one at the end of a loop that spoke before;
    ``started``: the loop's ``perf_counter()`` at its start."""
    if not _state["on"] or done <= 0:
        return
    now = time.perf_counter()
    spoke = name in _state["last"]
    if now - _state["last"].get(name, started) < TICK_SECONDS and not (done >= total and spoke):
        return
    _state["last"][name] = now
    left = (now - started) / done * (total - done)
    tail = f", {extra}" if extra else ""
    _print(f"{name}: {done}/{total}, ~{_duration(left)} left{tail}")


def estimate(name: str, done: int, total: int, started: float, hint: str, write=None) -> str | None:
    """The whole loop's expected duration from its first ``done`` iterations, said once when it
    is ``ESTIMATE_SECONDS`` (a minute) or more; ``write`` (e.g. ``tqdm.write``) instead of the
    plain line. The text."""
    if not _state["say"] or done <= 0:
        return None
    per = (time.perf_counter() - started) / done
    total_s = per * total
    if total_s < ESTIMATE_SECONDS:
        return None
    text = f"{name}: ~{_duration(total_s)} for {total} steps ({per:.2f} s a step on this machine); {hint}"
    if write is not None and not _state["on"]:
        write(text)
    else:
        _print(text)
    return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

"""Run ARM artifacts (.tflite or ncnn .param/.bin) in aarch64 LiteRT / ncnn under qemu-aarch64:
their outputs on the feeds and the guest instructions one inference costs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from autoglm_compress.targets.arm_emulation.environment import (
    Environment,
    guest_command,
    host_command,
    setup,
)

__all__ = ["MAX_JOBS", "GuestError", "Job", "run", "run_jobs"]

_HERE = Path(__file__).resolve().parent
_SOURCES = {"tflite": str(_HERE.parent / "tflite" / "litert_run.py"),
            "ncnn": str(_HERE.parent / "ncnn" / "ncnn_run.py")}


# the instruction-count plugin records at most this many markers per process (environment.py's
# marks[64]); each job takes two
MAX_MARKS = 64
MAX_JOBS = MAX_MARKS // 2


class GuestError(RuntimeError):
    """The artifact did not run in the aarch64 runtime (one line: its last error line)."""


@dataclasses.dataclass
class Job:
    """One artifact to run: ``files`` (``{"model": .tflite}`` or ``{"param": …, "bin": …}``),
    ``format`` (tflite / ncnn), ``precision``, ncnn's ``io`` (blob names, output shapes: the
    artifact's ``ncnn_io``), LiteRT ``kernels`` (``xnnpack``: the default delegate, or
    ``reference``: built-in kernels only) and ``n``: how many of the feeds (None: all)."""

    files: dict[str, Path]
    format: str
    precision: str = "fp32"
    io: dict | None = None
    kernels: str = "xnnpack"
    n: int | None = None

    def spec(self, feeds: int) -> dict:
        if self.format not in _SOURCES:
            raise ValueError(f"format {self.format!r}: tflite or ncnn")
        if self.kernels not in ("xnnpack", "reference"):
            raise ValueError(f"kernels {self.kernels!r}: xnnpack or reference")
        if self.format == "ncnn" and self.io is None:
            raise ValueError("ncnn needs the artifact's ncnn_io (blob names, output shapes)")
        return {"format": self.format, "precision": self.precision, "io": self.io,
                "kernels": self.kernels, "n": feeds if self.n is None else min(self.n, feeds),
                "files": {k: str(Path(p).resolve()) for k, p in self.files.items()}}


def run_jobs(
    jobs: list[Job],
    feeds: list[dict[str, np.ndarray]],
    *,
    cpu: str = "cortex-a72",
    env: Environment | None = None,
    timeout: float = 1800,
    arch: str = "aarch64",
) -> list[tuple[list[list[np.ndarray]], float]]:
    """Run ``jobs`` one after the other in ONE aarch64 Python process (one start-up) under
    ``qemu-aarch64 -cpu cpu``, one thread (``arch="x86_64"``: this machine's Python and x86
    runtimes under ``qemu-x86_64 -cpu cpu``, for checking counts against x86 timings); more than
    :data:`MAX_JOBS` jobs run in one process per :data:`MAX_JOBS`. Per job: the outputs per feed and the guest
    instructions per inference (counted between markers after one warm-up inference; 0.0
    for no feeds). Raises :class:`~.environment.Unavailable` when the runner cannot be set up
    here and :class:`GuestError` when an artifact does not run."""
    env = env or setup()
    if len(jobs) > MAX_JOBS:  # the plugin keeps MAX_MARKS markers: one guest process per chunk
        return [r for i in range(0, len(jobs), MAX_JOBS)
                for r in run_jobs(jobs[i:i + MAX_JOBS], feeds, cpu=cpu, env=env,
                                  timeout=timeout, arch=arch)]
    specs = [j.spec(len(feeds)) for j in jobs]
    with tempfile.TemporaryDirectory(prefix="agc_arm_") as tmp:
        t = Path(tmp)
        np.savez(t / "feeds.npz", **{f"{i}/{k}": np.asarray(v) for i, f in enumerate(feeds)
                                     for k, v in f.items()})
        spec = {"jobs": specs, "n": len(feeds), "feeds": str(t / "feeds.npz"),
                "out": str(t / "out.npz"), "sources": _SOURCES}
        (t / "spec.json").write_text(json.dumps(spec))
        counts = t / "insns.txt"
        command = guest_command if arch == "aarch64" else host_command
        cmd = command(env, str(_HERE / "guest.py"), str(t / "spec.json"), cpu=cpu,
                      plugin_out=counts)
        names = ", ".join(Path(next(iter(j.files.values()))).name for j in jobs)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GuestError(f"{arch} run of {names} timed out after {timeout:.0f} s") from None
        if p.returncode != 0 or not (t / "out.npz").exists():
            lines = [ln.strip() for ln in p.stderr.splitlines() if ln.strip()] or \
                [f"exit status {p.returncode}"]
            raise GuestError(f"{arch} ({cpu}) cannot run {names}: {lines[-1]}")
        marks = [int(ln.split()[1]) for ln in counts.read_text().splitlines()
                 if ln.startswith("mark ")] if counts.exists() else []
        outs: list[list[list[np.ndarray]]] = [[[] for _ in range(s["n"])] for s in specs]
        with np.load(t / "out.npz") as z:
            for key in sorted(z.files, key=lambda k: tuple(int(x) for x in k.split("/"))):
                j, i, _ = (int(x) for x in key.split("/"))
                outs[j][i].append(z[key])
    if len(marks) != 2 * len(jobs):
        raise GuestError(f"the instruction-count plugin recorded {len(marks)} markers, "
                         f"not {2 * len(jobs)}")
    return [(o, (marks[2 * j + 1] - marks[2 * j]) / s["n"] if s["n"] else 0.0)
            for j, (o, s) in enumerate(zip(outs, specs, strict=True))]


def run(
    files: dict[str, Path],
    format: str,
    feeds: list[dict[str, np.ndarray]],
    *,
    precision: str = "fp32",
    io: dict | None = None,
    cpu: str = "cortex-a72",
    kernels: str = "xnnpack",
    env: Environment | None = None,
) -> tuple[list[list[np.ndarray]], float]:
    """One artifact on ``feeds`` in aarch64 LiteRT / ncnn (see :class:`Job`, :func:`run_jobs`):
    ``(outputs per feed, guest instructions per inference)``."""
    return run_jobs([Job(files, format, precision, io, kernels)], feeds, cpu=cpu, env=env)[0]

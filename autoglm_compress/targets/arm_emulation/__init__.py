"""ARM artifacts run on ARM code: aarch64 LiteRT and ncnn under ``qemu-aarch64`` (Debian's
qemu-user), with guest instruction counts per inference as the ARM cost figure.

``setup()`` builds (once, cached) the aarch64 root, wheels and instruction-count plugin;
``run(files, format, feeds, …)`` → ``(outputs, insns_per_inference)``; ``available()`` says
whether the runner can be used here (``(True, "")`` or ``(False, one line: what to install)``).
Attributes import lazily."""

from __future__ import annotations

import importlib

__all__ = ["GuestError", "Unavailable", "available", "run", "setup"]

_WHERE = {"setup": "environment", "Unavailable": "environment", "Environment": "environment", "run": "runner",
          "GuestError": "runner", "available": "verify", "verify_arm": "verify",
          "arm_insns": "verify"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Targets by the name the user types (``--target``)."""

from __future__ import annotations

from autoglm_compress.errors import ConfigError
from autoglm_compress.targets.base import Artifact, Target, VerifyContext
from autoglm_compress.targets.cuda import CudaTarget
from autoglm_compress.targets.x86 import X86Target

__all__ = ["Artifact", "Target", "VerifyContext", "TARGETS", "get_target"]

TARGETS: dict[str, type[Target]] = {X86Target.name: X86Target, CudaTarget.name: CudaTarget}


def get_target(name: str, **options) -> Target:
    if name not in TARGETS:
        raise ConfigError(f"unknown target {name!r}; available: {', '.join(sorted(TARGETS))}")
    return TARGETS[name](**options)

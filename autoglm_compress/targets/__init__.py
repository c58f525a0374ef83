"""Targets: one folder each (options, target class, lowering table), found through the registry.

Kept light: the registry and option classes import without onnx_ir or torch (``--help`` is fast);
``Artifact``, ``Target`` and ``VerifyContext`` are imported on first use.
"""

from __future__ import annotations

import importlib

from autoglm_compress.targets.registry import (
    TARGETS,
    get_target,
    register_target,
    target_names,
    target_options_class,
)

__all__ = [
    "Artifact", "Target", "VerifyContext", "TARGETS", "get_target", "register_target",
    "target_names", "target_options_class", "verify_in_runtime",
]


def __getattr__(name: str):
    if name in ("Artifact", "Target", "VerifyContext", "verify_in_runtime"):
        return getattr(importlib.import_module("autoglm_compress.targets.base"), name)
    raise AttributeError(f"module 'autoglm_compress.targets' has no attribute {name!r}")

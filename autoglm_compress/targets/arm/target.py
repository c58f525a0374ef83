"""``--target arm``: the formats (``--format``) and the Target class that writes each."""

from __future__ import annotations

import importlib

from autoglm_compress.targets.base import Target
from autoglm_compress.targets.tflite.target import TFLiteTarget as TARGET  # ``get_target("arm")``

__all__ = ["FORMATS", "TARGET", "targets_for"]

# format → (module, Target class): each format is its own target package
FORMATS = {
    "tflite": ("autoglm_compress.targets.tflite.target", "TFLiteTarget"),
    "ncnn": ("autoglm_compress.targets.ncnn.target", "NcnnTarget"),
}


def _cls(fmt: str) -> type[Target]:
    module, name = FORMATS[fmt]
    return getattr(importlib.import_module(module), name)


def targets_for(options) -> list[type[Target]]:
    """``--format``: one format, or ``all`` (every format, one calibration)."""
    fmt = getattr(options, "format", "tflite")
    return [_cls(f) for f in (FORMATS if fmt == "all" else (fmt,))]


"""autoglm-compress: load a model into one IR (onnx_ir), transform it with passes, lower it per target,
verify every artifact in its runtime. Attributes import lazily (``--help`` must not load torch)."""

from __future__ import annotations

import importlib

__all__ = ["compress", "load", "CompressResult", "CompressConfig", "CompressError"]

_WHERE = {
    "compress": "autoglm_compress.api",
    "CompressResult": "autoglm_compress.api",
    "CompressConfig": "autoglm_compress.config",
    "CompressError": "autoglm_compress.errors",
    "load": "autoglm_compress.frontend",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'autoglm_compress' has no attribute {name!r}")

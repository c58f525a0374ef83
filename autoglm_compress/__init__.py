"""autoglm-compress: load a model into one IR (onnx_ir), transform it with passes, lower it per target,
verify every artifact in its runtime."""

from __future__ import annotations

from autoglm_compress.api import CompressResult, compress
from autoglm_compress.errors import CompressError
from autoglm_compress.frontend import load

__all__ = ["compress", "load", "CompressResult", "CompressError"]

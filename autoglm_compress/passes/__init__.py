"""IR → IR passes, one per file. Importing this package registers them by name."""

from __future__ import annotations

from autoglm_compress.passes.base import CompressPass, PassConfig, get_pass, register, registered

__all__ = ["CompressPass", "PassConfig", "get_pass", "register", "registered"]

# Built-in passes register themselves on import.
from autoglm_compress.passes import (  # noqa: E402,F401
    bias_correction,
    cleanup,
    decompose_lpnorm,
    distill,
    equalize,
    fold_bn,
    fold_shapes,
    fp16,
    fuse_gelu,
    fuse_layernorm,
    prune,
    qat,
    quantize,
    quantize_dynamic,
    smoothquant,
    sparsify,
)

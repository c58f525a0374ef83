"""Options of the cuda target (light: read by the CLI for ``--help``)."""

from __future__ import annotations

import dataclasses

from autoglm_compress.config import field

__all__ = ["Options"]


@dataclasses.dataclass(frozen=True)
class Options:
    """Target cuda"""

    build_engine: bool = field(
        False, "cuda: build and run TensorRT engines (needs a GPU and tensorrt).",
        flat="build_engine",
    )

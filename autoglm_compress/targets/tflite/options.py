"""Options of the arm target (light: read by the CLI for ``--help``)."""

from __future__ import annotations

import dataclasses

from autoglm_compress.config import field

__all__ = ["Options"]


@dataclasses.dataclass(frozen=True)
class Options:
    """Target arm"""

    threads: int = field(2, "arm: LiteRT interpreter threads for verification and latency.",
                         flat="arm_threads", min=1, max=64)

"""Options of the x86 target (light: read by the CLI for ``--help``)."""

from __future__ import annotations

import dataclasses

from autoglm_compress.config import field

__all__ = ["Options"]


@dataclasses.dataclass(frozen=True)
class Options:
    """Target x86"""

    reduce_range: bool = field(
        True,
        "x86 INT8: 7-bit weights; the full 8-bit range saturates int16 sums on AVX2 without VNNI.",
        flat="reduce_range",
        cli="--reduce-range/--full-range",
    )
    activation_dtype: str = field(
        "uint8",
        "x86 INT8 activation type: uint8 (fused into QLinear* whatever the fan-out) or int8.",
        flat="x86_activation_dtype",
        choices=("uint8", "int8"),
    )

"""Options of the x86 target (light: read by the CLI for ``--help``)."""

from __future__ import annotations

import dataclasses

from autoglm_compress.config import field

__all__ = ["Options"]


@dataclasses.dataclass(frozen=True)
class Options:
    """Target x86"""

    reduce_range: bool | None = field(
        None,
        "x86 INT8: 7-bit weights everywhere (--reduce-range) or 8-bit everywhere (--full-range). "
        "Default: 8-bit everywhere; on AVX2 without VNNI the layers whose int16 pair sums "
        "(VPMADDUBSW) could saturate store them as uint8 (onnxruntime's U8U8 kernel cannot).",
        flat="reduce_range",
        cli="--reduce-range/--full-range",
    )
    cpu: str = field(
        "auto",
        "x86 CPU the INT8 artifact is for: avx2 (no VNNI: int16 pair sums can saturate), vnni "
        "(AVX512-VNNI / AVX-VNNI: they cannot), or auto (this machine's CPU flags).",
        flat="x86_cpu",
        cli="--cpu",
        choices=("auto", "avx2", "vnni"),
    )
    activation_dtype: str = field(
        "uint8",
        "x86 INT8 activation type: uint8 (fused into QLinear* whatever the fan-out) or int8.",
        flat="x86_activation_dtype",
        choices=("uint8", "int8"),
    )

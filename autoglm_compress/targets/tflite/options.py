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
    io: str = field(
        "float",
        "arm INT8 input/output type: float (QUANTIZE/DEQUANTIZE inside the model), or int8 / "
        "uint8 for full-integer IO (the scales are in the report's io).",
        flat="arm_io", cli="--io", choices=("float", "int8", "uint8"),
    )
    format: str = field(
        "tflite",
        "arm: what to write — tflite (LiteRT), ncnn (.ncnn.param/.ncnn.bin, run in ncnn), or all "
        "(both, one calibration).",
        flat="arm_format", cli="--format", choices=("tflite", "ncnn", "all"),
    )

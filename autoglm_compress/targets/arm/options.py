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
    ncnn_int8_layers: str = field(
        "all",
        "arm, ncnn INT8: all (every conv / FC int8 — right for ARM, where ncnn's int8 kernels pay) "
        "or measured (keep a layer float where ncnn's int8 kernel times slower than its float one "
        "on this machine — for ncnn deployed on x86, whose int8 depthwise kernels are slow).",
        flat="ncnn_int8_layers", cli="--ncnn-int8-layers", choices=("all", "measured"),
    )

"""What data-driven passes receive besides the IR: a :class:`PassContext`.

A pass declares what it needs (``needs = frozenset({"data"})``); the pipeline checks every pass's
needs before the first one runs, so a missing calibration source stops the run up front, naming the
pass and what to give. Items:

- ``data``: the calibration source (opened once; ``data.take(n)`` yields feeds),
- ``teacher``: the FP32 model (after the graph passes) that distillation and fallback compare with,
- ``stats``: calibration statistics (after ``lowering.calibrate``),
- ``target``: the target being lowered for (its ``scheme()``),
- ``quantizer``: ``quantizer(fp32_model, fake_weights=False, bias_correction=True) -> model``,
  the target's INT8 lowering, for passes that re-quantize (QAT).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from autoglm_compress.errors import ConfigError

__all__ = ["PassContext", "NEEDS"]

NEEDS = {
    "data": "calibration data: give --calib DATA (or --calib-random)",
    "teacher": "the FP32 model as teacher (set by the compress flow)",
    "stats": "calibration statistics: it runs in the --int8 lowering, after calibration",
    "target": "a target: it runs in the per-target lowering",
    "quantizer": "the target's INT8 quantizer: it runs in the --int8 lowering",
}


@dataclasses.dataclass
class PassContext:
    data: Any = None
    teacher: Any = None
    stats: Any = None
    target: Any = None
    quantizer: Callable | None = None
    device: str | None = None
    progress: bool = False
    quantized_from: Any = None  # the FP32 model the current INT8 model was quantized from
    train_data: Any = None  # --train-data: what distillation trains on (default: ``data``)
    kept_channels: dict | None = None  # prune: value -> (channel axis, kept indices), for distill

    def check(self, pass_name: str, needs) -> None:
        """Raise one line naming the pass and the first thing it needs that is missing."""
        for item in sorted(needs):
            if getattr(self, item, None) is None:
                raise ConfigError(f"pass {pass_name!r} needs {NEEDS.get(item, item)}")

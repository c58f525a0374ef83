"""Calibration for INT8 post-training quantization: data sources, streaming observers, qparams.

Statistics are target-independent: observers report float ranges; targets turn them into
scale/zero point under their own scheme (:func:`compute_qparams`).
"""

from __future__ import annotations

from autoglm_compress.calibration.data import (
    CalibrationSource,
    ImagePreprocess,
    batched,
    open_calibration_source,
)
from autoglm_compress.calibration.observers import (
    EntropyObserver,
    HistogramObserver,
    MinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    make_observer,
)
from autoglm_compress.calibration.qparams import MIN_SCALE, compute_qparams, quant_range

__all__ = [
    "CalibrationSource",
    "ImagePreprocess",
    "batched",
    "open_calibration_source",
    "Observer",
    "MinMaxObserver",
    "HistogramObserver",
    "PercentileObserver",
    "EntropyObserver",
    "MSEObserver",
    "make_observer",
    "MIN_SCALE",
    "compute_qparams",
    "quant_range",
]

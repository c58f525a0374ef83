"""The torch executor: runs the IR for reference outputs, calibration hooks and gradients."""

from __future__ import annotations

from autoglm_compress.runtime.device import default_device
from autoglm_compress.runtime.executor import OPS, TorchExecutor, run_model

__all__ = ["TorchExecutor", "run_model", "OPS", "default_device"]

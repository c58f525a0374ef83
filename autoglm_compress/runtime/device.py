"""Which torch device the executor uses: ``AUTOGLM_DEVICE`` if set, else CUDA when available, else CPU."""

from __future__ import annotations

import os

import torch

__all__ = ["default_device"]


def default_device() -> torch.device:
    want = os.environ.get("AUTOGLM_DEVICE")
    if want:
        return torch.device(want)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

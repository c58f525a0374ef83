"""The arm target, TFLite part (options.py, target.py, lowering.toml). Attributes import lazily."""

from __future__ import annotations

import importlib


def __getattr__(name: str):
    return getattr(importlib.import_module(__name__ + ".target"), name)

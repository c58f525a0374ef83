"""The arm target: one name, several formats (``--format tflite|ncnn|all``), each its own target
package (``targets/tflite``, ``targets/ncnn``) with its own rules; this package holds the options
they share and chooses among them. Attributes import lazily."""

from __future__ import annotations

import importlib


def __getattr__(name: str):
    return getattr(importlib.import_module(__name__ + ".target"), name)

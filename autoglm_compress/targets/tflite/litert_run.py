"""``litert_runner``: a LiteRT interpreter on a ``.tflite`` file, as a function feed → outputs
(full-integer IO quantized / dequantized with the file's own scales). Light (numpy and the
runtime only): the arm target verifies with it, and ``verify-bundle`` runs bundles with it where
neither torch nor onnx is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["interpreter", "litert_runner", "to_io", "from_io"]


def _without_line(fn, line: bytes):
    """``fn()`` with fd 2 captured, then passed on without ``line``. (Imports inside: the aarch64
    guest compiles this file's functions alone, with numpy only.)"""
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            return fn()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [ln for ln in sink.read().splitlines(keepends=True) if ln.rstrip() != line]
            if kept:
                os.write(2, b"".join(kept))


def interpreter(path: Path | str, **kw):
    """A LiteRT ``Interpreter`` on ``path`` with its tensors allocated (the delegate is applied
    there), without the INFO line LiteRT's C++ logger writes to fd 2 once per process when it
    applies XNNPACK (noise in a terminal or CI log, not switchable from Python); anything else
    it prints is passed on."""
    from ai_edge_litert.interpreter import Interpreter

    def make():
        it = Interpreter(model_path=str(path), **kw)
        it.allocate_tensors()
        return it

    return _without_line(make, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")


def to_io(x: np.ndarray, d: dict) -> np.ndarray:
    """A float feed as input tensor ``d`` (interpreter details) takes it: quantized with the
    file's scale and zero point for full-integer IO, else cast."""
    if d["dtype"] in (np.int8, np.uint8):
        s, z = d["quantization"]
        info = np.iinfo(d["dtype"])
        x = np.clip(np.rint(x / s) + z, info.min, info.max)
    return x.astype(d["dtype"])


def from_io(y: np.ndarray, d: dict) -> np.ndarray:
    """Output tensor ``d``'s value as float (dequantized for full-integer IO)."""
    if d["dtype"] in (np.int8, np.uint8):
        s, z = d["quantization"]
        return (y.astype(np.float32) - z) * s
    return y


def litert_runner(path: Path, threads: int, reference_kernels: bool = False):
    """``make_runner`` for the shared verifier: a LiteRT interpreter on the file."""

    def make():
        from ai_edge_litert.interpreter import OpResolverType

        kw = {"num_threads": threads}
        if reference_kernels:
            kw["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        it = interpreter(path, **kw)
        ins, outs = it.get_input_details(), it.get_output_details()

        def run(feed):
            for d in ins:
                it.set_tensor(d["index"], to_io(np.asarray(feed[d["name"]]), d))
            it.invoke()
            return [from_io(np.array(it.get_tensor(d["index"])), d) for d in outs]

        return run

    return make

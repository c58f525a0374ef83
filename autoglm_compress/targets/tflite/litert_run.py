"""``litert_runner``: a LiteRT interpreter on a ``.tflite`` file, as a function feed → outputs
(full-integer IO quantized / dequantized with the file's own scales). Light (numpy and the
runtime only): the arm target verifies with it, and ``verify-bundle`` runs bundles with it where
neither torch nor onnx is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["litert_runner"]


def litert_runner(path: Path, threads: int, reference_kernels: bool = False):
    """``make_runner`` for the shared verifier: a LiteRT interpreter on the file."""

    def make():
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        kw = {"num_threads": threads}
        if reference_kernels:
            kw["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        it = Interpreter(model_path=str(path), **kw)
        it.allocate_tensors()
        ins, outs = it.get_input_details(), it.get_output_details()

        def run(feed):
            for d in ins:
                x = np.asarray(feed[d["name"]])
                if d["dtype"] in (np.int8, np.uint8):  # full-integer IO: quantize the feed
                    s, z = d["quantization"]
                    info = np.iinfo(d["dtype"])
                    x = np.clip(np.rint(x / s) + z, info.min, info.max)
                it.set_tensor(d["index"], x.astype(d["dtype"]))
            it.invoke()
            got = []
            for d in outs:
                y = np.array(it.get_tensor(d["index"]))
                if d["dtype"] in (np.int8, np.uint8):
                    s, z = d["quantization"]
                    y = (y.astype(np.float32) - z) * s
                got.append(y)
            return got

        return run

    return make

"""``ncnn_runner``: an ncnn Net on a .param/.bin pair, fed and read as the verifier wants (numpy and
the ncnn package only). The x86 verification, the pre-flight check, bundles and the aarch64 guest
(which compiles this file's source on its own, without the package) share it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["ncnn_runner"]


def ncnn_runner(param: Path, binf: Path, io: dict, precision: str, threads: int):
    """``make_runner`` for the shared verifier: an ncnn Net on the files, options by precision."""

    def make():
        import ncnn

        net = ncnn.Net()
        o = net.opt
        o.num_threads = threads
        fp16 = precision == "fp16"
        o.use_fp16_storage = o.use_fp16_packed = fp16
        o.use_fp16_arithmetic = False
        o.use_bf16_storage = False
        o.use_int8_inference = precision == "int8"
        o.use_vulkan_compute = False
        if net.load_param(str(param)) != 0 or net.load_model(str(binf)) != 0:
            raise RuntimeError(f"ncnn could not load {param.name} / {binf.name}")
        ins, outs = io["inputs"], io["outputs"]
        shapes = io["output_shapes"]

        def run(feed):
            ex = net.create_extractor()
            keep = []
            for name, blob in ins.items():
                dt = np.int32 if name in io.get("int32_inputs", ()) else np.float32
                x = np.asarray(feed[name]).astype(dt)
                s = list(x.shape)  # the batch axis dropped: 0, or a sequence-first input's 1
                b = 0 if s[0] == 1 or 1 not in s else s.index(1)
                x = np.ascontiguousarray(x.reshape(s[:b] + s[b + 1:]))
                # ncnn.Mat(x) wraps the numpy buffer with no reference count: an in-place first
                # layer (BatchNorm, ReLU) then crashes the extractor. clone() owns its memory.
                mat = ncnn.Mat(x).clone()
                keep.append(mat)
                ex.input(blob, mat)
            got = []
            for name, blob in outs.items():
                ret, m = ex.extract(blob)
                if ret != 0:
                    raise RuntimeError(f"ncnn extract {blob!r} failed ({ret})")
                got.append(np.array(m).reshape(shapes[name]))
            del keep
            return got

        return run

    return make

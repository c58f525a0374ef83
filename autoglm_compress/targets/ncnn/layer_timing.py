"""Time each int8 conv / FC / LSTM / GRU / RNN layer of an ncnn model against its float twin,
alone, in this machine's ncnn (``--ncnn-int8-layers measured``), or count the guest instructions
each costs in aarch64 ncnn under qemu-aarch64 (``--ncnn-int8-layers measured-arm``).

ncnn's int8 kernels differ by CPU: on ARM they beat float throughout, on x86 its int8 depthwise
and small-channel convolutions run up to 2.5× slower than float ones (bench/RESULTS.md). Each
layer is run as a one-layer net — an Input of the layer's input shape (random data) and the
layer as lowered, float output (a requantizing layer's int8 output scale dropped) — FP32 and INT8
interleaved, median of ``repeats``. The float twin is the same node lowered at fp32 (its
dequantized weights), so the only difference is the kernel.

``count_int8_layers`` writes all the one-layer nets first and runs them in one aarch64 Python
process (targets/arm_emulation ``run_jobs``: one qemu start-up per ``MAX_JOBS`` = 32 nets, the
instruction-count plugin's marker limit), each net's input named apart so
one feed dict serves all; per net one warm-up inference, then one counted between the guest's
markers. Both counts include the same Python-side call (Mat conversion, extractor), so their
difference is the kernels'.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np

from autoglm_compress.targets.ncnn.param import NcnnGraph

__all__ = ["count_int8_layers", "time_int8_layers"]

_WEIGHTED = frozenset({"Convolution", "ConvolutionDepthWise", "InnerProduct", "LSTM", "GRU",
                       "RNN"})


def _pairs(int8_io: dict, fp32_io: dict):
    """(node name, float layer, int8 layer, input shape) of each int8 conv / FC / RNN layer."""
    floats = {layer.source: layer for layer in fp32_io["graph"].layers
              if layer.type in _WEIGHTED and layer.source}
    for layer in int8_io["graph"].layers:
        src = layer.source
        if layer.type in _WEIGHTED and src in int8_io["int8_inputs"] and src in floats:
            yield src, floats[src], layer, int8_io["int8_inputs"][src]


def _one_layer(layer, shape: list[int], int8: bool) -> tuple[str, bytes]:
    g = NcnnGraph()
    dims = list(shape[1:])
    keys = {1: [0], 2: [1, 0], 3: [2, 1, 0], 4: [2, 11, 1, 0]}[len(dims)]
    g.add("Input", "in", [], ["in"], dict(zip(keys, dims)))
    one = copy.copy(layer)
    one.params = dict(layer.params)
    one.weights = list(layer.weights)
    if int8 and one.params.get(8, 0) > 100:  # requantize: int8 out → float out, scale dropped
        one.params[8] -= 100
        one.weights = one.weights[:-1]
    one.inputs, one.outputs = ["in"], ["out"]
    g.layers.append(one)
    return g.param_text(), g.bin_bytes()


def _net(folder: Path, tag: str, files: tuple[str, bytes], int8: bool, threads: int):
    import ncnn

    p, b = folder / f"{tag}.param", folder / f"{tag}.bin"
    p.write_text(files[0])
    b.write_bytes(files[1])
    net = ncnn.Net()
    o = net.opt
    o.num_threads = threads
    o.use_int8_inference = int8
    o.use_fp16_storage = o.use_fp16_packed = o.use_fp16_arithmetic = False
    o.use_vulkan_compute = False
    if net.load_param(str(p)) != 0 or net.load_model(str(b)) != 0:
        raise RuntimeError(f"ncnn could not load the one-layer net {tag}")
    return net


def time_int8_layers(int8_io: dict, fp32_io: dict, threads: int, repeats: int = 15) -> dict:
    """{node name: {"fp32_ms", "int8_ms"}} for each int8 layer of ``int8_io`` (lower_to_ncnn(...,
    graph=True) outputs of the same QDQ model at int8 and fp32)."""
    import ncnn

    rng = np.random.default_rng(0)
    out = {}
    with tempfile.TemporaryDirectory(prefix="agc_ncnn_layers_") as tmp:
        for src, fl, layer, shape in _pairs(int8_io, fp32_io):
            nets = {k: _net(Path(tmp), f"l{len(out)}_{k}",
                            _one_layer(lay, shape, k == "int8"), k == "int8", threads)
                    for k, lay in (("fp32", fl), ("int8", layer))}
            data = rng.normal(0, 1, shape[1:]).astype(np.float32)
            x = ncnn.Mat(data).clone()  # Mat(data) borrows data's buffer: keep data alive
            times = {"fp32": [], "int8": []}
            for i in range(repeats + 2):
                for k, net in nets.items():
                    t0 = time.perf_counter()
                    ex = net.create_extractor()
                    ex.input("in", x)
                    ex.extract("out")
                    if i >= 2:  # two warm-up rounds
                        times[k].append(time.perf_counter() - t0)
            out[src] = {f"{k}_ms": round(float(np.median(v)) * 1e3, 4) for k, v in times.items()}
    return out


def count_int8_layers(int8_io: dict, fp32_io: dict, cpu: str, env=None) -> dict:
    """{node name: {"fp32_insns", "int8_insns"}} for each int8 layer of ``int8_io`` (as
    :func:`time_int8_layers`): guest instructions of one inference of the layer alone in aarch64
    ncnn, one thread, under ``qemu-aarch64 -cpu cpu`` — 16 layers per guest process. Raises
    the runner's ``Unavailable`` / ``GuestError``."""
    from autoglm_compress.targets.arm_emulation.runner import Job, run_jobs

    rng = np.random.default_rng(0)
    names, jobs, feed = [], [], {}
    with tempfile.TemporaryDirectory(prefix="agc_ncnn_arm_layers_") as tmp:
        for src, fl, layer, shape in _pairs(int8_io, fp32_io):
            key = f"x{len(names)}"
            feed[key] = rng.normal(0, 1, shape).astype(np.float32)
            io = {"inputs": {key: "in"}, "outputs": {"out": "out"},
                  "output_shapes": {"out": [-1]}}
            for k, lay in (("fp32", fl), ("int8", layer)):
                p, b = Path(tmp) / f"{key}_{k}.param", Path(tmp) / f"{key}_{k}.bin"
                text, data = _one_layer(lay, shape, k == "int8")
                p.write_text(text)
                b.write_bytes(data)
                jobs.append(Job({"param": p, "bin": b}, "ncnn", k, io))
            names.append(src)
        if not jobs:
            return {}
        got = run_jobs(jobs, [feed], cpu=cpu, env=env)
    return {src: {"fp32_insns": int(round(got[2 * i][1])),
                  "int8_insns": int(round(got[2 * i + 1][1]))} for i, src in enumerate(names)}

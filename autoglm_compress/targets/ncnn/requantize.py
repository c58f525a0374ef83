"""INT8 blobs between ncnn layers: which int8 conv writes int8 for its readers (requantize), and
why every other int8 reader's input arrives float (the census the report carries).

Facts (ncnn 1.0.20261020's source and runs of hand-built chains in x86 ncnn and in aarch64 ncnn
under qemu, cortex-a76; bench/bench_ncnn_requantize.py): an int8 Convolution /
ConvolutionDepthWise with ``int8_scale_term`` + 100 and a top scale writes int8
(``requantize_from_int32_to_int8``: bias, then its fused activation — any of ncnn's types 0..6:
none, ReLU, LeakyReLU, Clip, Sigmoid, Mish, HardSwish — then rounding at the top scale).
Convolution, ConvolutionDepthWise and InnerProduct read an int8 blob as is (they quantize only a
float one); Split hands the blob on, ReLU (slope 0) and Flatten have int8 kernels, and a Reshape
to 1-D (an FC's flatten) moves int8 bytes right (measured: x86, aarch64). No other layer
reads int8 on the CPU (``convert_layout`` casts nothing back): Pooling, BinaryOp, Swish… would
read the bytes as floats. Measured and refused:

- Concat of int8 blobs: right on x86, wrong values on aarch64 for some channel splits (16+8,
  24+8) and 1.2–1.5× the guest instructions of the float chain where right — stays float;
- max Pooling: no int8 kernel (wrong values on both);
- a Split with a float reader (a residual BinaryOp): one reader needs float, and ncnn has no
  cheaper int8→float step than the writer's own dequantize — stays float.

InnerProduct writes float only (no top scale in ncnn), so it is a reader, never a writer.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from autoglm_compress.targets.ncnn.param import Layer, NcnnGraph

__all__ = ["fuse_graph", "fuse_requantize", "WHY_TYPE", "int8_blobs", "WRITERS", "READERS", "ACTIVATIONS"]

WRITERS = ("Convolution", "ConvolutionDepthWise")  # can requantize their output
READERS = (*WRITERS, "InnerProduct")  # read an int8 blob as is
ACTIVATIONS = (0, 1, 2, 3, 4, 5, 6)  # fused activations ncnn's Requantize applies

PASS_TYPES = ("Split", "ReLU", "Flatten", "Reshape")  # hand int8 on where _passes allows
WHY_TYPE = {
    "Pooling": "Pooling has no int8 kernel in ncnn",
    "Concat": "Concat of int8 blobs is wrong in aarch64 ncnn for some channel splits and slower "
              "than the float one",
    "BinaryOp": "BinaryOp (residual add / mul) has no int8 kernel in ncnn",
    "Eltwise": "Eltwise has no int8 kernel in ncnn",
}
GRAPH_INPUT = "graph input (float)"
GRAPH_OUTPUT = "read as a graph output (float)"
SCALES = "readers quantize at different scales"
FC_WRITER = "written by an InnerProduct (ncnn's InnerProduct writes float only)"
FLOAT_WRITER = "written by a conv/FC kept float"


def _int8(layer: Layer) -> bool:
    return layer.type in READERS and layer.params.get(8, 0) % 100 in (1, 2) \
        and layer.bottom_scale is not None


def _passes(layer: Layer) -> bool:
    """Layers that hand an int8 blob on unchanged in kind (x86 and aarch64 ncnn)."""
    if layer.type == "Split":
        return True
    if layer.type == "ReLU":
        return float(layer.params.get(0, 0.0)) == 0.0
    if layer.type == "Reshape":  # to 1-D (an FC's flatten): measured right on x86 and aarch64
        return set(layer.params) <= {0}
    return layer.type == "Flatten"


def _why(layer: Layer) -> str:
    if layer.type in READERS:
        return "read by a conv/FC kept float"
    if layer.type == "ReLU":
        return "leaky ReLU layer has no int8 kernel in ncnn"
    return WHY_TYPE.get(layer.type, f"{layer.type} has no int8 kernel in ncnn")


def fuse_requantize(layers: list[Layer]) -> tuple[int, dict[str, int]]:
    """Make each int8 conv whose output reaches, through Split / ReLU / Flatten / 1-D Reshape only, int8
    conv / depthwise / FC readers that quantize at one scale write int8 for them (8 += 100, that
    scale appended as its top scale). Returns (writers fused, census): the census counts the
    inputs of int8 readers — ``int8`` (fed by a requantizing conv) or, for each float input,
    the reason it is float."""
    readers: dict[str, list[Layer]] = {}
    writer: dict[str, Layer] = {}
    for layer in layers:
        for b in layer.inputs:
            readers.setdefault(b, []).append(layer)
        for b in layer.outputs:
            writer[b] = layer

    def reach(blob: str) -> tuple[list[Layer], str | None]:
        """The int8 readers ``blob`` reaches through pass-on layers, or why it cannot stay int8."""
        found: list[Layer] = []
        todo = [blob]
        while todo:
            nxt = readers.get(todo.pop(), [])
            if not nxt:
                return [], GRAPH_OUTPUT
            for r in nxt:
                if _int8(r):
                    found.append(r)
                elif _passes(r):
                    todo.extend(r.outputs)
                else:
                    return [], _why(r)
        return found, None

    blocked: dict[int, str] = {}  # id(writer) → why it writes float
    fused = 0
    for layer in layers:
        if layer.type not in WRITERS or not _int8(layer) or layer.params[8] > 100:
            continue
        if layer.params.get(9, 0) not in ACTIVATIONS:
            blocked[id(layer)] = f"activation type {layer.params.get(9)} not requantized"
            continue
        targets, why = reach(layer.outputs[0])
        scales = {np.float32(t.bottom_scale) for t in targets}
        if why is not None:
            why = f"the writer's blob is also {why}" if why == GRAPH_OUTPUT \
                else f"the writer's blob also feeds a float layer: {why}"
        elif len(scales) != 1:
            why = SCALES
        if why is not None:
            blocked[id(layer)] = why
            continue
        layer.params[8] += 100
        layer.weights.append(("raw", np.asarray([scales.pop()], np.float32)))
        fused += 1

    census: Counter = Counter()
    for layer in layers:
        if not _int8(layer):
            continue
        src = writer.get(layer.inputs[0])
        while src is not None and _passes(src):
            src = writer.get(src.inputs[0])
        if src is None or src.type == "Input":
            census[GRAPH_INPUT] += 1
        elif src.type in WRITERS and src.params.get(8, 0) > 100:
            census["int8"] += 1
        elif id(src) in blocked:
            census[blocked[id(src)]] += 1
        elif src.type == "InnerProduct" and _int8(src):
            census[FC_WRITER] += 1
        elif src.type in READERS:
            census[FLOAT_WRITER] += 1
        else:
            census[_why(src)] += 1
    return fused, dict(sorted(census.items(), key=lambda kv: (-kv[1], kv[0])))


def int8_blobs(param_text: str) -> set[str]:
    """The blobs of a written ``.param`` that hold int8 codes at run time (an extractor hands
    them out cast to float, unscaled): tops of requantizing convs (8 > 100) and of the Split /
    ReLU / Flatten / Reshape layers they reach."""
    out: set[str] = set()
    for line in param_text.splitlines()[2:]:
        f = line.split()
        if len(f) < 4:
            continue
        n_in, n_out = int(f[2]), int(f[3])
        ins, tops = f[4:4 + n_in], f[4 + n_in:4 + n_in + n_out]
        requant = any(t.startswith("8=") and int(t[2:]) > 100 for t in f[4 + n_in + n_out:])
        if requant or (f[0] in PASS_TYPES and ins and ins[0] in out):
            out.update(tops)
    return out


def fuse_graph(graph: NcnnGraph) -> int:
    """int8 conv → int8 conv / depthwise / FC readers (directly or through Split, ReLU, Flatten,
    a 1-D Reshape) in ``graph``: the conv writes int8 for them, as ncnn2int8 does — no
    dequantize/quantize between. Sets ``graph.int8_edges`` (the census of int8 readers' inputs:
    int8, or why float) and returns how many convs were fused."""
    fused, graph.int8_edges = fuse_requantize(graph.layers)
    return fused

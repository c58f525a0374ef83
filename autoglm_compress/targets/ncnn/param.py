"""An ncnn model under construction: layers, blobs, and the `.param` text / `.bin` weights writers.

Facts (../shared/formats.md, ncnn's param-and-model-file-structure.md): `.param` starts with the
magic `7767517`, then `layer_count blob_count`, then one line per layer
`Type name n_in n_out in_blobs… out_blobs… k=v…`; keys 0–19 scalars (floats written with a point),
arrays under key −23300−k as `len,v1,v2…`. A blob may be read by one layer only: ``finish`` inserts
a ``Split`` wherever a blob has several readers (int8 inference crashes without it). `.bin`: a
weight block read as "type 0" starts with a u32 tag (0 fp32, 0x01306B47 fp16, 0x000D4B38 int8);
biases and scales are raw fp32; every block is padded to 4 bytes.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np

__all__ = ["NcnnGraph", "Layer", "TAG_FP32", "TAG_FP16", "TAG_INT8"]

TAG_FP32, TAG_FP16, TAG_INT8 = 0x00000000, 0x01306B47, 0x000D4B38


@dataclasses.dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, object] = dataclasses.field(default_factory=dict)
    weights: list[tuple[str, np.ndarray]] = dataclasses.field(default_factory=list)
    # weights: ("tagged", array) for a type-0 block (its dtype picks the tag), ("raw", fp32 array)
    bottom_scale: float | None = None  # an int8 conv's input scale (requantize fusion reads it)
    source: str | None = None  # the IR node a conv / FC layer was lowered from


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):e}"


class NcnnGraph:
    """Layers in execution order; blob names are ONNX value names (made unique and safe)."""

    def __init__(self):
        self.layers: list[Layer] = []
        self._names: set[str] = set()
        self.int8_edges: dict[str, int] = {}  # requantize.fuse_graph's census
        self.recentred: dict[str, float] = {}  # blob → c where it holds c − y (recentre.py)

    def unique(self, base: str) -> str:
        base = "".join(c if c.isalnum() or c in "_.:/-" else "_" for c in (base or "layer"))
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def add(self, type_: str, name: str, inputs, outputs, params=None, weights=None) -> Layer:
        layer = Layer(type_, self.unique(name), list(inputs), list(outputs), dict(params or {}),
                      list(weights or []))
        self.layers.append(layer)
        return layer

    def rename_blob(self, old: str, new: str) -> str:
        """Name blob ``old`` ``new`` in every layer (a graph output keeps its ONNX name) when
        ``new`` is a safe name no blob has yet and a non-Input layer writes ``old``; the name the
        blob has afterwards."""
        blobs = {b for layer in self.layers for b in (*layer.inputs, *layer.outputs)}
        writers = [ly for ly in self.layers if old in ly.outputs]
        safe = all(c.isalnum() or c in "_.:/-" for c in new)
        if old == new or not new or not safe or new in blobs or len(writers) != 1 \
                or writers[0].type == "Input":
            return old
        for layer in self.layers:
            layer.inputs = [new if b == old else b for b in layer.inputs]
            layer.outputs = [new if b == old else b for b in layer.outputs]
        self._names.add(new)
        return new

    def finish(self, outputs=()) -> None:
        """Insert a Split after every blob read by more than one layer, and after every graph
        output (``outputs``: blob names) that any layer reads: the Split's first top keeps the
        output's name and no layer reads it. ncnn's light mode frees a blob once its reader has
        run, so an output read by a layer could not be extracted after another output."""
        readers: dict[str, list[tuple[Layer, int]]] = {}
        for layer in self.layers:
            for i, b in enumerate(layer.inputs):
                readers.setdefault(b, []).append((layer, i))
        outs = set(outputs)
        pending = {b: r for b, r in readers.items() if len(r) > 1 or b in outs}
        out: list[Layer] = []
        for layer in self.layers:
            out.append(layer)
            for j, b in enumerate(layer.outputs):
                if b not in pending:
                    continue
                copies = [f"{b}_split{k}" for k in range(len(pending[b]))]
                for (reader, i), c in zip(pending[b], copies):
                    reader.inputs[i] = c
                src = b
                if b in outs and layer.type != "Input":  # the Split gives ``b`` back
                    src = layer.outputs[j] = self.unique(f"{b}_out")
                    copies.insert(0, b)
                out.append(Layer("Split", self.unique(f"split_{b}"), [src], copies))
        self.layers = out

    def problem(self, inputs, outputs) -> tuple[Layer | None, str] | None:
        """The first structural fault ncnn would fail on at run time (a lowering bug), with the
        layer at fault, or None: layer names unique; every blob written by exactly one layer
        before any layer reads it, and read by at most one (several readers go through a Split);
        each graph input written by an Input layer; each graph output written and read by none."""
        names: set[str] = set()
        producer: dict[str, Layer] = {}
        reader: dict[str, Layer] = {}
        for layer in self.layers:
            if layer.name in names:
                return layer, f"layer name {layer.name!r} is used twice"
            names.add(layer.name)
            for b in layer.inputs:
                if b not in producer:
                    return layer, f"reads blob {b!r} before any layer writes it"
                if b in reader:
                    return layer, (f"reads blob {b!r}, already read by {reader[b].name!r} "
                                   "(several readers need a Split)")
                reader[b] = layer
            for b in layer.outputs:
                if b in producer:
                    return layer, f"writes blob {b!r}, already written by {producer[b].name!r}"
                producer[b] = layer
        for b in inputs:
            if b not in producer or producer[b].type != "Input":
                return producer.get(b), f"graph input blob {b!r} is not written by an Input layer"
        for b in outputs:
            if b not in producer:
                return None, f"graph output blob {b!r} is written by no layer"
            if b in reader:
                return reader[b], (f"reads graph output blob {b!r} (ncnn frees a read blob: "
                                   "the output must be a Split top no layer reads)")
        return None

    def param_text(self) -> str:
        blobs = {b for layer in self.layers for b in (*layer.inputs, *layer.outputs)}
        lines = ["7767517", f"{len(self.layers)} {len(blobs)}"]
        for layer in self.layers:
            parts = [f"{layer.type:<24}", f"{layer.name:<24}", str(len(layer.inputs)),
                     str(len(layer.outputs)), *layer.inputs, *layer.outputs]
            for k, v in layer.params.items():
                if isinstance(v, (list, tuple, np.ndarray)):
                    vals = list(np.asarray(v).reshape(-1))
                    parts.append(f"{-23300 - k}={len(vals)}," + ",".join(_fmt(x) for x in vals))
                else:
                    parts.append(f"{k}={_fmt(v)}")
            lines.append(" ".join(parts))
        return "\n".join(lines) + "\n"

    def bin_bytes(self) -> bytes:
        chunks: list[bytes] = []
        for layer in self.layers:
            for kind, arr in layer.weights:
                a = np.ascontiguousarray(arr)
                if kind == "tagged":
                    tag = {np.dtype("float32"): TAG_FP32, np.dtype("float16"): TAG_FP16,
                           np.dtype("int8"): TAG_INT8}[a.dtype]
                    data = struct.pack("<I", tag) + a.tobytes()
                else:
                    data = a.astype(np.float32).tobytes()
                chunks.append(data + b"\0" * (-len(data) % 4))
        return b"".join(chunks)

"""Lower the IR (ONNX ops, NCHW, batch 1) to ncnn layers (param.py), FP32, FP16 or INT8.

The lowering of each op is a rule (``rules.py``: ``ops_layers.py``, ``ops_math.py``,
``ops_shape.py``, ``ops_rnn.py``, ``lower_tokens.py``); this module holds what the rules share — blobs, weights,
activation fusion, the INT8 reads — and the walk over the graph, including the multi-node
patterns written as one layer (attention → SDPA, a decomposed LayerNorm → LayerNorm).

ncnn blobs are CHW without the batch (``blobs.py``). INT8 (formats.md, ncnn2int8's format): only
Convolution, ConvolutionDepthWise and InnerProduct run int8 in ncnn. From the QDQ IR (ncnn scheme:
symmetric, per-channel weights), a weighted op whose input comes through a DequantizeLinear and
whose weight is a DequantizeLinear of int8 data is written with its int8 weights; activation Q/DQ
pairs are the conv's own input quantization: they become aliases of the float blob.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.errors import UnsupportedOpError
from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ncnn import (  # noqa: F401 (rules)
    lower_tokens,
    ops_layers,
    ops_rnn,
    ops_shape,
    recentre,
    requantize,
)
from autoglm_compress.targets.ncnn.blobs import blob_params, dims_params, shape
from autoglm_compress.targets.ncnn.ops_math import fuse_code
from autoglm_compress.targets.ncnn.param import NcnnGraph
from autoglm_compress.targets.ncnn.rules import RULES

__all__ = ["lower_to_ncnn", "unsupported_reason", "RULES", "OPS"]

logger = logging.getLogger(__name__)

OPS = RULES.ops(internal=True)


def unsupported_reason(node: ir.Node) -> str | None:
    """Why the ncnn emitter cannot write ``node`` (None: it can): its rule's check."""
    return RULES.reason(node)


class _Lowerer:
    def __init__(self, model: ir.Model, precision: str, keep_float: frozenset[str] = frozenset()):
        self.m, self.g, self.precision = model, model.graph, precision
        self.ng = NcnnGraph()
        self.blob: dict[str, str] = {}  # ONNX value name → ncnn blob
        self.fused: set[int] = set()
        self.int8_layers: list[str] = []
        self.float_layers: list[str] = []
        self.keep_float = keep_float  # node names written float even with int8 data
        self.int8_inputs: dict[str, list[int]] = {}  # int8 layer → its input's ONNX shape

    # -- blobs and weights -----------------------------------------------------------------
    def b(self, v: ir.Value) -> str:
        if v.name in self.blob:
            return self.blob[v.name]
        arr = const_array(v)
        if arr is None:
            raise UnsupportedOpError("?", v.name, "ncnn", "value has no producer")
        return self.memory_data(arr, v.name)

    def memory_data(self, arr: np.ndarray, name: str, rank: int | None = None) -> str:
        a = np.asarray(arr, np.float32)
        if rank is not None and a.ndim <= rank:  # broadcast to the blob's rank, batch dropped
            full = (1,) * (rank - a.ndim) + a.shape
            a = a.reshape(full[1:])
        blob = self.ng.unique(f"{name}_mem")
        self.ng.add("MemoryData", blob, [], [blob], blob_params(a.shape),
                    [("raw", a.reshape(-1))])
        return blob

    def weight(self, arr: np.ndarray) -> tuple[str, np.ndarray]:
        a = np.asarray(arr, np.float32).reshape(-1)
        return ("tagged", a.astype(np.float16) if self.precision == "fp16" else a)

    def simple(self, n: ir.Node, type_: str, params=None, weights=None) -> None:
        """One layer reading ``n``'s first input and writing its output."""
        self.ng.add(type_, n.name or type_, [self.b(n.inputs[0])], [self.out(n.outputs[0])],
                    params, weights)

    def out(self, v: ir.Value) -> str:
        name = self.ng.unique(v.name)
        self.blob[v.name] = name
        return name

    def fuse(self, n: ir.Node) -> tuple[dict, ir.Value]:
        y = n.outputs[0]
        uses = list(y.uses())
        if len(uses) != 1 or y.is_graph_output():
            return {}, y
        nxt = uses[0][0]
        code = fuse_code(nxt) if unsupported_reason(nxt) is None else None
        if code is None or (nxt.op_type == "Sigmoid" and self.swish_of(nxt)):
            return {}, y
        self.fused.add(id(nxt))
        p = {9: code[0]}
        if code[1]:
            p[10] = code[1]
        return p, nxt.outputs[0]

    def swish_of(self, sig: ir.Node) -> ir.Node | None:
        """The Mul of x·sigmoid(x) when ``sig`` is that sigmoid (→ one Swish layer)."""
        y, x = sig.outputs[0], sig.inputs[0]
        uses = list(y.uses())
        if len(uses) == 1 and uses[0][0].op_type == "Mul" and not y.is_graph_output():
            mul = uses[0][0]
            if x in mul.inputs and y in mul.inputs:
                return mul
        return None

    # -- int8 ------------------------------------------------------------------------------
    def int8_parts(self, n: ir.Node, w_idx: int):
        """(int8 weights, weight scales as ncnn multipliers, bottom scale) or None."""
        if self.precision != "int8" or n.name in self.keep_float:
            return None
        from autoglm_compress.quantization.qdq_read import read_qparams

        x, w = n.inputs[0], n.inputs[w_idx]
        xp, wp = x.producer(), w.producer()
        if xp is None or wp is None or xp.op_type != "DequantizeLinear" \
                or wp.op_type != "DequantizeLinear":
            return None
        xq, wq = read_qparams(xp), read_qparams(wp)
        wdata = const_array(wp.inputs[0])
        if xq is None or wq is None or wdata is None or wdata.dtype != np.int8:
            return None
        self.int8_inputs[n.name] = shape(x)
        s_w = np.asarray(wq.scale, np.float64).reshape(-1)
        s_x = float(np.asarray(xq.scale).reshape(-1)[0])
        w_scales = np.where(s_w > 0, 1.0 / np.maximum(s_w, 1e-30), 0.0).astype(np.float32)
        return wdata, w_scales, np.float32(1.0 / s_x)

    def node(self, n: ir.Node) -> None:
        if id(n) in self.fused:
            return
        if id(n) in self.attention:
            from autoglm_compress.targets.ncnn.attention import lower_sdpa

            return lower_sdpa(self, self.attention[id(n)])
        if id(n) in self.layernorm:  # a LayerNorm written out op by op
            x, y, _, eps, gamma, beta = self.layernorm[id(n)]
            self.ng.add("LayerNorm", n.name or "layernorm", [self.b(x)], [self.out(y)],
                        {0: gamma.size, 1: eps, 2: 1}, [("raw", gamma), ("raw", beta)])
            return
        RULES.lower(self, n)

    def refuse_inconsistent(self, inputs, outputs) -> None:
        """A written graph ncnn could not run (``NcnnGraph.problem``) is refused here, before
        anything is written or verified: one line naming the layer and the fault."""
        found = self.ng.problem(inputs, outputs)
        if found is None:
            return
        layer, why = found
        nodes = {n.name: n for n in self.g}
        node = nodes.get(layer.source or layer.name) if layer is not None else None
        raise UnsupportedOpError(
            node.op_type if node is not None else (layer.type if layer else "?"),
            node.name if node is not None else (layer.name if layer else "?"),
            f"ncnn ({self.precision})",
            f"the lowering wrote an inconsistent .param: layer "
            f"{layer.name if layer else '?'!r} {why}; this is a bug of the ncnn lowering (please "
            "report it): use --format tflite or --target x86",
        )

    def run(self) -> tuple[str, bytes, dict]:
        from autoglm_compress.passes.fuse_layernorm import match_layernorm
        from autoglm_compress.targets.ncnn.attention import match_attention

        self.attention, self.layernorm = {}, {}
        for n in self.g:
            att = match_attention(n) if n.op_type == "MatMul" else None
            if att is not None:
                self.attention[id(n)] = att
                self.fused.update(id(x) for x in att.nodes if x is not n)
            ln = match_layernorm(n) if n.op_type == "Div" and id(n) not in self.fused else None
            if ln is not None:  # written at the pattern's last node
                last = ln[1].producer()
                self.layernorm[id(last)] = ln
                self.fused.update(id(x) for x in ln[2] if x is not last)
        for v in self.g.inputs:
            name = self.out(v)
            self.ng.add("Input", name, [], [name], dims_params(shape(v)))
        for n in self.g:
            self.node(n)
        outs = {v.name: self.ng.rename_blob(self.blob[v.name], v.name) for v in self.g.outputs}
        self.ng.finish(outs.values())
        int8 = self.precision == "int8"
        self.recentred = recentre.recentre_graph(self.ng, outs.values()) if int8 else 0
        self.requantized = requantize.fuse_graph(self.ng) if int8 else 0
        inputs = {v.name: self.blob[v.name] for v in self.g.inputs}
        self.refuse_inconsistent(inputs.values(), outs.values())
        io = {"inputs": inputs, "outputs": outs, "int8": self.int8_layers,
              "float": self.float_layers, "requantized": self.requantized,
              "recentred": self.recentred, "recentred_blobs": self.ng.recentred,
              "int8_edges": self.ng.int8_edges,
              "int32_inputs": lower_tokens.int32_inputs(self.g)}
        return self.ng.param_text(), self.ng.bin_bytes(), io


def lower_to_ncnn(model: ir.Model, precision: str, keep_float: frozenset[str] = frozenset(),
                  graph: bool = False):
    """(``.param`` text, ``.bin`` bytes, blob names of the graph IO + int8/float layer lists);
    ``keep_float``: conv/FC node names written float in INT8; ``graph=True`` adds the NcnnGraph
    and the int8 layers' input shapes as io["graph"], io["int8_inputs"]."""
    lw = _Lowerer(model, precision, keep_float)
    out = lw.run()
    if graph:
        out[2]["graph"], out[2]["int8_inputs"] = lw.ng, lw.int8_inputs
    return out

"""Lower the IR (ONNX ops, NCHW, batch 1) to ncnn layers (param.py), FP32, FP16 or INT8.

ncnn blobs are CHW without the batch: an ONNX value of rank r is an ncnn blob of rank r − 1 and ONNX
axis a is ncnn axis a − 1; ncnn shape keys are reversed (0=w, 1=h, 11=d, 2=c). Weights: Convolution
OIHW, ConvolutionDepthWise the same with 7=group, InnerProduct [out][in], Deconvolution [in-major]
as ncnn reads it. A Relu / Clip / LeakyRelu / Sigmoid / HardSwish read only by a conv or FC is
fused into it (9=activation_type, 10=params); x·sigmoid(x) becomes Swish.

INT8 (formats.md, ncnn2int8's format): only Convolution, ConvolutionDepthWise and InnerProduct run
int8 in ncnn. From the QDQ IR (ncnn scheme: symmetric, per-channel weights), a weighted op whose input
comes through a DequantizeLinear and whose weight is a DequantizeLinear of int8 data is written with
its int8 weights (tag 0x000D4B38), weight scales 1/s_w per output channel (per group for depthwise),
the bottom-blob scale 1/s_x, and 8=int8_scale_term (2 conv/FC, 1 depthwise); the bias stays fp32.
Activation Q/DQ pairs are the conv's own input quantization: they become aliases of the float blob.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.errors import UnsupportedOpError
from autoglm_compress.ir_ops import const_array, trailing_bias
from autoglm_compress.targets.ncnn import lower_tokens
from autoglm_compress.targets.ncnn.param import NcnnGraph

__all__ = ["lower_to_ncnn", "unsupported_reason", "OPS"]

logger = logging.getLogger(__name__)

_BINARY = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Max": 4, "Min": 5, "Pow": 6}
_REVERSED = {1: 7, 3: 8, 6: 9}  # const − x → rsub, const / x → rdiv, const ^ x → rpow
# ONNX element-wise math → ncnn UnaryOp op_type (src/layer/unaryop.h)
_UNARY = {"Abs": 0, "Neg": 1, "Floor": 2, "Ceil": 3, "Sqrt": 5, "Exp": 7, "Log": 8, "Sin": 9,
          "Cos": 10, "Tan": 11, "Asin": 12, "Acos": 13, "Atan": 14, "Reciprocal": 15,
          "Sign": 20}
OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid",
    "Elu", "PRelu", "Gelu", "Add", "Sub", "Mul", "Div", "Max", "Min", "Concat", "Flatten",
    "Reshape", "Squeeze", "Unsqueeze", "Softmax", "Resize", "Identity", "Dropout",
    "BatchNormalization", "Constant", "QuantizeLinear", "DequantizeLinear",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "Split", "Slice", "Transpose",
    "Pad", "LayerNormalization", "Sum", "Mean", "Pow",
}) | lower_tokens.OPS | frozenset(_UNARY)
# ONNX's variadic element-wise ops → ncnn Eltwise (op_type 1 = sum with coefficients, 2 = max)
_ELTWISE = {"Sum": 1, "Mean": 1, "Max": 2}
_PAD_MODES = {"constant": 0, "edge": 1, "reflect": 2}
# ncnn Permute order types: the output's axes listed innermost first, in input letters
_PERMUTE = {("W", "H"): 0, ("H", "W"): 1,
            ("W", "H", "C"): 0, ("H", "W", "C"): 1, ("W", "C", "H"): 2, ("C", "W", "H"): 3,
            ("H", "C", "W"): 4, ("C", "H", "W"): 5}
_REDUCE = {"ReduceSum": 0, "ReduceMean": 3, "ReduceMax": 4, "ReduceMin": 5}


def _shape(v: ir.Value) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in (v.shape or [])]


def _ints(node: ir.Node, name: str, default):
    a = node.attributes.get(name)
    return list(a.as_ints()) if a is not None else list(default)


def wconst(v: ir.Value | None) -> np.ndarray | None:
    from autoglm_compress.targets.tflite.lower import wconst as w

    return w(v)


def _is_eltwise(node: ir.Node) -> bool:
    """Sum / Mean (any arity), Max over more than two inputs: one ncnn Eltwise."""
    return node.op_type in ("Sum", "Mean") or (node.op_type == "Max" and len(node.inputs) > 2)


def unsupported_reason(node: ir.Node) -> str | None:
    op = node.op_type
    if op == "Erf":
        from autoglm_compress.passes.fuse_gelu import match_gelu

        return None if match_gelu(node) else "Erf outside a GELU (ncnn has GELU, not Erf)"
    if op not in OPS:
        return "no ncnn lowering for this op yet"
    if node.domain not in ("", "ai.onnx") and not (op == "Gelu" and node.domain == "com.microsoft"):
        return f"no ncnn lowering for domain {node.domain!r}"
    acts = [v for v in node.inputs[:1] if v is not None and v.is_graph_input()]
    for v in (*acts, *node.outputs):  # every activation is a graph input or some node's output
        if op in ("Constant", "QuantizeLinear", "DequantizeLinear"):
            break
        s = _shape(v)
        if s and s[0] != 1:
            return "ncnn blobs have no batch axis: batch must be 1 (give --input-shape)"
        if any(d < 0 for d in s):
            return "unknown dimension (give --input-shape / --static-shapes)"
    if op in lower_tokens.OPS:
        return lower_tokens.unsupported(node)
    if op in ("Conv", "ConvTranspose"):
        w = wconst(node.inputs[1])
        if w is None or w.ndim != 4:
            return "only 2-D convolutions with constant weights"
        if op == "ConvTranspose" and node.attributes.get_int("group", 1) != 1:
            return "grouped transposed convolution"
    if op == "Gemm":
        if node.attributes.get_int("transA", 0) or wconst(node.inputs[1]) is None:
            return "Gemm with transA or a non-constant weight"
        if len(_shape(node.inputs[0])) != 2:
            return "Gemm on a rank ≠ 2 input"
    if op == "MatMul":
        w = wconst(node.inputs[1])
        rank = len(_shape(node.inputs[0]))
        if w is not None and (w.ndim != 2 or rank not in (2, 3)):
            return "MatMul with a constant weight on a rank other than 2 or 3 (rows) input"
        if w is None and not (3 <= len(_shape(node.inputs[0])) <= 4
                              and len(_shape(node.inputs[1])) == len(_shape(node.inputs[0]))):
            return "MatMul of two activations other than batched 3-D/4-D of equal rank"
    if op == "Pad":
        mode = node.attributes.get_string("mode", "constant")
        rank = len(_shape(node.inputs[0]))
        pads = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if mode not in _PAD_MODES or pads is None or rank != 4 or \
                (len(node.inputs) > 3 and node.inputs[3] is not None):
            return "Pad other than constant/edge/reflect with constant pads on a 4-D map"
        if pads[0] or pads[4]:
            return "Pad on the batch axis"
    if op == "LayerNormalization":
        rank = len(_shape(node.inputs[0]))
        if node.attributes.get_int("axis", -1) % rank != rank - 1 or const_array(
                node.inputs[1]) is None:
            return "LayerNormalization over more than the last axis, or non-constant scale"
    if op == "Resize":
        mode = node.attributes.get_string("mode", "nearest")
        ct = node.attributes.get_string("coordinate_transformation_mode", "half_pixel")
        if len(_shape(node.outputs[0])) != 4:
            return "only 4-D resizes"
        if not ((mode == "nearest" and ct == "asymmetric") or (mode == "linear" and ct in (
                "half_pixel", "pytorch_half_pixel", "align_corners"))):
            return f"Resize mode {mode}/{ct} has no ncnn Interp equivalent"
    if op in _REDUCE:
        from autoglm_compress.targets.tflite.lower_seq import reduce_axes

        axes = reduce_axes(node, len(_shape(node.inputs[0])))
        if axes is None or 0 in axes:
            return "reduction over the batch axis or with non-constant axes"
    if op == "Transpose":
        rank = len(_shape(node.inputs[0]))
        perm = _ints(node, "perm", reversed(range(rank)))
        if perm[0] != 0 or rank not in (3, 4):
            return "Transpose other than of the non-batch axes of a 3-D/4-D tensor"
    if op == "Slice" and any(const_array(v) is None for v in node.inputs[1:] if v is not None):
        return "Slice with non-constant starts/ends"
    if op == "Slice":
        steps = const_array(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None \
            else None
        axes = const_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None \
            else np.arange(len(const_array(node.inputs[1])))
        rank = len(_shape(node.inputs[0]))
        if (steps is not None and (steps != 1).any()) or any(int(a) % rank == 0 for a in axes):
            return "Slice with steps ≠ 1 or on the batch axis"
    if op == "Split" and node.attributes.get_int("axis", 0) % max(len(_shape(node.inputs[0])), 1) == 0:
        return "Split on the batch axis"
    if op == "Clip" and any(v is not None and v.name and const_array(v) is None
                            for v in node.inputs[1:3]):
        return "Clip with non-constant bounds"
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze") and len(_shape(node.outputs[0])) > 5:
        return "ncnn blobs have at most 4 dimensions"
    if op in _BINARY and len(_shape(node.outputs[0])) > 5:
        return "ncnn blobs have at most 4 dimensions"
    if _is_eltwise(node) and any(v is None or v.const_value is not None
                                 or _shape(v) != _shape(node.outputs[0]) for v in node.inputs):
        return "ncnn Eltwise needs activations of one shape (no broadcast, no constants)"
    if op == "Min" and len(node.inputs) != 2:
        return "ncnn has no Eltwise min over more than two inputs"
    return None


def _fuse_code(node: ir.Node) -> tuple[int, list[float]] | None:
    op = node.op_type
    if op == "Relu":
        return 1, []
    if op == "LeakyRelu":
        return 2, [node.attributes.get_float("alpha", 0.01)]
    if op == "Clip":
        lo, hi = _clip_bounds(node)
        return 3, [lo if lo is not None else -3.4e38, hi if hi is not None else 3.4e38]
    if op == "Sigmoid":
        return 4, []
    if op == "HardSwish":
        return 6, [1.0 / 6.0, 0.5]
    return None


def _clip_bounds(node):
    def bound(i):
        v = node.inputs[i] if len(node.inputs) > i else None
        return float(const_array(v)) if v is not None and v.name else None

    return bound(1), bound(2)


def _dims_params(shape: list[int]) -> dict[int, int]:
    """ncnn shape keys for an ONNX shape with the batch dropped (reversed: w, h, d, c)."""
    d = list(shape[1:])
    keys = {1: [0], 2: [1, 0], 3: [2, 1, 0], 4: [2, 11, 1, 0]}[len(d)]
    return dict(zip(keys, d))


class _Lowerer:
    def __init__(self, model: ir.Model, precision: str, keep_float: frozenset[str] = frozenset()):
        if any(n.op_type == "Erf" for n in model.graph):
            from autoglm_compress.passes.fuse_gelu import FuseGeluPass

            FuseGeluPass()(model)
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
        d = a.shape or (1,)
        keys = {1: [0], 2: [1, 0], 3: [2, 1, 0], 4: [2, 11, 1, 0]}[len(d)]
        blob = self.ng.unique(f"{name}_mem")
        self.ng.add("MemoryData", blob, [], [blob], dict(zip(keys, d)),
                    [("raw", a.reshape(-1))])
        return blob

    def weight(self, arr: np.ndarray) -> tuple[str, np.ndarray]:
        a = np.asarray(arr, np.float32).reshape(-1)
        return ("tagged", a.astype(np.float16) if self.precision == "fp16" else a)

    def out(self, v: ir.Value) -> str:
        name = self.ng.unique(v.name)
        self.blob[v.name] = name
        return name

    def _fuse(self, n: ir.Node) -> tuple[dict, ir.Value]:
        y = n.outputs[0]
        uses = list(y.uses())
        if len(uses) != 1 or y.is_graph_output():
            return {}, y
        nxt = uses[0][0]
        code = _fuse_code(nxt) if unsupported_reason(nxt) is None else None
        if code is None or (nxt.op_type == "Sigmoid" and self._swish_of(nxt)):
            return {}, y
        self.fused.add(id(nxt))
        p = {9: code[0]}
        if code[1]:
            p[10] = code[1]
        return p, nxt.outputs[0]

    def _swish_of(self, sig: ir.Node) -> ir.Node | None:
        """The Mul of x·sigmoid(x) when ``sig`` is that sigmoid (→ one Swish layer)."""
        y, x = sig.outputs[0], sig.inputs[0]
        uses = list(y.uses())
        if len(uses) == 1 and uses[0][0].op_type == "Mul" and not y.is_graph_output():
            mul = uses[0][0]
            if x in mul.inputs and y in mul.inputs:
                return mul
        return None

    # -- int8 ------------------------------------------------------------------------------
    def _int8_parts(self, n: ir.Node, w_idx: int):
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
        self.int8_inputs[n.name] = _shape(x)
        s_w = np.asarray(wq.scale, np.float64).reshape(-1)
        s_x = float(np.asarray(xq.scale).reshape(-1)[0])
        w_scales = np.where(s_w > 0, 1.0 / np.maximum(s_w, 1e-30), 0.0).astype(np.float32)
        return wdata, w_scales, np.float32(1.0 / s_x)

    # -- ops -------------------------------------------------------------------------------
    def conv(self, n: ir.Node) -> None:
        from autoglm_compress.targets.tflite.lower import _onnx_pads

        w = wconst(n.inputs[1]).astype(np.float32)
        o, _, kh, kw = w.shape
        st, dil = _ints(n, "strides", [1, 1]), _ints(n, "dilations", [1, 1])
        in_hw = _shape(n.inputs[0])[2:]
        pads = _onnx_pads(n, in_hw, [kh, kw], st, dil)
        g = n.attributes.get_int("group", 1)
        bias = wconst(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else None
        p = {0: o, 1: kw, 11: kh, 2: dil[1], 12: dil[0], 3: st[1], 13: st[0], 4: pads[1],
             14: pads[0], 15: pads[3], 16: pads[2], 5: int(bias is not None), 6: w.size}
        if g > 1:
            p[7] = g
        x = self.b(n.inputs[0])
        act, y = self._fuse(n)
        p.update(act)
        q = self._int8_parts(n, 1)
        if q is not None:
            wdata, w_scales, s_in = q
            if g > 1:
                # depthwise: one weight scale per group (8=1); grouped: per group needs equal
                # scales inside a group, so use the group's max multiplier's inverse (8=1)
                per = o // g
                if per != 1:
                    w_scales = w_scales.reshape(g, per).min(axis=1)
                    wdata = None  # requantize below with the group scale
                p[8] = 1
            else:
                p[8] = 2
            if wdata is None:
                wq = np.clip(np.rint(w.reshape(g, -1) * w_scales.reshape(g, 1)), -127, 127)
                wdata = wq.astype(np.int8)
            weights = [("tagged", np.asarray(wdata, np.int8).reshape(-1))]
            if bias is not None:
                weights.append(("raw", bias.astype(np.float32)))
            weights += [("raw", w_scales), ("raw", np.asarray([s_in], np.float32))]
            self.int8_layers.append(n.name or "conv")
        else:
            weights = [self.weight(w)]
            if bias is not None:
                weights.append(("raw", bias.astype(np.float32)))
            if self.precision == "int8":
                self.float_layers.append(n.name or "conv")
        layer = self.ng.add("ConvolutionDepthWise" if g > 1 else "Convolution", n.name or "conv",
                            [x], [self.out(y)], p, weights)
        layer.source = n.name
        if q is not None:
            layer.bottom_scale = float(q[2])

    def conv_transpose(self, n: ir.Node) -> None:
        w = wconst(n.inputs[1]).astype(np.float32)  # [Cin, Cout, kh, kw]
        cin, o, kh, kw = w.shape
        st, dil = _ints(n, "strides", [1, 1]), _ints(n, "dilations", [1, 1])
        pads = _ints(n, "pads", [0, 0, 0, 0])
        opad = _ints(n, "output_padding", [0, 0])
        bias = wconst(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else None
        p = {0: o, 1: kw, 11: kh, 2: dil[1], 12: dil[0], 3: st[1], 13: st[0], 4: pads[1],
             14: pads[0], 15: pads[3], 16: pads[2], 18: opad[1], 19: opad[0],
             5: int(bias is not None), 6: w.size}
        act, y = self._fuse(n)
        p.update(act)
        # ncnn Deconvolution weights: [out][in][kh][kw] (its loader transposes per output)
        weights = [self.weight(w.transpose(1, 0, 2, 3))]
        if bias is not None:
            weights.append(("raw", bias.astype(np.float32)))
        if self.precision == "int8":
            self.float_layers.append(n.name or "deconv")
        self.ng.add("Deconvolution", n.name or "deconv", [self.b(n.inputs[0])], [self.out(y)],
                    p, weights)

    def inner_product(self, n: ir.Node, w_out_in: np.ndarray, bias, w_idx: int) -> None:
        p = {0: w_out_in.shape[0], 1: int(bias is not None), 2: w_out_in.size}
        x = self.b(n.inputs[0])
        act, y = self._fuse(n)
        p.update(act)
        q = self._int8_parts(n, w_idx)
        if q is not None:
            wdata, w_scales, s_in = q
            wdata = wdata if n.op_type == "Gemm" and n.attributes.get_int("transB", 0) \
                else wdata.T
            p[8] = 2
            weights = [("tagged", np.ascontiguousarray(wdata, np.int8).reshape(-1))]
            if bias is not None:
                weights.append(("raw", np.asarray(bias, np.float32).reshape(-1)))
            weights += [("raw", w_scales), ("raw", np.asarray([s_in], np.float32))]
            self.int8_layers.append(n.name or "fc")
        else:
            weights = [self.weight(w_out_in)]
            if bias is not None:
                weights.append(("raw", np.asarray(bias, np.float32).reshape(-1)))
            if self.precision == "int8":
                self.float_layers.append(n.name or "fc")
        self.ng.add("InnerProduct", n.name or "fc", [x], [self.out(y)], p, weights).source = n.name

    def _bias_add(self, n: ir.Node):
        """(Add, bias) when ``n``'s only reader adds a constant [N] (a Gemm lifted to rows)."""
        found = trailing_bias(n)
        if found is None or found[0].inputs[found[1]].name in self.blob \
                or found[2].size != _shape(n.outputs[0])[-1]:
            return None, None
        return found[0], found[2].astype(np.float32)

    def gemm(self, n: ir.Node) -> None:
        w = wconst(n.inputs[1]).astype(np.float32)
        w = w if n.attributes.get_int("transB", 0) else w.T
        alpha = n.attributes.get_float("alpha", 1.0)
        c = wconst(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else None
        if c is not None:
            c = c.astype(np.float32) * n.attributes.get_float("beta", 1.0)
            c = np.broadcast_to(c.reshape(-1) if c.size == w.shape[0] else c, (w.shape[0],))
        self.inner_product(n, w * alpha, c, 1)

    def pool(self, n: ir.Node) -> None:
        from autoglm_compress.targets.tflite.lower import _onnx_pads

        k, st = _ints(n, "kernel_shape", [1, 1]), _ints(n, "strides", [1, 1])
        pads = _onnx_pads(n, _shape(n.inputs[0])[2:], k, st, [1, 1])
        p = {0: 0 if n.op_type == "MaxPool" else 1, 1: k[1], 11: k[0], 2: st[1], 12: st[0],
             3: pads[1], 13: pads[0], 14: pads[3], 15: pads[2],
             5: 0 if n.attributes.get_int("ceil_mode", 0) else 1,
             6: n.attributes.get_int("count_include_pad", 0)}
        self.ng.add("Pooling", n.name or "pool", [self.b(n.inputs[0])], [self.out(n.outputs[0])],
                    p)

    def global_pool(self, n: ir.Node) -> None:
        """Global pooling gives ncnn a 1-D [C] blob: written straight into a following Flatten /
        Reshape to [1, C] (pnnx's layout: one layer), else reshaped back to [C, 1, 1]."""
        y = n.outputs[0]
        uses = list(y.uses())
        nxt = uses[0][0] if len(uses) == 1 and not y.is_graph_output() else None
        if nxt is not None and nxt.op_type in ("Flatten", "Reshape") \
                and _shape(nxt.outputs[0]) == _shape(y)[:2]:
            self.fused.add(id(nxt))
            self.ng.add("Pooling", n.name or "gpool", [self.b(n.inputs[0])],
                        [self.out(nxt.outputs[0])],
                        {0: 0 if n.op_type == "GlobalMaxPool" else 1, 4: 1})
            return
        mid = self.ng.unique(n.outputs[0].name + "_flat")
        self.ng.add("Pooling", n.name or "gpool", [self.b(n.inputs[0])], [mid],
                    {0: 0 if n.op_type == "GlobalMaxPool" else 1, 4: 1})
        c = _shape(n.outputs[0])[1]
        self.ng.add("Reshape", (n.name or "gpool") + "_chw", [mid], [self.out(n.outputs[0])],
                    {0: 1, 1: 1, 2: c})

    def binary(self, n: ir.Node, op: int | None = None) -> None:
        if n.op_type == "Pow" and self._power(n):
            return
        op = _BINARY[n.op_type] if op is None else op
        a, c = n.inputs
        rank = len(_shape(n.outputs[0]))
        ca = const_array(a) if a.name not in self.blob else None
        cc = const_array(c) if c.name not in self.blob else None
        if cc is not None and cc.size == 1:
            ins, p = [self.b(a)], {0: op, 1: 1, 2: float(cc.reshape(-1)[0])}
        elif ca is not None and ca.size == 1:
            ins, p = [self.b(c)], {0: _REVERSED.get(op, op), 1: 1, 2: float(ca.reshape(-1)[0])}
        else:
            ins = [self.memory_data(arr, v.name, rank) if arr is not None else self.b(v)
                   for v, arr in ((a, ca), (c, cc))]
            p = {0: op}
        self.ng.add("BinaryOp", n.name or "binary", ins, [self.out(n.outputs[0])], p)

    def _power(self, n: ir.Node) -> bool:
        """x^2 → UnaryOp square, x^0.5 → sqrt, x^−1 → reciprocal, x^1 → x: ncnn's SIMD pow is
        exp(y·log x), NaN for a negative base (a decomposed LayerNorm squares x − mean)."""
        e = const_array(n.inputs[1]) if n.inputs[1].name not in self.blob else None
        if e is None or e.size != 1:
            return False
        code = {2.0: 4, 0.5: 5, -1.0: 15}.get(float(e.reshape(-1)[0]))
        if float(e.reshape(-1)[0]) == 1.0:
            self.blob[n.outputs[0].name] = self.b(n.inputs[0])
            return True
        if code is None:
            return False
        self.simple(n, "UnaryOp", {0: code})
        return True

    def simple(self, n: ir.Node, type_: str, params=None, weights=None) -> None:
        self.ng.add(type_, n.name or type_, [self.b(n.inputs[0])], [self.out(n.outputs[0])],
                    params, weights)

    def reshape(self, n: ir.Node) -> None:
        shape = _shape(n.outputs[0])
        if shape == _shape(n.inputs[0]) and all(d > 0 for d in shape):
            self.blob[n.outputs[0].name] = self.b(n.inputs[0])  # a no-op (a lifted row entry)
            return
        if n.op_type == "Flatten" and n.attributes.get_int("axis", 1) == 1:
            return self.simple(n, "Flatten")
        return self.simple(n, "Reshape", _dims_params(shape))

    def crop(self, n: ir.Node) -> None:
        """ONNX Slice (steps 1) → ncnn Crop with starts/ends/axes arrays (axes without batch)."""
        shape = _shape(n.inputs[0])
        rank = len(shape)
        starts, ends = const_array(n.inputs[1]), const_array(n.inputs[2])
        axes = const_array(n.inputs[3]) if len(n.inputs) > 3 and n.inputs[3] is not None \
            else np.arange(len(starts))
        b, e, ax = [], [], []
        for a, s0, e0 in zip(axes, starts, ends):
            a = int(a) % rank
            dim = shape[a]
            s0, e0 = int(s0), int(e0)
            s0 = min(max(s0 + dim if s0 < 0 else s0, 0), dim)
            e0 = min(max(e0 + dim if e0 < 0 else e0, 0), dim)
            b.append(s0)
            e.append(e0)
            ax.append(a - 1)
        self.simple(n, "Crop", {9: b, 10: e, 11: ax})

    def resize(self, n: ir.Node) -> None:
        mode = n.attributes.get_string("mode", "nearest")
        ct = n.attributes.get_string("coordinate_transformation_mode", "half_pixel")
        oh, ow = _shape(n.outputs[0])[2:]
        p = {0: 1 if mode == "nearest" else 2, 3: oh, 4: ow, 6: int(ct == "align_corners")}
        self.simple(n, "Interp", p)

    def node(self, n: ir.Node) -> None:
        op = n.op_type
        if id(n) in self.fused or op == "Constant":
            return
        if id(n) in self.attention:
            from autoglm_compress.targets.ncnn.attention import lower_sdpa

            return lower_sdpa(self, self.attention[id(n)])
        if id(n) in self.layernorm:  # a LayerNorm written out op by op
            x, y, _, eps, gamma, beta = self.layernorm[id(n)]
            self.ng.add("LayerNorm", n.name or "layernorm", [self.b(x)], [self.out(y)],
                        {0: gamma.size, 1: eps, 2: 1}, [("raw", gamma), ("raw", beta)])
            return
        why = unsupported_reason(n)
        if why:
            raise UnsupportedOpError(op, n.name or "?", "ncnn", why)
        if op in ("QuantizeLinear", "DequantizeLinear"):
            x = n.inputs[0]
            if x.name in self.blob:  # an activation: the float blob (the conv quantizes it)
                self.blob[n.outputs[0].name] = self.blob[x.name]
            return
        if op == "Sigmoid" and self._swish_of(n) is not None:
            mul = self._swish_of(n)
            self.fused.add(id(mul))
            self.ng.add("Swish", n.name or "swish", [self.b(n.inputs[0])],
                        [self.out(mul.outputs[0])])
            return
        if op == "Conv":
            self.conv(n)
        elif op == "ConvTranspose":
            self.conv_transpose(n)
        elif op == "Gemm":
            self.gemm(n)
        elif op == "MatMul" and wconst(n.inputs[1]) is None:
            self.ng.add("MatMul", n.name or "matmul", [self.b(v) for v in n.inputs],
                        [self.out(n.outputs[0])], {0: 0})
        elif op == "MatMul":  # [1, S, H] is the 2-D blob h=S: InnerProduct runs row by row
            add, bias = self._bias_add(n)
            if add is not None:
                self.fused.add(id(add))
            self.inner_product(n, wconst(n.inputs[1]).astype(np.float32).T, bias, 1)
            if add is not None:
                self.blob[add.outputs[0].name] = self.blob[n.outputs[0].name]
        elif op == "Pad":
            p = [int(x) for x in const_array(n.inputs[1]).reshape(-1)]
            cv = const_array(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None \
                else None
            self.simple(n, "Padding", {0: p[2], 1: p[6], 2: p[3], 3: p[7],
                                       4: _PAD_MODES[n.attributes.get_string("mode", "constant")],
                                       5: float(cv.reshape(-1)[0]) if cv is not None else 0.0,
                                       7: p[1], 8: p[5]})
        elif op == "LayerNormalization":
            gamma = const_array(n.inputs[1]).astype(np.float32).reshape(-1)
            beta = const_array(n.inputs[2]).astype(np.float32).reshape(-1) \
                if len(n.inputs) > 2 and n.inputs[2] is not None else np.zeros_like(gamma)
            self.simple(n, "LayerNorm", {0: gamma.size, 1: n.attributes.get_float(
                "epsilon", 1e-5), 2: 1}, [("raw", gamma), ("raw", beta)])
        elif op in ("MaxPool", "AveragePool"):
            self.pool(n)
        elif op in ("GlobalAveragePool", "GlobalMaxPool"):
            self.global_pool(n)
        elif _is_eltwise(n):
            k = len(n.inputs)
            p = {0: _ELTWISE[op]}
            if op == "Mean":
                p[1] = [1.0 / k] * k
            self.ng.add("Eltwise", n.name or "eltwise", [self.b(v) for v in n.inputs],
                        [self.out(n.outputs[0])], p)
        elif op in _BINARY:
            self.binary(n)
        elif op in lower_tokens.OPS:
            lower_tokens.lower(self, n)
        elif op in _UNARY:
            self.simple(n, "UnaryOp", {0: _UNARY[op]})
        elif op == "Relu":
            self.simple(n, "ReLU")
        elif op == "LeakyRelu":
            self.simple(n, "ReLU", {0: n.attributes.get_float("alpha", 0.01)})
        elif op == "Clip":
            lo, hi = _clip_bounds(n)
            self.simple(n, "Clip", {0: lo if lo is not None else -3.4e38,
                                    1: hi if hi is not None else 3.4e38})
        elif op == "Sigmoid":
            self.simple(n, "Sigmoid")
        elif op == "Tanh":
            self.simple(n, "TanH")
        elif op == "HardSwish":
            self.simple(n, "HardSwish", {0: 1.0 / 6.0, 1: 0.5})
        elif op == "HardSigmoid":
            self.simple(n, "HardSigmoid", {0: n.attributes.get_float("alpha", 0.2),
                                           1: n.attributes.get_float("beta", 0.5)})
        elif op == "Elu":
            self.simple(n, "ELU", {0: n.attributes.get_float("alpha", 1.0)})
        elif op == "Gelu":
            self.simple(n, "GELU")
        elif op == "PRelu":
            slope = const_array(n.inputs[1]).astype(np.float32).reshape(-1)
            self.simple(n, "PReLU", {0: slope.size}, [("raw", slope)])
        elif op == "BatchNormalization":
            g, beta, mean, var = (const_array(v).astype(np.float32) for v in n.inputs[1:5])
            eps = n.attributes.get_float("epsilon", 1e-5)
            self.simple(n, "BatchNorm", {0: g.size, 1: eps},
                        [("raw", g), ("raw", mean), ("raw", var), ("raw", beta)])
        elif op == "Concat":
            axis = n.attributes.get_int("axis", 0) % len(_shape(n.outputs[0]))
            self.ng.add("Concat", n.name or "concat", [self.b(v) for v in n.inputs],
                        [self.out(n.outputs[0])], {0: axis - 1})
        elif op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            self.reshape(n)
        elif op == "Softmax":
            axis = n.attributes.get_int("axis", -1) % len(_shape(n.inputs[0]))
            self.simple(n, "Softmax", {0: axis - 1, 1: 1})
        elif op == "Resize":
            self.resize(n)
        elif op == "Split":
            rank = len(_shape(n.inputs[0]))
            axis = n.attributes.get_int("axis", 0) % rank
            sizes = [_shape(o)[axis] for o in n.outputs]
            self.ng.add("Slice", n.name or "split", [self.b(n.inputs[0])],
                        [self.out(o) for o in n.outputs], {0: sizes, 1: axis - 1})
        elif op == "Slice":
            self.crop(n)
        elif op == "Transpose":
            rank = len(_shape(n.inputs[0]))
            perm = _ints(n, "perm", reversed(range(rank)))
            letters = {1: "C", 2: "H", 3: "W"} if rank == 4 else {1: "H", 2: "W"}
            key = tuple(letters[a] for a in reversed(perm[1:]))
            self.simple(n, "Permute", {0: _PERMUTE[key]})
        elif op in _REDUCE:
            from autoglm_compress.targets.tflite.lower_seq import reduce_axes

            axes = reduce_axes(n, len(_shape(n.inputs[0])))
            self.simple(n, "Reduction", {0: _REDUCE[op], 1: 0, 2: 1.0, 3: [a - 1 for a in axes],
                                         4: n.attributes.get_int("keepdims", 1), 5: 1})
        elif op in ("Identity", "Dropout"):
            self.blob[n.outputs[0].name] = self.b(n.inputs[0])
        else:  # pragma: no cover - OPS and this dispatch are kept together
            raise UnsupportedOpError(op, n.name, "ncnn", "not dispatched")

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
            self.ng.add("Input", name, [], [name], _dims_params(_shape(v)))
        for n in self.g:
            self.node(n)
        outs = {}
        for v in self.g.outputs:
            outs[v.name] = self.blob[v.name]
        self.ng.finish()
        self.requantized = self.ng.fuse_requantize() if self.precision == "int8" else 0
        inputs = {v.name: self.blob[v.name] for v in self.g.inputs}
        io = {"inputs": inputs, "outputs": outs, "int8": self.int8_layers,
              "float": self.float_layers, "requantized": self.requantized,
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

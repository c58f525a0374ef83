"""Lower the IR (ONNX ops, NCHW) to TFLite builtins (NHWC), FP32 or FP16 weights.

Layout: every 4-D activation is carried NHWC inside the model; graph inputs and outputs keep the
ONNX (NCHW) layout, with one TRANSPOSE at each edge, and a TRANSPOSE back only where an op needs the
ONNX order (a Flatten/Reshape of a map larger than 1×1). Filters: CONV_2D [O,H,W,I] (from OIHW),
DEPTHWISE_CONV_2D [1,H,W,O]; Gemm/MatMul with a constant weight → FULLY_CONNECTED [out, in].
ONNX pads become SAME or VALID when they equal them, else an explicit PAD (PADV2 with the lowest
float for max pooling). A Relu/Clip(0, 6) read only by a conv/FC is fused into it. FP16 (the TFLite
convention): weights stored float16 and DEQUANTIZE'd to float32 in the graph.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

import autoglm_compress.targets.tflite.rules_rnn  # noqa: F401 (registers its rules)
import autoglm_compress.targets.tflite.rules_seq  # noqa: F401 (registers its rules)
from autoglm_compress.errors import UnsupportedOpError
from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ir_reads import clip_bounds, dims, ints, onnx_pads, wconst
from autoglm_compress.targets.tflite.builder import TFLiteBuilder
from autoglm_compress.targets.tflite.lower_seq import SequenceOps
from autoglm_compress.targets.tflite.lower_spatial import SpatialOps
from autoglm_compress.targets.tflite.rules import BINARY, RULES, resize_mode

__all__ = ["lower_to_tflite", "unsupported_reason", "OPS", "RULES"]

logger = logging.getLogger(__name__)

_TO_NHWC, _TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
OPS = RULES.ops()  # the ops with a lowering rule (rules.py, rules_seq.py, rules_rnn.py)


def unsupported_reason(node: ir.Node) -> str | None:
    """Why this node has no TFLite lowering here (None: it has one): its rule's check."""
    return RULES.reason(node)


_BINARY_OPTIONS = {"Add": lambda s: s.AddOptionsT, "Sub": lambda s: s.SubOptionsT,
                   "Mul": lambda s: s.MulOptionsT, "Div": lambda s: s.DivOptionsT}


class _Lowerer(SequenceOps, SpatialOps):
    # Fuse a following Relu/Relu6 into ADD/SUB/MUL/DIV (the INT8 lowering: the
    # QDQ graph quantizes after the activation, so the int8 op writes that tensor).
    fuse_elementwise = False

    def __init__(self, model: ir.Model, fp16: bool, hybrid: bool = False):
        self.m, self.g, self.fp16, self.hybrid = model, model.graph, fp16, hybrid
        self.b = TFLiteBuilder()
        self.vals: dict[str, tuple[int, str]] = {}  # onnx name → (tensor, "nhwc" | "onnx")
        self.alt: dict[tuple[str, str], int] = {}  # cached layout conversions
        self.fused: set[int] = set()
        self._n = 0

    # -- tensors ---------------------------------------------------------------------------
    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}#{self._n}"

    def int8_weight(self, v: ir.Value, name: str, to_tfl, axis_tfl: int) -> int | None:
        """Hybrid (dynamic-range) mode: the int8 weight behind ``v``'s DequantizeLinear as a
        TFLite int8 tensor with per-channel scales (``to_tfl`` reorders the ONNX layout; the
        scales' axis becomes ``axis_tfl``), or None when ``v`` is not such a weight."""
        p = v.producer() if self.hybrid and v is not None else None
        if p is None or p.op_type != "DequantizeLinear":
            return None
        from autoglm_compress.quantization.qdq_read import read_qparams

        qp = read_qparams(p)
        q = const_array(p.inputs[0])
        if qp is None or q is None or q.dtype != np.int8 or np.any(np.asarray(qp.zero_point)):
            return None
        scale = np.asarray(qp.scale, np.float32).reshape(-1)
        quant = {"scale": scale, "zero_point": np.zeros(scale.size, np.int64), "axis": axis_tfl}
        return self.b.const(self._name(name), np.ascontiguousarray(to_tfl(q)), quant)

    def const(self, name: str, arr: np.ndarray, weight: bool = False) -> int:
        arr = np.asarray(arr)
        if weight and self.fp16 and arr.dtype == np.float32:
            c16 = self.b.const(name + "_fp16", arr.astype(np.float16))
            out = self.b.tensor(self._name(name), arr.shape)
            self.b.op(6, [c16], [out])  # DEQUANTIZE
            return out
        return self.b.const(name, arr)

    def get(self, name: str, want: str) -> int:
        """The TFLite tensor of ONNX value ``name`` in layout ``want`` (a TRANSPOSE if needed)."""
        if name in self.g.initializers or name not in self.vals:
            arr = const_array(self.g.initializers.get(name)) if name in self.g.initializers else None
            if arr is None:
                raise UnsupportedOpError("?", name, "arm target", "value has no producer")
            arr = arr.transpose(_TO_NHWC) if want == "nhwc" and arr.ndim == 4 else arr
            return self.const(name, arr, weight=True)
        idx, have = self.vals[name]
        if have == want or len(self.b.shape_of(idx)) != 4:
            return idx
        key = (name, want)
        if key not in self.alt:
            perm = _TO_NHWC if want == "nhwc" else _TO_NCHW
            shape = [self.b.shape_of(idx)[p] for p in perm]
            out = self.b.tensor(self._name(name + "_" + want), shape, self.b.dtypes[idx],
                                self.b.quant[idx])
            self.b.op(39, [idx, self.b.const("perm" + "".join(map(str, perm)),
                                             np.asarray(perm, np.int32))], [out])
            self.alt[key] = out
        return self.alt[key]

    def layout(self, name: str) -> str:
        return self.vals[name][1] if name in self.vals else "onnx"

    def _shape_of_value(self, v: ir.Value) -> list[int]:
        return dims(v, 1)

    def out(self, v: ir.Value, layout: str) -> int:
        shape = dims(v, 1)
        if layout == "nhwc" and len(shape) == 4:
            shape = [shape[p] for p in _TO_NHWC]
        dt = np.dtype(v.dtype.numpy()) if v.dtype is not None else np.dtype("float32")
        idx = self.b.tensor(v.name, shape, dt)
        self.vals[v.name] = (idx, layout if len(shape) == 4 else "onnx")
        return idx

    # -- helpers ---------------------------------------------------------------------------
    def _fuse(self, node: ir.Node) -> tuple[int, ir.Value]:
        """(fused activation code, the value the fused op writes)."""
        y = node.outputs[0]
        uses = list(y.uses())
        if len(uses) != 1 or y in self.g.outputs:
            return 0, y
        nxt = uses[0][0]
        code = None
        if nxt.op_type == "Relu":
            code = 1
        elif nxt.op_type == "Clip" and unsupported_reason(nxt) is None:
            lo, hi = clip_bounds(nxt)
            code = 3 if (lo, hi) == (0.0, 6.0) else 2 if (lo, hi) == (-1.0, 1.0) else None
        if code is None:
            return 0, y
        self.fused.add(id(nxt))
        return code, nxt.outputs[0]

    @staticmethod
    def _padding(in_hw, k, s, d, pads) -> tuple[int, list[int] | None]:
        """(TFLite padding, explicit [t, l, b, r] or None): SAME/VALID when the pads equal them."""
        if not any(pads):
            return 1, None
        same = []
        for i in range(2):
            out = -(-in_hw[i] // s[i])
            total = max((out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - in_hw[i], 0)
            same += [total // 2, total - total // 2]
        if [pads[0], pads[2], pads[1], pads[3]] == same:
            return 0, None
        return 1, pads

    def _pad(self, x: int, pads, value: float | None) -> int:
        t, left, b_, r = pads
        shape = self.b.shape_of(x)
        shape = [shape[0], shape[1] + t + b_, shape[2] + left + r, shape[3]]
        out = self.b.tensor(self._name("pad"), shape, self.b.dtypes[x], self.b.quant[x])
        spec = self.b.const(self._name("pads"), np.asarray([[0, 0], [t, b_], [left, r], [0, 0]],
                                                           np.int32))
        if value is None:
            self.b.op(34, [x, spec], [out])  # PAD
        else:
            cv = self.b.const(self._name("padv"), np.asarray([value], np.float32))
            self.b.op(60, [x, spec, cv], [out])  # PADV2
        return out

    # -- ops -------------------------------------------------------------------------------
    def conv(self, n: ir.Node) -> None:
        s = self.b.s
        x = self.get(n.inputs[0].name, "nhwc")
        w = wconst(n.inputs[1]).astype(np.float32)
        o = w.shape[0]
        bias = wconst(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else None
        bias = np.zeros(o, np.float32) if bias is None else bias.astype(np.float32)
        k, st = list(w.shape[2:]), ints(n, "strides", [1, 1])
        dil = ints(n, "dilations", [1, 1])
        in_hw = self.b.shape_of(x)[1:3]
        pads = onnx_pads(n, in_hw, k, st, dil)
        padding, explicit = self._padding(in_hw, k, st, dil, pads)
        if explicit:
            x = self._pad(x, explicit, None)
        act, y = self._fuse(n)
        g = n.attributes.get_int("group", 1)
        if g > 1:
            opt = s.DepthwiseConv2DOptionsT()
            opt.depthMultiplier = o // g
            filt, code, otype = w.transpose(1, 2, 3, 0), 4, s.BuiltinOptions.DepthwiseConv2DOptions
        else:
            opt = s.Conv2DOptionsT()
            filt, code, otype = w.transpose(0, 2, 3, 1), 3, s.BuiltinOptions.Conv2DOptions
        opt.padding, opt.strideH, opt.strideW = padding, st[0], st[1]
        opt.dilationHFactor, opt.dilationWFactor, opt.fusedActivationFunction = dil[0], dil[1], act
        wt = self.int8_weight(n.inputs[1], n.inputs[1].name + "_tfl",
                              (lambda a: a.transpose(1, 2, 3, 0)) if g > 1
                              else (lambda a: a.transpose(0, 2, 3, 1)), 3 if g > 1 else 0)
        if wt is None:
            wt = self.const(n.inputs[1].name + "_tfl", np.ascontiguousarray(filt), weight=True)
        bt = self.const(self._name((n.name or "conv") + "_bias"), bias, weight=True)
        self.b.op(code, [x, wt, bt], [self.out(y, "nhwc")], opt, otype)

    def fully_connected(self, n: ir.Node, w_out_in: np.ndarray, bias, keep_dims: bool,
                        transposed: bool = True) -> None:
        """``transposed``: the ONNX weight is [in, out] (MatMul, Gemm without transB)."""
        s = self.b.s
        x = self.get(n.inputs[0].name, "onnx")
        act, y = self._fuse(n)
        opt = s.FullyConnectedOptionsT()
        opt.fusedActivationFunction, opt.keepNumDims = act, keep_dims
        wt = self.int8_weight(n.inputs[1], (n.name or "fc") + "_w",
                              (lambda a: a.T) if transposed else (lambda a: a), 0)
        if wt is not None:
            opt.asymmetricQuantizeInputs = True
        else:
            wt = self.const(self._name((n.name or "fc") + "_w"), np.ascontiguousarray(w_out_in),
                            weight=True)
        ins = [x, wt]
        if bias is not None:
            ins.append(self.const(self._name((n.name or "fc") + "_b"),
                                  np.asarray(bias, np.float32).reshape(-1), weight=True))
        else:
            ins.append(-1)
        self.b.op(9, ins, [self.out(y, "onnx")], opt, s.BuiltinOptions.FullyConnectedOptions)

    def gemm(self, n: ir.Node) -> None:
        w = wconst(n.inputs[1]).astype(np.float32)
        tb = bool(n.attributes.get_int("transB", 0))
        w = w if tb else w.T
        c = wconst(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else None
        if c is not None:
            c = c.astype(np.float32) * n.attributes.get_float("beta", 1.0)
            c = np.broadcast_to(c.reshape(-1) if c.size == w.shape[0] else c, (w.shape[0],))
        self.fully_connected(n, w, c, False, transposed=not tb)

    def matmul(self, n: ir.Node) -> None:
        w = wconst(n.inputs[1])
        if w is not None and w.ndim == 2:
            keep_dims = len(dims(n.inputs[0], 1)) > 2
            self.fully_connected(n, w.astype(np.float32).T, None, keep_dims)
            return
        a, b = (self.get(v.name, "onnx") for v in n.inputs)
        self.b.op(126, [a, b], [self.out(n.outputs[0], "onnx")],
                  self.b.s.BatchMatMulOptionsT(), self.b.s.BuiltinOptions.BatchMatMulOptions)

    def pool(self, n: ir.Node) -> None:
        s = self.b.s
        x = self.get(n.inputs[0].name, "nhwc")
        k, st = ints(n, "kernel_shape", [1, 1]), ints(n, "strides", [1, 1])
        pads = onnx_pads(n, self.b.shape_of(x)[1:3], k, st, [1, 1])
        if n.attributes.get_int("ceil_mode", 0):  # pad the end so floor mode gives ceil's size
            out_hw, in_hw = dims(n.outputs[0], 1)[2:], self.b.shape_of(x)[1:3]
            for i in range(2):
                need = (out_hw[i] - 1) * st[i] + k[i] - (in_hw[i] + pads[i] + pads[i + 2])
                pads[i + 2] += max(need, 0)
        padding, explicit = self._padding(self.b.shape_of(x)[1:3], k, st, [1, 1], pads)
        is_max = n.op_type == "MaxPool"
        if explicit:
            if not is_max:
                raise UnsupportedOpError(n.op_type, n.name, "arm target",
                                         "AveragePool pads that are neither SAME nor VALID")
            x = self._pad(x, explicit, float(np.finfo(np.float32).min))
        opt = s.Pool2DOptionsT()
        opt.padding, opt.strideH, opt.strideW = padding, st[0], st[1]
        opt.filterHeight, opt.filterWidth = k[0], k[1]
        act, y = self._fuse(n)
        opt.fusedActivationFunction = act
        self.b.op(17 if is_max else 1, [x], [self.out(y, "nhwc")], opt,
                  s.BuiltinOptions.Pool2DOptions)

    def global_pool(self, n: ir.Node) -> None:
        s = self.b.s
        x = self.get(n.inputs[0].name, "nhwc")
        opt = s.ReducerOptionsT()
        opt.keepDims = True
        axes = self.b.const("axes12", np.asarray([1, 2], np.int32))
        code = 40 if n.op_type == "GlobalAveragePool" else 82  # MEAN / REDUCE_MAX
        self.b.op(code, [x, axes], [self.out(n.outputs[0], "nhwc")], opt,
                  s.BuiltinOptions.ReducerOptions)

    def reshape(self, n: ir.Node) -> None:
        src = n.inputs[0]
        shape = dims(src, 1)
        spatial_one = len(shape) == 4 and shape[2] * shape[3] == 1
        if self.layout(src.name) == "nhwc" and spatial_one:
            x = self.get(src.name, "nhwc")  # [N,1,1,C] and [N,C,1,1] hold the same order
        else:
            x = self.get(src.name, "onnx")
        y = n.outputs[0]
        new = self.b.const(self._name("shape"), np.asarray(dims(y, 1), np.int32))
        self.b.op(22, [x, new], [self.out(y, "onnx")])

    def softmax(self, n: ir.Node) -> None:
        s = self.b.s
        v = n.inputs[0]
        rank = len(dims(v, 1))
        axis = n.attributes.get_int("axis", -1) % rank
        opt = s.SoftmaxOptionsT()
        opt.beta = 1.0
        if self.layout(v.name) == "nhwc" and axis == 1:
            x, lay = self.get(v.name, "nhwc"), "nhwc"
        elif axis == rank - 1:
            x, lay = self.get(v.name, "onnx"), "onnx"
        else:  # move the axis last, softmax, move it back
            x = self.get(v.name, "onnx")
            perm = [d for d in range(rank) if d != axis] + [axis]
            moved = self._transpose(x, perm)
            y = self.out(n.outputs[0], "onnx")  # int8 (fixed 1/256, −128) under the INT8 lowering
            sm = self.b.tensor(self._name("softmax"), self.b.shape_of(moved), self.b.dtypes[y],
                               self.b.quant[y])
            self.b.op(25, [moved], [sm], opt, s.BuiltinOptions.SoftmaxOptions)
            back = [perm.index(d) for d in range(rank)]
            self.b.op(39, [sm, self.b.const(self._name("perm"), np.asarray(back, np.int32))], [y])
            return
        self.b.op(25, [x], [self.out(n.outputs[0], lay)], opt, s.BuiltinOptions.SoftmaxOptions)

    def _transpose(self, x: int, perm) -> int:
        shape = [self.b.shape_of(x)[p] for p in perm]
        out = self.b.tensor(self._name("t"), shape, self.b.dtypes[x], self.b.quant[x])
        self.b.op(39, [x, self.b.const(self._name("perm"), np.asarray(perm, np.int32))], [out])
        return out

    def split(self, n: ir.Node) -> None:
        s = self.b.s
        v = n.inputs[0]
        rank = len(dims(v, 1))
        axis = n.attributes.get_int("axis", 0) % rank
        sizes = [(dims(o, 1)[axis]) for o in n.outputs]
        lay = self.layout(v.name) if rank == 4 else "onnx"
        x = self.get(v.name, lay)
        if lay == "nhwc":
            axis = _TO_NHWC.index(axis)
        opt = s.SplitVOptionsT()
        opt.numSplits = len(sizes)
        outs = [self.out(o, lay) for o in n.outputs]
        self.b.op(102, [x, self.b.const(self._name("sizes"), np.asarray(sizes, np.int32)),
                        self.b.const(self._name("axis"), np.asarray(axis, np.int32))], outs,
                  opt, s.BuiltinOptions.SplitVOptions)

    def slice(self, n: ir.Node) -> None:
        s = self.b.s
        v = n.inputs[0]
        shape = dims(v, 1)
        rank = len(shape)
        starts, ends = const_array(n.inputs[1]), const_array(n.inputs[2])
        axes = const_array(n.inputs[3]) if len(n.inputs) > 3 and n.inputs[3] is not None \
            else np.arange(len(starts))
        steps = const_array(n.inputs[4]) if len(n.inputs) > 4 and n.inputs[4] is not None \
            else np.ones(len(starts), np.int64)
        begin, end, stride = [0] * rank, list(shape), [1] * rank
        for a, b0, e0, st in zip(axes, starts, ends, steps):
            a, dim = int(a) % rank, shape[int(a) % rank]
            b0, e0 = int(b0), int(e0)
            b0 = min(max(b0 + dim if b0 < 0 else b0, 0), dim)
            e0 = min(max(e0 + dim if e0 < 0 else e0, 0), dim)
            begin[a], end[a], stride[a] = b0, e0, int(st)
        lay = "nhwc" if rank == 4 and self.layout(v.name) == "nhwc" else "onnx"
        if lay == "nhwc":  # slice the NHWC tensor itself: the bounds in NHWC order
            begin, end, stride = ([a[p] for p in _TO_NHWC] for a in (begin, end, stride))
        x = self.get(v.name, lay)
        ins = [x] + [self.b.const(self._name(k), np.asarray(a, np.int32))
                     for k, a in (("begin", begin), ("end", end), ("stride", stride))]
        self.b.op(45, ins, [self.out(n.outputs[0], lay)], s.StridedSliceOptionsT(),
                  s.BuiltinOptions.StridedSliceOptions)

    def concat(self, n: ir.Node) -> None:
        s = self.b.s
        rank = len(dims(n.outputs[0], 1))
        lay = "nhwc" if rank == 4 and any(self.layout(v.name) == "nhwc" for v in n.inputs) \
            else "onnx"
        axis = n.attributes.get_int("axis", 0) % rank
        if lay == "nhwc":
            axis = _TO_NHWC.index(axis)
        ins = [self.get(v.name, lay) for v in n.inputs]
        opt = s.ConcatenationOptionsT()
        opt.axis = axis
        self.b.op(2, ins, [self.out(n.outputs[0], lay)], opt,
                  s.BuiltinOptions.ConcatenationOptions)

    def resize(self, n: ir.Node) -> None:
        s = self.b.s
        (code, align, half), _ = resize_mode(n)
        x = self.get(n.inputs[0].name, "nhwc")
        y = n.outputs[0]
        size = self.b.const(self._name("size"), np.asarray(dims(y, 1)[2:], np.int32))
        if code == 23:
            opt, otype = s.ResizeBilinearOptionsT(), s.BuiltinOptions.ResizeBilinearOptions
        else:
            opt, otype = s.ResizeNearestNeighborOptionsT(), s.BuiltinOptions.ResizeNearestNeighborOptions
        opt.alignCorners, opt.halfPixelCenters = align, half
        self.b.op(code, [x, size], [self.out(y, "nhwc")], opt, otype)

    def binary(self, n: ir.Node, op: str | None = None) -> None:
        """``n`` as TFLite ``op`` (its own type by default; the int8 lowering writes x / c as MUL
        by 1/c: ``divisor_as_reciprocal``)."""
        op = op or n.op_type
        code, otype = BINARY[op]
        a, c = n.inputs
        rank = len(dims(n.outputs[0], 1))
        nhwc = rank == 4 and any(
            v.name in self.vals and self.layout(v.name) == "nhwc" for v in (a, c))
        lay = "nhwc" if nhwc else "onnx"
        ins = []
        for v in (a, c):
            arr = const_array(v) if v.name not in self.vals else None
            if arr is not None:
                arr = arr.astype(np.float32) if arr.dtype == np.float64 else arr
                if v is c and op != n.op_type:  # Div → MUL: the divisor's reciprocal
                    arr = (1.0 / arr.astype(np.float32)).astype(np.float32)
                if nhwc:
                    arr = arr.reshape((1,) * (4 - arr.ndim) + arr.shape).transpose(_TO_NHWC)
                ins.append(self.const(self._name(v.name or "c"), np.ascontiguousarray(arr),
                                      weight=True))
            else:
                ins.append(self.get(v.name, lay))
        ins = self.binary_operands(op, ins)
        if otype and self.fuse_elementwise:  # ADD/SUB/MUL/DIV carry a fused activation
            act, y = self._fuse(n)
            opt = _BINARY_OPTIONS[op](self.b.s)()
            opt.fusedActivationFunction = act
            self.b.op(code, ins, [self.out(y, lay)], opt, otype)
            return
        self.b.op(code, ins, [self.out(n.outputs[0], lay)])

    def binary_operands(self, op: str, ins: list[int]) -> list[int]:
        """The TFLite operands of a binary ``op`` (the int8 lowering guards a DIV's divisor)."""
        return ins

    def unary(self, n: ir.Node, code: int, options=None, otype: int = 0) -> None:
        v = n.inputs[0]
        lay = self.layout(v.name)
        self.b.op(code, [self.get(v.name, lay)], [self.out(n.outputs[0], lay)], options, otype)

    def clip(self, n: ir.Node) -> None:
        lo, hi = clip_bounds(n)
        if (lo, hi) == (0.0, 6.0):
            return self.unary(n, 21)  # RELU6
        v = n.inputs[0]
        lay = self.layout(v.name)
        x = self.get(v.name, lay)
        steps = [(55, lo)] * (lo is not None) + [(57, hi)] * (hi is not None)  # MAXIMUM, MINIMUM
        if not steps:
            self.vals[n.outputs[0].name] = self.vals[v.name]
            return None
        for i, (code, bound) in enumerate(steps):
            last = i == len(steps) - 1
            out = self.out(n.outputs[0], lay) if last else self.b.tensor(
                self._name("clip"), self.b.shape_of(x))
            self.b.op(code, [x, self.b.const(self._name("bound"),
                                             np.asarray(bound, np.float32))], [out])
            x = out
        return None

    def node(self, n: ir.Node) -> None:
        """Write ``n`` with its rule (rules.py); a node fused into the op before it, and a
        weight-only DequantizeLinear of the hybrid mode, are not written themselves."""
        if id(n) in self.fused:
            return
        if self.hybrid and n.op_type == "DequantizeLinear" and const_array(n.inputs[0]) is not None:
            return  # a weight-only DQ: read where used (int8_weight / wconst)
        why = unsupported_reason(n)
        if why:
            raise UnsupportedOpError(n.op_type, n.name or "?", "arm target", why)
        RULES.get(n.op_type).lower(self, n)

    def run(self) -> bytes:
        for v in self.g.inputs:
            idx = self.b.tensor(v.name, dims(v, 1), np.dtype(v.dtype.numpy()).name)
            self.b.graph.inputs.append(idx)
            self.b.io_names[0].append(v.name)
            self.vals[v.name] = (idx, "onnx")
        for n in self.g:
            self.node(n)
        for v in self.g.outputs:
            idx = self.get(v.name, "onnx")
            self.name_output(idx, v.name)
            self.b.graph.outputs.append(idx)
            self.b.io_names[1].append(v.name)
        return self.b.to_bytes()

    def name_output(self, idx: int, name: str) -> None:
        """The graph output tensor carries the model's output name (an inner NHWC tensor that
        had it is renamed), so tools that read tensor names see the ONNX names."""
        tensors = self.b.graph.tensors
        if tensors[idx].name == name or idx in self.b.graph.inputs:
            return
        for i, t in enumerate(tensors):
            if t.name == name and i != idx:
                t.name = f"{name}_inner"
        tensors[idx].name = name


def lower_to_tflite(model: ir.Model, precision: str, hybrid: bool = False) -> bytes:
    """The .tflite bytes of ``model`` (FP32 IR) at ``precision`` (fp32 or fp16). ``hybrid``: a
    weight-only IR (DequantizeLinear(int8) weights, float activations) → TFLite dynamic-range ops
    (int8 weight tensors, float in and out; the kernels quantize activations on the fly)."""
    return _Lowerer(model, fp16=precision == "fp16", hybrid=hybrid).run()

"""Lower a QDQ IR (quantized under the TFLite scheme) to full-integer TFLite kernels.

The QDQ graph says what runs in int8: a compute node whose activation inputs all come through a
DequantizeLinear and whose (fused) output goes to one QuantizeLinear becomes an int8 TFLite op that
writes the Q's tensor directly (scale and zero point from the Q); its weights are the DQ'd int8
constants (per channel: axis 0 of the TFLite filter, axis 3 for depthwise), its bias the int32
constant (scale = input scale × weight scale, from the writer). A DequantizeLinear of an activation
is an alias of the int8 tensor; a QuantizeLinear that no int8 op absorbed is a QUANTIZE op; an op
that stays float reads its int8 inputs through DEQUANTIZE. Graph inputs and outputs stay float.
Beyond one op per kernel: a Div by a constant is a MUL by its reciprocal, a Div by a one-signed
tensor a DIV whose divisor is first moved off its zero point; a Concat followed by Relu / Relu6 /
Clip(−1, 1) is a CONCATENATION into the clamped output's range (the requantization saturates).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.quantization.qdq import int32_bias
from autoglm_compress.quantization.qdq_read import read_qparams
from autoglm_compress.targets.ir_reads import dims, wconst
from autoglm_compress.targets.tflite.lower import _Lowerer
from autoglm_compress.targets.tflite.rules_rnn import FLOAT_REASONS

__all__ = ["lower_qdq_to_tflite", "INT8_OPS"]

logger = logging.getLogger(__name__)

# Ops written as int8 kernels when the QDQ graph quantizes them (the TFLite scheme's input and
# output ops): TFLite has int8 kernels for each (formats.md).
INT8_OPS = frozenset({"Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool",
                      "GlobalMaxPool", "Reshape", "Flatten", "Concat", "Add", "Sub", "Mul",
                      "Resize", "Sigmoid", "Softmax", "Tanh", "Gelu", "Transpose", "Squeeze",
                      "Unsqueeze", "Pad", "ConvTranspose", "HardSwish", "HardSigmoid",
                      "ReduceMean", "ReduceMax", "LeakyRelu", "Split", "Slice", "Div"})
# TFLite kernels whose int8 input must carry the output's scale and zero point (formats.md; a
# mismatch fails, or worse, gives wrong values silently): an input at another scale is requantized
# (QUANTIZE int8 → int8) first. The scheme shares these scales, so this only happens where a
# kernel's fixed output range was kept out of a group (a sigmoid's 1/256 into a Concat).
SAME_SCALE_OPS = frozenset({"MaxPool", "AveragePool", "GlobalMaxPool", "ReduceMax", "Concat",
                            "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Pad",
                            "Split", "Slice"})
# Ops with a fused-activation field: a single Relu/Relu6 after them is written into the op.
_FUSING = frozenset({"Conv", "Gemm", "MaxPool", "AveragePool", "ConvTranspose"})
_FUSING_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div"})
# int8 CONCATENATION refuses a fused activation: a Relu/Relu6/Clip(-1, 1) after it is the
# saturation of its inputs' requantization into the clamped output's scale (concat below).
_CLAMPED_BY_RANGE = frozenset({"Concat"})
# The int8 DIV kernel fails (div.cc: "data[i] != zero_point") on a divisor at its zero point — any
# value within half a step of 0, which an int8 range always holds — so a divisor runs int8 only
# when that code is its lowest or highest (a one-signed range) and is nudged off it first.
DIV_FLOAT_REASON = ("Div by a tensor whose int8 range holds 0 inside it: LiteRT's int8 DIV fails "
                    "on a divisor at its zero point, so it runs float")
_FIRST_INPUT_ONLY = frozenset({"Conv", "Gemm", "Reshape", "Resize", "Squeeze", "Unsqueeze", "Pad",
                               "ConvTranspose", "ReduceMean", "ReduceMax", "Split", "Slice"})


def _quant(q) -> dict:
    return {"scale": np.asarray(q.scale, np.float32).reshape(-1),
            "zero_point": np.asarray(q.zero_point, np.int64).reshape(-1), "axis": 0}


class _Int8Lowerer(_Lowerer):
    fuse_elementwise = True
    hybrid_rnn = True  # LSTM/GRU: int8 weights, float activations (lower_rnn.py, rules_rnn.py)

    def __init__(self, model: ir.Model, io: str = "float"):
        super().__init__(model, fp16=False)
        self.io = io
        self.qmode = None  # (Q node) while an int8 op is emitted
        self.qouts: dict[str, ir.Node] = {}  # its other outputs' Q nodes (SPLIT), by value
        self.same_scale = False  # the op being emitted needs its input at the output's scale
        self.w_axis = 0
        self.wq = None  # the weight's qparams of the weighted op being emitted
        self.int8_nodes: list[str] = []
        self.float_nodes: list[str] = []
        self.float_reasons: dict[int, tuple[str, str]] = {}  # TFLite op → (node, why float)

    # -- tensors ---------------------------------------------------------------------------
    def _is_int8(self, idx: int) -> bool:
        return self.b.dtypes[idx] in (np.dtype("int8"), np.dtype("uint8"))

    def get(self, name: str, want: str) -> int:
        idx = super().get(name, want)
        if self.qmode is not None and self.same_scale and self._is_int8(idx):
            return self._requantize(idx, _quant(read_qparams(self.qmode)))
        if self.qmode is not None or not self._is_int8(idx):
            return idx
        key = (name, want + "_float")
        if key not in self.alt:
            out = self.b.tensor(self._name(name + "_f"), self.b.shape_of(idx))
            self.b.op(6, [idx], [out])  # DEQUANTIZE
            self.alt[key] = out
        return self.alt[key]

    def out(self, v: ir.Value, layout: str) -> int:
        if self.qmode is None:
            return super().out(v, layout)
        qn = self.qouts.get(v.name, self.qmode)
        y = qn.outputs[0]
        shape = dims(y, 1)
        if layout == "nhwc" and len(shape) == 4:
            shape = [shape[p] for p in (0, 2, 3, 1)]
        q = read_qparams(qn)
        idx = self.b.tensor(y.name, shape, q.dtype, _quant(q))
        self.vals[y.name] = (idx, layout if len(shape) == 4 else "onnx")
        return idx

    def _requantize(self, idx: int, quant: dict) -> int:
        """``idx`` at ``quant``'s scale and zero point: itself when it has them, else a QUANTIZE
        (int8 → int8 requantization) into a new tensor."""
        have = self.b.quant[idx]
        if (np.allclose(have["scale"], quant["scale"], rtol=1e-6, atol=0)
                and np.array_equal(have["zero_point"], quant["zero_point"])):
            return idx
        key = (idx, float(quant["scale"][0]), int(quant["zero_point"][0]))
        if key not in self.alt:
            t = self.graph_tensor_name(idx)
            out = self.b.tensor(self._name(t + "_rq"), self.b.shape_of(idx), self.b.dtypes[idx],
                                quant)
            self.b.op(114, [idx], [out])  # QUANTIZE int8 → int8
            self.alt[key] = out
        return self.alt[key]

    def graph_tensor_name(self, idx: int) -> str:
        name = self.b.graph.tensors[idx].name
        return name.decode() if isinstance(name, bytes) else str(name)

    def qconst(self, name: str, arr: np.ndarray) -> int:
        """A constant operand of an int8 element-wise op, int8 per-tensor (its own range, 0
        included; symmetric when it has one sign change or none — the kernels rescale it)."""
        arr = np.asarray(arr, np.float32)
        lo, hi = min(float(arr.min()), 0.0), max(float(arr.max()), 0.0)
        scale = max(hi - lo, 1e-8) / 255.0
        zp = int(np.clip(np.rint(-128 - lo / scale), -128, 127))
        q = np.clip(np.rint(arr / scale) + zp, -128, 127).astype(np.int8)
        return self.b.const(name, q, {"scale": np.asarray([scale], np.float32),
                                      "zero_point": np.asarray([zp], np.int64)})

    def const(self, name: str, arr: np.ndarray, weight: bool = False) -> int:
        if self.qmode is None or not weight:
            return super().const(name, arr, weight)
        if self.wq is None:  # a constant operand of a weightless int8 op (Add(x, c), Mul(x, c))
            return self.qconst(name, arr)
        arr = np.asarray(arr, np.float32)
        if arr.ndim >= 2:  # the filter / FC weight, already in TFLite layout
            s = self.wq.scale.reshape(-1).astype(np.float64)
            shape = [1] * arr.ndim
            shape[self.w_axis] = -1
            q = np.clip(np.rint(arr / s.reshape(shape if s.size > 1 else ())), -127, 127)
            quant = {"scale": s.astype(np.float32), "zero_point": np.zeros(s.size, np.int64),
                     "axis": self.w_axis if s.size > 1 else 0}
            return self.b.const(name, q.astype(np.int8), quant)
        s_in = float(self.b.quant[self.cur_input]["scale"][0])
        s_b = s_in * self.wq.scale.reshape(-1).astype(np.float64)
        quant = {"scale": s_b.astype(np.float32), "zero_point": np.zeros(s_b.size, np.int64)}
        return self.b.const(name, int32_bias(arr, s_b), quant)

    def _out_quant(self, y):
        return None if self.qmode is None else _quant(read_qparams(self.qmode))

    def _pad(self, x: int, pads, value):
        if self.qmode is None or value is None:
            return super()._pad(x, pads, value)
        zp = int(self.b.quant[x]["zero_point"][0])
        t, left, b_, r = pads
        shape = self.b.shape_of(x)
        shape = [shape[0], shape[1] + t + b_, shape[2] + left + r, shape[3]]
        out = self.b.tensor(self._name("pad"), shape, self.b.dtypes[x], self.b.quant[x])
        spec = self.b.const(self._name("pads"), np.asarray([[0, 0], [t, b_], [left, r], [0, 0]],
                                                           np.int32))
        low = -128 if self.b.dtypes[x] == np.dtype("int8") else 0
        cv = self.b.const(self._name("padv"), np.asarray([low], self.b.dtypes[x]),
                          dict(self.b.quant[x]))
        del zp
        self.b.op(60, [x, spec, cv], [out])
        return out

    # -- the QDQ structure -----------------------------------------------------------------
    def _int8_input(self, v: ir.Value | None) -> bool:
        return v is not None and v.name in self.vals and self._is_int8(self.vals[v.name][0])

    def _q_after(self, n: ir.Node):
        """The Q node reading n's output alone — after the activation the op fuses (conv, FC and
        pools fuse Relu/Relu6; the emission fuses it again) — or None."""
        if n.op_type == "Split":  # each part through its own Q
            qs = [self._single_q(o) for o in n.outputs]
            return qs[0] if all(qs) else None
        y = n.outputs[0]
        fusing = n.op_type in _FUSING or n.op_type in _FUSING_ELEMENTWISE or (
            n.op_type in _CLAMPED_BY_RANGE) or (
            n.op_type == "MatMul" and wconst(n.inputs[1]) is not None)
        if fusing:
            act, y = self._fuse(n)
            if act:  # only looked at here: the op's emission marks it fused
                self.fused.discard(id(next(u for u, _ in n.outputs[0].uses())))
        return self._single_q(y)

    @staticmethod
    def _single_q(y: ir.Value):
        uses = list(y.uses())
        if len(uses) == 1 and uses[0][0].op_type == "QuantizeLinear" and not y.is_graph_output():
            return uses[0][0]
        return None

    @staticmethod
    def _int8_weights(n: ir.Node) -> bool:
        """A weighted op runs int8 only with int8 weights (a DequantizeLinear before the weight);
        one kept in float (--keep-fp32) between quantized neighbours runs float."""
        from autoglm_compress.ir_ops import is_weighted, weight_input

        if not is_weighted(n) or n.op_type == "MatMul" and wconst(n.inputs[1]) is None:
            return True
        w = n.inputs[weight_input(n)]
        p = w.producer() if w is not None else None
        return p is not None and p.op_type == "DequantizeLinear"

    def _activation_inputs(self, n: ir.Node) -> list[ir.Value]:
        ins = list(n.inputs)
        if n.op_type in _FIRST_INPUT_ONLY or (
                n.op_type == "MatMul" and wconst(n.inputs[1]) is not None):
            ins = ins[:1]
        elif n.op_type in ("Add", "Sub", "Mul", "Div"):  # a constant operand is quantized here
            ins = [v for v in ins if v is not None and (v.name in self.vals
                                                        or const_array(v) is None)]
        return [v for v in ins if v is not None and v.name]

    def node(self, n: ir.Node) -> None:
        op = n.op_type
        if op == "DequantizeLinear":
            if n.inputs[0].name in self.vals:  # an activation: the int8 tensor itself
                self.vals[n.outputs[0].name] = self.vals[n.inputs[0].name]
            return
        if op == "QuantizeLinear":
            if n.outputs[0].name not in self.vals:
                self._quantize(n)
            return
        if id(n) in self.fused:
            return
        qn = self._q_after(n) if op in INT8_OPS else None
        why = self._float_reason(n, qn)
        if why is None:
            self._int8(n, qn)
            return
        self.float_nodes.append(n.name or op)
        start = len(self.b.graph.operators)
        super().node(n)
        for k in range(start, len(self.b.graph.operators)):
            self.float_reasons[k] = (n.name or op, why)

    def _float_reason(self, n: ir.Node, qn) -> str | None:
        """Why ``n`` runs float in the .tflite (None: it runs int8)."""
        op = n.op_type
        if op not in INT8_OPS:
            return FLOAT_REASONS.get(op, f"{op} has no int8 TFLite lowering here")
        if op == "HardSigmoid" and n.attributes.get_float("alpha", 0.2) == 0:
            return "HardSigmoid with α = 0 is the constant clamp(β, 0, 1)"
        if op == "Div" and const_array(n.inputs[1]) is None and n.inputs[1].name in self.vals \
                and self._is_int8(self.vals[n.inputs[1].name][0]) \
                and self._divisor_nudge(self.vals[n.inputs[1].name][0]) is None:
            return DIV_FLOAT_REASON
        if op == "Div" and const_array(n.inputs[1]) is not None \
                and not np.all(const_array(n.inputs[1])):
            return "Div by a constant that holds 0"
        if op in _CLAMPED_BY_RANGE and qn is not None and not self._clamp_is_range(n, qn):
            return ("its output's int8 range (shared or overridden) holds values the "
                    "activation after it clamps away, and int8 CONCATENATION fuses none")
        if not self._int8_weights(n):
            return "its weights are kept float (--keep-fp32 or the accuracy fallback)"
        if _feeds_float_output(n):
            return ("computes a graph output kept float (outputs are quantized only after a "
                    "weighted op: a detector's boxes and scores keep float resolution)")
        if not all(self._int8_input(v) for v in self._activation_inputs(n)):
            return "an input is not quantized in the QDQ graph (float producer or graph input)"
        if qn is None:
            y = n.outputs[0]
            if y.is_graph_output():
                return "writes a graph output kept float (quantized outputs only after a " \
                       "weighted op, for resolution)"
            uses = list(y.uses())
            if len(uses) == 1 and uses[0][0].op_type in ("Relu", "Clip"):
                return (f"its output is quantized only after the {uses[0][0].op_type} that "
                        f"follows, which TFLite cannot fuse into {op}")
            return "its output is not quantized in the QDQ graph (read by a float op)"
        return None

    def _quantize(self, n: ir.Node) -> None:
        x = n.inputs[0]
        lay = self.layout(x.name)
        src = super().get(x.name, lay) if x.name in self.vals else self.get(x.name, lay)
        q = read_qparams(n)
        if x.is_graph_input() and self.io != "float":  # full-integer IO: the input is the q
            idx = self.vals[x.name][0]
            t = self.b.graph.tensors[idx]
            dt = np.dtype(self.io)
            quant = _quant(q)
            if dt == np.dtype("uint8"):
                quant = {**quant, "zero_point": quant["zero_point"] + 128}
            t.type = {np.dtype("int8"): 9, np.dtype("uint8"): 3}[dt]
            qp = self.b.s.QuantizationParametersT()
            qp.scale, qp.zeroPoint = quant["scale"], quant["zero_point"]
            t.quantization = qp
            self.b.dtypes[idx], self.b.quant[idx] = dt, quant
            if dt == np.dtype(q.dtype):
                self.vals[n.outputs[0].name] = (idx, lay)
                return
            src = idx  # uint8 → int8 QUANTIZE below
        out = self.b.tensor(n.outputs[0].name, self.b.shape_of(src), q.dtype, _quant(q))
        self.b.op(114, [src], [out])  # QUANTIZE
        self.vals[n.outputs[0].name] = (out, lay)

    def hard_sigmoid(self, n: ir.Node) -> None:
        """int8: clamp(α·x + β, 0, 1) as MUL by α — exact, into a tensor at scale s_x·|α| with
        x's zero point z (α > 0) or −z − 1 (α < 0: code q becomes −q − 1, every code still in
        [−128, 127]) — then ADD β at the output's scale with RELU_N1_TO_1 fused; the output's own
        range (0 at its lowest code when calibrated ≥ 0) clamps at 0, else a MAXIMUM with 0."""
        if self.qmode is None:
            return super().hard_sigmoid(n)
        v = n.inputs[0]
        lay = self.layout(v.name)
        x = self.get(v.name, lay)
        alpha = n.attributes.get_float("alpha", 0.2)
        beta = n.attributes.get_float("beta", 0.5)
        qx = self.b.quant[x]
        s = self.b.s
        sign = 1 if alpha > 0 else -1
        zx = np.asarray(qx["zero_point"])
        a = self.b.const(self._name("hsig_a"), np.asarray([127 * sign], np.int8),
                         {"scale": np.asarray([abs(alpha) / 127], np.float32),
                          "zero_point": np.asarray([0], np.int64)})
        ax = self.b.tensor(self._name("hsig_ax"), self.b.shape_of(x), "int8",
                           {"scale": np.asarray(qx["scale"], np.float32) * np.float32(abs(alpha)),
                            "zero_point": zx if sign > 0 else -zx - 1})
        self.b.op(18, [x, a], [ax], s.MulOptionsT(), s.BuiltinOptions.MulOptions)
        y = self.out(n.outputs[0], lay)
        q = self.b.quant[y]
        zero_at_bottom = int(q["zero_point"][0]) == -128
        opt = s.AddOptionsT()
        opt.fusedActivationFunction = 2  # RELU_N1_TO_1
        mid = y if zero_at_bottom else self.b.tensor(self._name("hsig"), self.b.shape_of(y),
                                                     "int8", q)
        self.b.op(0, [ax, self.qconst(self._name("hsig_b"), np.asarray([beta]))], [mid], opt,
                  s.BuiltinOptions.AddOptions)
        if not zero_at_bottom:  # the output range holds negatives: clamp at 0 explicitly
            self.b.op(55, [mid, self.b.const(self._name("zero"), np.asarray(
                [int(q["zero_point"][0])], np.int8), dict(q))], [y])

    # -- Div and Concat + activation ---------------------------------------------------------
    def binary(self, n: ir.Node, op: str | None = None) -> None:
        """int8 Div: by a constant, MUL by its reciprocal (XNNPACK's int8 MUL; the constant int8
        per tensor, exact for a scalar); by a tensor, DIV with the divisor off its zero point
        (binary_operands)."""
        if self.qmode is not None and n.op_type == "Div" and op is None \
                and n.inputs[1].name not in self.vals:
            return super().binary(n, "Mul")
        return super().binary(n, op)

    def binary_operands(self, op: str, ins: list[int]) -> list[int]:
        if self.qmode is None or op != "Div" or not self._is_int8(ins[1]):
            return ins
        d = ins[1]
        code = self._divisor_nudge(d)  # _float_reason let it through: not None
        out = self.b.tensor(self._name(self.graph_tensor_name(d) + "_nz"), self.b.shape_of(d),
                            "int8", self.b.quant[d])
        bound = self.b.const(self._name("nz"), np.asarray([code], np.int8), dict(self.b.quant[d]))
        self.b.op(55 if code == -127 else 57, [d, bound], [out])  # MAXIMUM / MINIMUM
        return [ins[0], out]

    def _divisor_nudge(self, idx: int) -> int | None:
        """The code next to the zero point of a one-signed int8 divisor (its zero point the
        lowest code: −127; the highest: 126) that the DIV reads in its place; None when the
        range holds 0 inside (a code on each side: no clamp moves it off safely)."""
        zp = int(self.b.quant[idx]["zero_point"][0])
        return -127 if zp == -128 else 126 if zp == 127 else None

    def concat(self, n: ir.Node) -> None:
        """int8 CONCATENATION takes no fused activation: a Relu/Relu6/Clip(−1, 1) after it is
        the saturation of the inputs' requantization into the clamped output's range, whose
        codes all lie inside the clamp (``_clamp_is_range``); the activation is marked written."""
        if self.qmode is not None:
            self._fuse(n)
        super().concat(n)

    def _clamp_is_range(self, n: ir.Node, qn) -> bool:
        """Whether every code of ``qn``'s range (the Q after the activation that follows ``n``)
        lies inside that activation's clamp, so saturating to it is the activation."""
        act, y = self._fuse(n)
        if not act:
            return True
        self.fused.discard(id(next(u for u, _ in n.outputs[0].uses())))
        lo, hi = {1: (0.0, None), 2: (-1.0, 1.0), 3: (0.0, 6.0)}[act]
        q = read_qparams(qn)
        s, zp = float(np.asarray(q.scale).reshape(-1)[0]), int(np.asarray(q.zero_point).reshape(-1)[0])
        tol = 1e-6 * max(1.0, abs(s))
        return (-128 - zp) * s >= lo - tol and (hi is None or (127 - zp) * s <= hi + tol)

    def _int8(self, n: ir.Node, qn: ir.Node) -> None:
        from autoglm_compress.ir_ops import is_weighted, weight_input

        self.qmode, self.wq = qn, None
        if n.op_type == "Split":
            self.qouts = {o.name: self._single_q(o) for o in n.outputs}
        self.same_scale = n.op_type in SAME_SCALE_OPS
        try:
            if is_weighted(n) and wconst(n.inputs[weight_input(n)]) is not None:
                wv = n.inputs[weight_input(n)]
                self.wq = read_qparams(wv.producer())
                g = n.attributes.get_int("group", 1) if n.op_type == "Conv" else 1
                self.w_axis = 3 if g > 1 else 0
                self.cur_input = self.vals[n.inputs[0].name][0]
            _Lowerer.node(self, n)
        finally:
            self.qmode, self.same_scale, self.qouts = None, False, {}
        self.int8_nodes.append(n.name or n.op_type)

    def run(self) -> bytes:
        if self.io == "float":
            return super().run()
        for v in self.g.inputs:
            idx = self.b.tensor(v.name, dims(v, 1), np.dtype(v.dtype.numpy()).name)
            self.b.graph.inputs.append(idx)
            self.b.io_names[0].append(v.name)
            self.vals[v.name] = (idx, "onnx")
        for n in self.g:
            self.node(n)
        for v in self.g.outputs:
            idx = _Lowerer.get(self, v.name, "onnx")  # int8 stays int8
            if self._is_int8(idx) and self.io == "uint8":
                q = dict(self.b.quant[idx])
                q["zero_point"] = np.asarray(q["zero_point"]) + 128
                out = self.b.tensor(self._name(v.name + "_u8"), self.b.shape_of(idx), "uint8", q)
                self.b.op(114, [idx], [out])
                idx = out
            self.name_output(idx, v.name)
            self.b.graph.outputs.append(idx)
            self.b.io_names[1].append(v.name)
        return self.b.to_bytes()


def _feeds_float_output(n: ir.Node, depth: int = 12) -> bool:
    """Whether ``n``'s outputs reach a float graph output through unquantized values only."""
    todo, seen = [(o, 0) for o in n.outputs], set()
    while todo:
        v, d = todo.pop()
        if v.is_graph_output():
            p = v.producer()
            if p is None or p.op_type != "DequantizeLinear":
                return True
        if id(v) in seen or d >= depth:
            continue
        seen.add(id(v))
        for u, _ in v.uses():
            if u.op_type != "QuantizeLinear":
                todo += [(o, d + 1) for o in u.outputs]
    return False


def lower_qdq_to_tflite(model: ir.Model, io: str = "float") -> tuple[bytes, dict]:
    """The full-integer .tflite of a QDQ ``model``; and which nodes run int8 / float (``reasons``:
    TFLite operator index → (node, why it runs float), for :func:`census.census`)."""
    lw = _Int8Lowerer(model, io)
    data = lw.run()
    return data, {"int8": lw.int8_nodes, "float": lw.float_nodes, "reasons": lw.float_reasons}

"""Lower a QDQ IR (quantized under the TFLite scheme) to full-integer TFLite kernels.

The QDQ graph says what runs in int8: a compute node whose activation inputs all come through a
DequantizeLinear and whose (fused) output goes to one QuantizeLinear becomes an int8 TFLite op that
writes the Q's tensor directly (scale and zero point from the Q); its weights are the DQ'd int8
constants (per channel: axis 0 of the TFLite filter, axis 3 for depthwise), its bias the int32
constant (scale = input scale × weight scale, from the writer). A DequantizeLinear of an activation
is an alias of the int8 tensor; a QuantizeLinear that no int8 op absorbed is a QUANTIZE op; an op
that stays float reads its int8 inputs through DEQUANTIZE. Graph inputs and outputs stay float.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.quantization.qdq import int32_bias
from autoglm_compress.quantization.qdq_read import read_qparams
from autoglm_compress.targets.ir_reads import dims, wconst
from autoglm_compress.targets.tflite.lower import _Lowerer

__all__ = ["lower_qdq_to_tflite", "INT8_OPS"]

logger = logging.getLogger(__name__)

# Ops written as int8 kernels when the QDQ graph quantizes them (the TFLite scheme's input and
# output ops): TFLite has int8 kernels for each (formats.md).
INT8_OPS = frozenset({"Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool",
                      "Reshape", "Flatten", "Concat", "Add", "Sub", "Mul", "Resize", "Sigmoid",
                      "Softmax", "Tanh", "Gelu", "Transpose", "Squeeze", "Unsqueeze", "Pad",
                      "ConvTranspose"})


def _quant(q) -> dict:
    return {"scale": np.asarray(q.scale, np.float32).reshape(-1),
            "zero_point": np.asarray(q.zero_point, np.int64).reshape(-1), "axis": 0}


class _Int8Lowerer(_Lowerer):
    def __init__(self, model: ir.Model, io: str = "float"):
        super().__init__(model, fp16=False)
        self.io = io
        self.qmode = None  # (Q node) while an int8 op is emitted
        self.w_axis = 0
        self.int8_nodes: list[str] = []
        self.float_nodes: list[str] = []

    # -- tensors ---------------------------------------------------------------------------
    def _is_int8(self, idx: int) -> bool:
        return self.b.dtypes[idx] in (np.dtype("int8"), np.dtype("uint8"))

    def get(self, name: str, want: str) -> int:
        idx = super().get(name, want)
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
        qn = self.qmode
        y = qn.outputs[0]
        shape = dims(y, 1)
        if layout == "nhwc" and len(shape) == 4:
            shape = [shape[p] for p in (0, 2, 3, 1)]
        q = read_qparams(qn)
        idx = self.b.tensor(y.name, shape, q.dtype, _quant(q))
        self.vals[y.name] = (idx, layout if len(shape) == 4 else "onnx")
        return idx

    def const(self, name: str, arr: np.ndarray, weight: bool = False) -> int:
        if self.qmode is None or not weight:
            return super().const(name, arr, weight)
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
        y = n.outputs[0]
        fusing = n.op_type in ("Conv", "Gemm", "MaxPool", "AveragePool", "ConvTranspose") or (
            n.op_type == "MatMul" and wconst(n.inputs[1]) is not None)
        if fusing:
            act, y = self._fuse(n)
            if act:  # only looked at here: the op's emission marks it fused
                self.fused.discard(id(next(u for u, _ in n.outputs[0].uses())))
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
        if n.op_type in ("Conv", "Gemm"):
            ins = ins[:1]
        elif n.op_type == "MatMul" and wconst(n.inputs[1]) is not None:
            ins = ins[:1]
        elif n.op_type in ("Reshape", "Resize", "Squeeze", "Unsqueeze", "Pad", "ConvTranspose"):
            ins = ins[:1]
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
        if qn is not None and all(self._int8_input(v) for v in self._activation_inputs(n)) \
                and self._int8_weights(n):
            self._int8(n, qn)
            return
        self.float_nodes.append(n.name or op)
        super().node(n)

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

    def _int8(self, n: ir.Node, qn: ir.Node) -> None:
        from autoglm_compress.ir_ops import is_weighted, weight_input

        self.qmode = qn
        try:
            if is_weighted(n) and wconst(n.inputs[weight_input(n)]) is not None:
                wv = n.inputs[weight_input(n)]
                self.wq = read_qparams(wv.producer())
                g = n.attributes.get_int("group", 1) if n.op_type == "Conv" else 1
                self.w_axis = 3 if g > 1 else 0
                self.cur_input = self.vals[n.inputs[0].name][0]
            _Lowerer.node(self, n)
        finally:
            self.qmode = None
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


def lower_qdq_to_tflite(model: ir.Model, io: str = "float") -> tuple[bytes, dict]:
    """The full-integer .tflite of a QDQ ``model``; and which nodes run int8 / float."""
    lw = _Int8Lowerer(model, io)
    data = lw.run()
    return data, {"int8": lw.int8_nodes, "float": lw.float_nodes}

"""TFLite lowerings of the ops sequence models add: GATHER (embeddings), CAST, the reductions
(SUM, REDUCE_MAX/MIN/PROD, MEAN), LayerNormalization and GELU.

LayerNormalization has no TFLite builtin: it is decomposed the way TFLite's own converter writes
it — MEAN, SQUARED_DIFFERENCE, MEAN, ADD ε, RSQRT, SUB, MUL, then scale and bias. GELU (the
``com.microsoft.Gelu`` that the fuse_gelu pass writes, or ONNX ``Gelu`` from opset 20) is the GELU
builtin (exact erf form unless ``approximate="tanh"``). A mixin of the lowerer (lower.py): it uses
its ``get``/``out``/``const`` and the builder ``b``; which nodes it takes is rules_seq.py's.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ir_reads import reduce_axes

__all__ = ["SequenceOps", "REDUCE_CODES", "LOGIC_CODES"]

REDUCE_CODES = {"ReduceMean": 40, "ReduceSum": 74, "ReduceMax": 82, "ReduceMin": 89,
                "ReduceProd": 81}
# Comparisons and logic (attention masks): ONNX op → TFLite builtin; IsNaN is NOT_EQUAL(x, x).
LOGIC_CODES = {"Equal": 71, "Greater": 61, "Less": 58, "GreaterOrEqual": 62, "LessOrEqual": 63,
               "And": 86, "Or": 84, "Not": 87, "IsNaN": 72, "Where": 123}


class SequenceOps:
    """Mixin: GATHER, CAST, reductions, LayerNormalization, GELU."""

    def gather(self, n: ir.Node) -> None:
        s = self.b.s
        data, idx = n.inputs
        rank = len(self._shape_of_value(data))
        opt = s.GatherOptionsT()
        opt.axis = n.attributes.get_int("axis", 0) % rank
        arr = const_array(idx) if idx.name not in self.vals else None
        ind = (self.b.const(self._name("indices"), arr.astype(np.int32)) if arr is not None
               else self.get(idx.name, "onnx"))
        x = self.get(data.name, "onnx")
        self.b.op(36, [x, ind], [self.out(n.outputs[0], "onnx")], opt,
                  s.BuiltinOptions.GatherOptions)

    def cast(self, n: ir.Node) -> None:
        v = n.inputs[0]
        lay = self.layout(v.name)
        self.b.op(53, [self.get(v.name, lay)], [self.out(n.outputs[0], lay)])

    def reduce(self, n: ir.Node) -> None:
        s = self.b.s
        v = n.inputs[0]
        axes = reduce_axes(n, len(self._shape_of_value(v)))
        opt = s.ReducerOptionsT()
        opt.keepDims = bool(n.attributes.get_int("keepdims", 1))
        lay, out_lay = "onnx", "onnx"
        if len(self._shape_of_value(v)) == 4 and self.layout(v.name) == "nhwc":
            # reduce the NHWC tensor itself (no TRANSPOSE back) where the result's order allows:
            # kept dims stay NHWC; dropped dims leave the same order in both layouts (H, W → N, C)
            kept = [d for d in (0, 2, 3, 1) if d not in axes]
            if opt.keepDims or kept == sorted(kept):
                lay, out_lay = "nhwc", "nhwc" if opt.keepDims else "onnx"
                axes = sorted((0, 2, 3, 1).index(a) for a in axes)
        self.b.op(REDUCE_CODES[n.op_type],
                  [self.get(v.name, lay),
                   self.b.const(self._name("axes"), np.asarray(axes, np.int32))],
                  [self.out(n.outputs[0], out_lay)], opt, s.BuiltinOptions.ReducerOptions)

    def _float_op(self, code: int, ins: list[int], shape, like: int | None = None) -> int:
        out = self.b.tensor(self._name("ln"), shape)
        self.b.op(code, ins, [out])
        return out

    def layernorm(self, n: ir.Node) -> None:
        s = self.b.s
        v = n.inputs[0]
        shape = self._shape_of_value(v)
        rank = len(shape)
        axis = n.attributes.get_int("axis", -1) % rank
        eps = n.attributes.get_float("epsilon", 1e-5)
        x = self.get(v.name, "onnx")
        axes = self.b.const(self._name("axes"), np.arange(axis, rank, dtype=np.int32))
        red = list(shape[:axis]) + [1] * (rank - axis)
        opt = s.ReducerOptionsT()
        opt.keepDims = True
        mean = self.b.tensor(self._name("ln_mean"), red)
        self.b.op(40, [x, axes], [mean], opt, s.BuiltinOptions.ReducerOptions)
        sq = self._float_op(99, [x, mean], shape)  # SQUARED_DIFFERENCE
        var = self.b.tensor(self._name("ln_var"), red)
        self.b.op(40, [sq, axes], [var], opt, s.BuiltinOptions.ReducerOptions)
        ve = self._float_op(0, [var, self.b.const(self._name("eps"),
                                                  np.asarray(eps, np.float32))], red)
        inv = self._float_op(76, [ve], red)  # RSQRT
        xm = self._float_op(41, [x, mean], shape)  # SUB
        y = self._float_op(18, [xm, inv], shape)  # MUL
        gamma = const_array(n.inputs[1])
        beta = (const_array(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None
                else None)
        out = self.out(n.outputs[0], "onnx")
        if beta is None:
            self.b.op(18, [y, self.const(self._name("ln_gamma"), gamma.astype(np.float32),
                                         weight=True)], [out])
            return
        y = self._float_op(18, [y, self.const(self._name("ln_gamma"), gamma.astype(np.float32),
                                              weight=True)], shape)
        self.b.op(0, [y, self.const(self._name("ln_beta"), beta.astype(np.float32),
                                    weight=True)], [out])

    def logic(self, n: ir.Node) -> None:
        """Comparisons, logic and Where (SELECT_V2, which broadcasts), in the ONNX layout."""
        ins = []
        for v in n.inputs:
            arr = const_array(v) if v.name not in self.vals else None
            if arr is not None:
                arr = arr.astype(np.float32) if arr.dtype == np.float64 else arr
                ins.append(self.b.const(self._name(v.name or "c"), np.ascontiguousarray(arr)))
            else:
                ins.append(self.get(v.name, "onnx"))
        if n.op_type == "IsNaN":
            ins = ins * 2
        self.b.op(LOGIC_CODES[n.op_type], ins, [self.out(n.outputs[0], "onnx")])

    def gelu(self, n: ir.Node) -> None:
        s = self.b.s
        v = n.inputs[0]
        lay = self.layout(v.name)
        opt = s.GeluOptionsT()
        opt.approximate = n.attributes.get_string("approximate", "none") == "tanh"
        self.b.op(150, [self.get(v.name, lay)], [self.out(n.outputs[0], lay)], opt,
                  s.BuiltinOptions.GeluOptions)


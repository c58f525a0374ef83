"""TFLite lowerings of the spatial ops beyond convolution and pooling: TRANSPOSE_CONV, PRELU, PAD
(constant → PAD/PADV2, reflect → MIRROR_PAD) and ELU. All work on NHWC maps (lower.py's layout).

ConvTranspose: ONNX weights [Cin, Cout, kH, kW] → TFLite [Cout, kH, kW, Cin]; TFLite's VALID output
is (in − 1)·s + k, ONNX subtracts its pads and adds output_padding, so the op is written VALID
(or SAME where the pads equal SAME's) and any other crop is a STRIDED_SLICE after it. A mixin of
the lowerer (lower.py); which nodes it takes is rules_seq.py's.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ir_reads import ints, wconst

__all__ = ["SpatialOps"]

_NCHW_TO_NHWC = (0, 2, 3, 1)


class SpatialOps:
    """Mixin: TRANSPOSE_CONV, PRELU, PAD/MIRROR_PAD, ELU."""

    def conv_transpose(self, n: ir.Node) -> None:
        s = self.b.s
        x = self.get(n.inputs[0].name, "nhwc")
        w = wconst(n.inputs[1]).astype(np.float32)  # [Cin, Cout, kH, kW]
        cout, k = w.shape[1], list(w.shape[2:])
        st = ints(n, "strides", [1, 1])
        pads = ints(n, "pads", [0, 0, 0, 0])
        opad = ints(n, "output_padding", [0, 0])
        nb, h, wd, _ = self.b.shape_of(x)
        full = [(h - 1) * st[0] + k[0], (wd - 1) * st[1] + k[1]]
        want = [full[0] - pads[0] - pads[2] + opad[0], full[1] - pads[1] - pads[3] + opad[1]]
        begin = [pads[0], pads[1]]
        if any(want[i] > full[i] - begin[i] for i in range(2)):  # output_padding past the kernel
            full = [max(full[i], begin[i] + want[i]) for i in range(2)]
        bias = wconst(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else None
        bias = np.zeros(cout, np.float32) if bias is None else bias.astype(np.float32)
        crop = begin != [0, 0] or want != full
        act, y = self._fuse(n)  # an activation commutes with the crop
        opt = s.TransposeConvOptionsT()
        opt.padding, opt.strideH, opt.strideW = 1, st[0], st[1]  # VALID
        opt.fusedActivationFunction = act
        shape_t = self.b.const(self._name("oshape"), np.asarray([nb, *full, cout], np.int32))
        wt = self.const(n.inputs[1].name + "_tfl",
                        np.ascontiguousarray(w.transpose(1, 2, 3, 0)), weight=True)
        bt = self.const(self._name((n.name or "deconv") + "_bias"), bias, weight=True)
        if not crop:
            self.b.op(67, [shape_t, wt, x, bt], [self.out(y, "nhwc")], opt,
                      s.BuiltinOptions.TransposeConvOptions, version=3)
            return
        mid = self.b.tensor(self._name("deconv"), [nb, *full, cout], self.b.dtypes[x],
                            self._out_quant(y))
        self.b.op(67, [shape_t, wt, x, bt], [mid], opt, s.BuiltinOptions.TransposeConvOptions,
                  version=3)
        ins = [mid] + [self.b.const(self._name(k_), np.asarray(a, np.int32)) for k_, a in (
            ("begin", [0, begin[0], begin[1], 0]),
            ("end", [nb, begin[0] + want[0], begin[1] + want[1], cout]),
            ("stride", [1, 1, 1, 1]))]
        self.b.op(45, ins, [self.out(y, "nhwc")], s.StridedSliceOptionsT(),
                  s.BuiltinOptions.StridedSliceOptions)

    def _out_quant(self, y):
        return None

    def prelu(self, n: ir.Node) -> None:
        v = n.inputs[0]
        lay = self.layout(v.name)
        slope = const_array(n.inputs[1]).astype(np.float32)
        rank = len(self._shape_of_value(v))
        slope = slope.reshape((1,) * (rank - slope.ndim) + slope.shape)
        if lay == "nhwc" and rank == 4:
            slope = slope.transpose(_NCHW_TO_NHWC)
        slope = slope.reshape(slope.shape[1:]) if slope.shape[0] == 1 else slope
        st = self.const(self._name((n.name or "prelu") + "_slope"),
                        np.ascontiguousarray(slope), weight=True)
        self.b.op(54, [self.get(v.name, lay), st], [self.out(n.outputs[0], lay)])

    def pad_op(self, n: ir.Node) -> None:
        s = self.b.s
        v = n.inputs[0]
        rank = len(self._shape_of_value(v))
        p = [int(x) for x in const_array(n.inputs[1]).reshape(-1)]
        pairs = [[p[i], p[i + rank]] for i in range(rank)]
        lay = self.layout(v.name) if rank == 4 else "onnx"
        if lay == "nhwc":
            pairs = [pairs[i] for i in _NCHW_TO_NHWC]
        x = self.get(v.name, lay)
        spec = self.b.const(self._name("pads"), np.asarray(pairs, np.int32))
        out = self.out(n.outputs[0], lay)
        mode = n.attributes.get_string("mode", "constant")
        if mode == "reflect":
            opt = s.MirrorPadOptionsT()
            opt.mode = s.MirrorPadMode.REFLECT
            self.b.op(100, [x, spec], [out], opt, s.BuiltinOptions.MirrorPadOptions)
            return
        cv = const_array(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else None
        if cv is None or float(cv.reshape(-1)[0]) == 0.0:
            self.b.op(34, [x, spec], [out])
        else:
            v0 = float(cv.reshape(-1)[0])
            dt, q = self.b.dtypes[x], self.b.quant[x]
            if dt in (np.dtype("int8"), np.dtype("uint8")):  # the value in the input's int8 grid
                info = np.iinfo(dt)
                v0 = np.clip(np.rint(v0 / q["scale"][0]) + q["zero_point"][0], info.min, info.max)
                val = self.b.const(self._name("padv"), np.asarray([v0], dt), dict(q))
            else:
                val = self.b.const(self._name("padv"), np.asarray([v0], np.float32))
            self.b.op(60, [x, spec, val], [out])

    def batchnorm(self, n: ir.Node) -> None:
        """Inference BN left unfolded (no conv before it): y = x·k + (β − μ·k), k = γ/√(σ²+ε)."""
        v = n.inputs[0]
        lay = self.layout(v.name)
        gamma, beta, mean, var = (const_array(x).astype(np.float64) for x in n.inputs[1:5])
        k = gamma / np.sqrt(var + n.attributes.get_float("epsilon", 1e-5))
        shift = beta - mean * k
        rank = len(self._shape_of_value(v))
        shape = [1] * rank
        shape[-1 if (lay == "nhwc" and rank == 4) else min(1, rank - 1)] = -1
        x = self.get(v.name, lay)
        mid = self.b.tensor(self._name("bn"), self.b.shape_of(x))
        self.b.op(18, [x, self.const(self._name("bn_k"), k.astype(np.float32).reshape(shape),
                                     weight=True)], [mid])
        self.b.op(0, [mid, self.const(self._name("bn_b"),
                                      shift.astype(np.float32).reshape(shape), weight=True)],
                  [self.out(n.outputs[0], lay)])

    def hard_sigmoid(self, n: ir.Node) -> None:
        """max(0, min(1, α·x + β)): MUL, ADD, MAXIMUM, MINIMUM (no TFLite builtin)."""
        v = n.inputs[0]
        lay = self.layout(v.name)
        x = self.get(v.name, lay)
        shape = self.b.shape_of(x)
        alpha = n.attributes.get_float("alpha", 0.2)
        beta = n.attributes.get_float("beta", 0.5)
        steps = [(18, alpha), (0, beta), (55, 0.0), (57, 1.0)]
        for i, (code, c) in enumerate(steps):
            out = self.out(n.outputs[0], lay) if i == len(steps) - 1 else self.b.tensor(
                self._name("hsig"), shape)
            self.b.op(code, [x, self.b.const(self._name("c"), np.asarray(c, np.float32))], [out])
            x = out

    def elu(self, n: ir.Node) -> None:
        self.unary(n, 111)

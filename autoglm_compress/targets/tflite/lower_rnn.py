"""TFLite lowerings of the ONNX recurrent layers: LSTM → UNIDIRECTIONAL_SEQUENCE_LSTM, GRU unrolled.

LSTM: one UNIDIRECTIONAL_SEQUENCE_LSTM per direction (a reverse direction reads its input through
REVERSE_V2 on the time axis and its output is reversed back), ``time_major`` following the ONNX
``layout``. ONNX's gate order i, o, f, c becomes TFLite's separate i, f, c(g), o weight tensors;
the two ONNX biases are summed; the peepholes P = [Pi, Po, Pf] become cell_to_input/forget/output.
In INT8 and weights-only files the weights are int8 per tensor (TFLite's hybrid kernel: float
activations and state, inputs quantized on the fly, asymmetric).
TFLite keeps the recurrent state in *variable* tensors that outlive an invocation (the kernel
writes its final state back): each state is therefore written at the start of every invocation
by an op writing the initial value into the variable tensor (``_write_state``), so the .tflite is stateless like the ONNX
op; after the op the same tensors hold the final h and c, which Y_h and Y_c read (PACK).
The directions' outputs are PACKed into ONNX's Y, [seq, dirs, batch, H] (layout 1:
[batch, seq, dirs, H]).

GRU (no TFLite builtin): unrolled over the static sequence length. The input projections of all
time steps are two FULLY_CONNECTED ops (z and r gates, h gate), UNPACKed into steps; each step is
FC(h) → ADD → LOGISTIC → SPLIT (z, r), the candidate (ONNX ``linear_before_reset`` 1:
r ⊙ (h Rhᵀ + Rbh); 0: (r ⊙ h) Rhᵀ) → ADD → TANH, then h' = n + z ⊙ (h − n). A reverse direction
walks the steps backwards; in INT8 and weights-only files its FULLY_CONNECTED weights are int8 per
output channel (hybrid, like the LSTM's). Functions of the lowerer ``lw`` (lower.py) registered by rules_rnn.py.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ir_reads import dims, input_or_none, wconst

__all__ = ["lower_lstm", "lower_gru"]

_ADD, _CONCAT, _FC, _LOGISTIC, _RESHAPE, _MUL, _TANH, _SUB = 0, 2, 9, 14, 22, 18, 28, 41
_SPLIT, _LSTM, _PACK, _UNPACK, _REVERSE = 49, 44, 83, 88, 105


class _Rnn:
    """What LSTM and GRU share: sizes, the time axis, initial states, and writing Y / Y_h / Y_c."""

    def __init__(self, lw, n: ir.Node):
        self.lw, self.n, self.b = lw, n, lw.b
        self.layout = n.attributes.get_int("layout", 0)
        self.t_axis = self.layout  # time axis of X and of each direction's output
        shape = dims(n.inputs[0], 1)
        self.T, self.B, self.I = (shape[0], shape[1], shape[2]) if self.layout == 0 \
            else (shape[1], shape[0], shape[2])
        self.H = n.attributes.get_int("hidden_size", 0) or int(wconst(n.inputs[2]).shape[-1])
        direction = n.attributes.get_string("direction", "forward")
        self.dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
        self.x = lw.get(n.inputs[0].name, "onnx")

    def name(self, base: str) -> str:
        return self.lw._name(f"{self.n.name or self.n.op_type}_{base}")

    def tensor(self, base: str, shape) -> int:
        return self.b.tensor(self.name(base), shape)

    def seq_shape(self, width: int) -> list[int]:
        return [self.T, self.B, width] if self.layout == 0 else [self.B, self.T, width]

    def used(self, k: int) -> ir.Value | None:
        v = self.n.outputs[k] if len(self.n.outputs) > k else None
        if v is None or not v.name or not (list(v.uses()) or v.is_graph_output()):
            return None
        return v

    def initial(self, k: int) -> list:
        """Per direction, the initial state (input ``k``: initial_h 5, initial_c 6) as a constant
        [B, H] array or a tensor index."""
        v = input_or_none(self.n, k)
        if v is None or not v.name:
            return [np.zeros((self.B, self.H), np.float32)] * len(self.dirs)
        arr = const_array(v) if v.name not in self.lw.vals else None
        axis = 0 if self.layout == 0 else 1  # [dirs, B, H] or [B, dirs, H]
        if arr is not None:
            arr = np.asarray(arr, np.float32)
            return [np.ascontiguousarray(np.take(arr, d, axis=axis)) for d in
                    range(len(self.dirs))]
        return self.unpack(self.lw.get(v.name, "onnx"), axis, len(self.dirs), [self.B, self.H])

    def unpack(self, x: int, axis: int, num: int, part) -> list[int]:
        s = self.b.s
        outs = [self.tensor("part", part) for _ in range(num)]
        opt = s.UnpackOptionsT()
        opt.num, opt.axis = num, axis
        self.b.op(_UNPACK, [x], outs, opt, s.BuiltinOptions.UnpackOptions)
        return outs

    def pack(self, parts: list[int], axis: int, out: int) -> None:
        s = self.b.s
        opt = s.PackOptionsT()
        opt.valuesCount, opt.axis = len(parts), axis
        self.b.op(_PACK, parts, [out], opt, s.BuiltinOptions.PackOptions)

    def const(self, base: str, arr, weight: bool = True) -> int:
        return self.lw.const(self.name(base), np.ascontiguousarray(arr, np.float32), weight=weight)

    def int8_const(self, base: str, arr, per_row: bool = False) -> int:
        """A weight as int8, symmetric per tensor (what TFLite's hybrid LSTM kernel reads) or per
        row (output channel: a hybrid FULLY_CONNECTED)."""
        arr = np.asarray(arr, np.float32)
        peak = np.abs(arr).max(axis=1, keepdims=True) if per_row else np.abs(arr).max()
        scale = np.maximum(peak, 1e-12) / 127.0
        q = np.clip(np.rint(arr / scale), -127, 127).astype(np.int8)
        return self.b.const(self.name(base), np.ascontiguousarray(q),
                            {"scale": np.asarray(scale, np.float32).reshape(-1),
                             "zero_point": np.zeros(np.size(scale), np.int64), "axis": 0})

    @property
    def hybrid(self) -> bool:
        """INT8 and weights-only files: int8 weights, float activations (TFLite's hybrid
        kernels quantize the inputs on the fly)."""
        return bool(self.lw.hybrid or getattr(self.lw, "hybrid_rnn", False))

    def op(self, code: int, ins, shape, options=None, otype: int = 0) -> int:
        out = self.tensor("t", shape)
        self.b.op(code, ins, [out], options, otype)
        return out

    def reverse(self, x: int) -> int:
        axis = self.b.const(self.name("time_axis"), np.asarray([self.t_axis], np.int32))
        return self.op(_REVERSE, [x, axis], self.b.shape_of(x))

    def write_outputs(self, ys: list[int], finals: list[list[int]]) -> None:
        """Y from the directions' outputs (``ys``, each in X's layout), Y_h (and Y_c) from the
        final states (``finals[k][d]``: state k of direction d, [B, H])."""
        y = self.used(0)
        if y is not None:
            out = self.lw.out(y, "onnx")
            if len(ys) == 1:
                shape = self.b.const(self.name("y_shape"), np.asarray(dims(y, 1), np.int32))
                self.b.op(_RESHAPE, [ys[0], shape], [out])
            else:
                self.pack(ys, self.t_axis + 1, out)
        for k, states in enumerate(finals, start=1):
            v = self.used(k)
            if v is not None:  # [dirs, B, H] (layout 1: [B, dirs, H])
                self.pack(states, self.layout, self.lw.out(v, "onnx"))


def _write_state(rnn: _Rnn, init, state: int) -> None:
    """Write the initial state ``init`` (a constant array or a tensor) into the variable tensor
    ``state`` at every invocation. A constant goes through ADD(init, 0): LiteRT evaluates a
    CONCATENATION of constants once at preparation, so the state would carry over between
    invocations. A tensor goes through a one-input CONCATENATION: LiteRT runs an ADD in place,
    sharing its input's arena buffer with the variable tensor (a crash without XNNPACK)."""
    s = rnn.b.s
    if isinstance(init, np.ndarray):
        zero = rnn.b.const(rnn.name("zero"), np.zeros(1, np.float32))
        rnn.b.op(_ADD, [rnn.b.const(rnn.name("init"), init), zero], [state])
        return
    opt = s.ConcatenationOptionsT()
    opt.axis = 0
    rnn.b.op(_CONCAT, [init], [state], opt, s.BuiltinOptions.ConcatenationOptions)


def lower_lstm(lw, n: ir.Node) -> None:
    """ONNX LSTM → one UNIDIRECTIONAL_SEQUENCE_LSTM per direction (see the module docstring)."""
    s = lw.b.s
    r = _Rnn(lw, n)
    H = r.H
    W, R = wconst(n.inputs[1]), wconst(n.inputs[2])
    bias_v, peep_v = input_or_none(n, 3), input_or_none(n, 7)
    bias = wconst(bias_v) if bias_v is not None and bias_v.name else None
    peep = wconst(peep_v) if peep_v is not None and peep_v.name else None
    h_init, c_init = r.initial(5), r.initial(6)
    hybrid = r.hybrid
    weight = r.int8_const if hybrid else r.const
    ys, finals = [], [[], []]
    for d, direction in enumerate(r.dirs):
        gates = {g: slice(k * H, (k + 1) * H) for k, g in enumerate("iofc")}
        order = "ifco"  # TFLite's input_to_{input, forget, cell, output}_weights
        w_in = [weight(f"w_{g}", W[d][gates[g]]) for g in order]
        w_rec = [weight(f"r_{g}", R[d][gates[g]]) for g in order]
        b = (bias[d][:4 * H] + bias[d][4 * H:]) if bias is not None \
            else np.zeros(4 * H, np.float32)
        b_gates = [r.const(f"b_{g}", b[gates[g]]) for g in order]
        if peep is not None:  # P = [Pi, Po, Pf] → cell_to_input, cell_to_forget, cell_to_output
            p = peep[d]
            peeps = [weight(f"p_{g}", p[k * H:(k + 1) * H]) for g, k in (("i", 0), ("f", 2),
                                                                        ("o", 1))]
        else:
            peeps = [-1, -1, -1]
        states = []
        for base, init in (("h", h_init[d]), ("c", c_init[d])):
            st = r.tensor(f"{base}_state_{direction}", [r.B, H])
            lw.b.graph.tensors[st].isVariable = True
            _write_state(r, init, st)  # at every invocation (module docstring)
            states.append(st)
        x = r.x if direction == "forward" else r.reverse(r.x)
        y = r.tensor(f"y_{direction}", r.seq_shape(H))
        opt = s.UnidirectionalSequenceLSTMOptionsT()
        opt.fusedActivationFunction, opt.timeMajor = 4, r.layout == 0  # TANH
        opt.asymmetricQuantizeInputs = hybrid
        lw.b.op(_LSTM, [x, *w_in, *w_rec, *peeps, *b_gates, -1, -1, *states, -1, -1, -1, -1],
                [y], opt, s.BuiltinOptions.UnidirectionalSequenceLSTMOptions)
        ys.append(y if direction == "forward" else r.reverse(y))
        finals[0].append(states[0])
        finals[1].append(states[1])
    r.write_outputs(ys, finals)


def lower_gru(lw, n: ir.Node) -> None:
    """ONNX GRU unrolled over its time steps (see the module docstring)."""
    s = lw.b.s
    r = _Rnn(lw, n)
    H, B = r.H, r.B
    W, R = wconst(n.inputs[1]), wconst(n.inputs[2])
    bias_v = input_or_none(n, 3)
    bias = wconst(bias_v) if bias_v is not None and bias_v.name else None
    lbr = n.attributes.get_int("linear_before_reset", 0)
    inits = r.initial(5)
    fc_keep = s.FullyConnectedOptionsT()
    fc_keep.keepNumDims = True
    fc = s.FullyConnectedOptionsT()
    fc_keep.asymmetricQuantizeInputs = fc.asymmetricQuantizeInputs = r.hybrid
    fc_t = s.BuiltinOptions.FullyConnectedOptions

    def weight(base: str, arr) -> int:
        return r.int8_const(base, arr, per_row=True) if r.hybrid else r.const(base, arr)

    split = s.SplitOptionsT()
    split.numSplits = 2
    axis1 = lw.b.const(r.name("axis1"), np.asarray(1, np.int32))
    ys, finals = [], []
    for d, direction in enumerate(r.dirs):
        wb = bias[d][:3 * H] if bias is not None else np.zeros(3 * H, np.float32)
        rb = bias[d][3 * H:] if bias is not None else np.zeros(3 * H, np.float32)
        # all steps' input projections at once: z,r gates (both biases) and the h gate
        x_zr = r.op(_FC, [r.x, weight("w_zr", W[d][:2 * H]), r.const("b_zr", wb[:2 * H]
                                                                        + rb[:2 * H])],
                    r.seq_shape(2 * H), fc_keep, fc_t)
        xb_h = wb[2 * H:] + (0 if lbr else rb[2 * H:])
        x_h = r.op(_FC, [r.x, weight("w_h", W[d][2 * H:]), r.const("b_h", xb_h)],
                   r.seq_shape(H), fc_keep, fc_t)
        steps_zr = r.unpack(x_zr, r.t_axis, r.T, [B, 2 * H])
        steps_h = r.unpack(x_h, r.t_axis, r.T, [B, H])
        r_zr, r_h = weight("r_zr", R[d][:2 * H]), weight("r_h", R[d][2 * H:])
        rb_h = r.const("rb_h", rb[2 * H:]) if lbr else -1
        h = inits[d]
        h = lw.b.const(r.name("h0"), h) if isinstance(h, np.ndarray) else h
        hs = [None] * r.T
        order = range(r.T) if direction == "forward" else range(r.T - 1, -1, -1)
        for t in order:
            zr = r.op(_ADD, [steps_zr[t], r.op(_FC, [h, r_zr, -1], [B, 2 * H], fc, fc_t)],
                      [B, 2 * H])
            zr = r.op(_LOGISTIC, [zr], [B, 2 * H])
            z, rg = r.tensor("z", [B, H]), r.tensor("r", [B, H])
            lw.b.op(_SPLIT, [axis1, zr], [z, rg], split, s.BuiltinOptions.SplitOptions)
            if lbr:  # r ⊙ (h Rhᵀ + Rbh)
                rec = r.op(_MUL, [rg, r.op(_FC, [h, r_h, rb_h], [B, H], fc, fc_t)], [B, H])
            else:  # (r ⊙ h) Rhᵀ + Rbh (in the input projection's bias)
                rec = r.op(_FC, [r.op(_MUL, [rg, h], [B, H]), r_h, -1], [B, H], fc, fc_t)
            cand = r.op(_TANH, [r.op(_ADD, [steps_h[t], rec], [B, H])], [B, H])
            keep = r.op(_MUL, [z, r.op(_SUB, [h, cand], [B, H])], [B, H])
            h = r.op(_ADD, [cand, keep], [B, H])  # (1 − z) ⊙ n + z ⊙ h
            hs[t] = h
        if r.used(0) is not None:
            y = r.tensor(f"y_{direction}", r.seq_shape(H))
            r.pack(hs, r.t_axis, y)
            ys.append(y)
        finals.append(h)
    r.write_outputs(ys, [finals])

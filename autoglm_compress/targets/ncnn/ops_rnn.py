"""ncnn rules for the recurrent layers: ONNX LSTM → ncnn LSTM, GRU → ncnn GRU, RNN → ncnn RNN (one
layer each, every direction: 2=direction 0 forward, 1 reverse, 2 bidirectional).

Facts (ncnn's src/layer/lstm.cpp, gru.cpp, operators.md): the input is the sequence blob w=I, h=S
(batch 1: ONNX X [S, 1, I] in layout 0, [1, S, I] in layout 1 — the same data); the output is
w=D·H, h=S, the directions side by side as ONNX Y [S, D, 1, H] holds them. Params 0=num_output (H),
1=weight_data_size (D·G·H·I), 2=direction, 8=int8_scale_term. Weights per direction, each block
tagged: weight_xc [G·H][I], bias_c [4][H], weight_hc [G·H][H].

- LSTM gates run I, F, O, G (ONNX W/R/B hold i, o, f, c); bias_c = Wb + Rb per gate.
- GRU gates run R, U, N (ONNX: z, r, h); bias_c rows R: Wb_r + Rb_r, U: Wb_z + Rb_z,
  WN: Wb_h, BN: Rb_h. ncnn computes n = tanh(W_n x + WN + r ⊙ (R_n h + BN)): ONNX
  ``linear_before_reset=1``, the form torch exports; 0 is refused.
- RNN: one tanh gate, bias_c [1][H] = Wb + Rb.
- Initial states (ONNX initial_h / initial_c [D, 1, H]) are the 2nd/3rd bottoms, Y_h / Y_c the
  2nd/3rd tops (w=H, h=D); an LSTM given only one of h / c gets zeros for the other.
- INT8 (ncnn2int8's format, int8_scale_term 2): weight_xc and weight_hc int8 with one scale per
  gate row (127 / absmax, raw fp32 after the weights), bias fp32. ncnn quantizes the input and the
  hidden state per timestep at run time (absmax), so no calibrated activation scale is read.
  ``--ncnn-int8-layers measured`` times them like conv / FC (layer_timing.py): on x86 ncnn's int8
  LSTM wins at H=256 and loses at H=32.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ir_reads import input_or_none
from autoglm_compress.targets.ncnn.blobs import blob_shape, dims_params, shape
from autoglm_compress.targets.ncnn.rules import RULES

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_STATES = {"LSTM": 2, "GRU": 1, "RNN": 1}  # h (and c)
_ORDER = {"LSTM": [0, 2, 1, 3], "GRU": [1, 0, 2], "RNN": [0]}  # ONNX gate blocks in ncnn's order
_ACTS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"], "RNN": ["tanh"]}
_DIRECTION = {"forward": 0, "reverse": 1, "bidirectional": 2}
_RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def _used(v: ir.Value | None) -> bool:
    return v is not None and bool(v.name) and (bool(list(v.uses())) or v.is_graph_output())


def _reshaped_only(v: ir.Value, dims: list[int]) -> bool:
    """Every reader of ``v`` (blob ``dims``) is a reshape to other blob dims, or one to the same
    dims (an alias in ops_shape) whose readers are so in turn."""
    for u, _ in v.uses():
        if u.op_type not in _RESHAPES:
            return False
        if blob_shape(shape(u.outputs[0])) == dims and not _reshaped_only(u.outputs[0], dims):
            return False
    return True


def _check_rnn(node: ir.Node) -> str | None:
    """Batch 1, constant weights, default activations, no clip/peepholes; GRU linear_before_reset=1.

    Also refused: input_forget, sequence_lens shorter than the sequence."""
    op, a = node.op_type, node.attributes
    if any(const_array(v) is None for v in node.inputs[1:4] if v is not None):
        return f"{op} with non-constant weights"
    x = shape(node.inputs[0])
    layout = a.get_int("layout", 0)
    if len(x) != 3 or x[1 - layout] != 1:
        return f"{op} on a batch other than 1 (ncnn runs one sequence)"
    acts = a.get("activations")
    dirs = 2 if a.get_string("direction", "forward") == "bidirectional" else 1
    if acts is not None and [s.lower() for s in acts.as_strings()] != _ACTS[op] * dirs:
        return f"{op} with activations other than {'/'.join(_ACTS[op])} (ncnn's only ones)"
    if "clip" in a or a.get_int("input_forget", 0):
        return f"{op} with clip or input_forget (ncnn has neither)"
    lens = input_or_none(node, 4)
    if lens is not None and (const_array(lens) is None or (const_array(lens) != x[layout]).any()):
        return f"{op} with sequence_lens other than the full sequence (ncnn has no masking)"
    peep = input_or_none(node, 7) if op == "LSTM" else None
    if peep is not None and (const_array(peep) is None or const_array(peep).any()):
        return "LSTM with peepholes (ncnn's LSTM has none)"
    if op == "GRU" and not a.get_int("linear_before_reset", 0):
        return ("GRU with linear_before_reset=0 (ncnn's GRU applies the reset gate after the "
                "recurrent matmul, as torch exports it)")
    return None


def _weights(n: ir.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weight_xc [D, G·H, I], weight_hc [D, G·H, H], bias_c [D, 4 or G, H]) in ncnn's order."""
    op, g = n.op_type, _GATES[n.op_type]
    w = const_array(n.inputs[1]).astype(np.float32)
    r = const_array(n.inputs[2]).astype(np.float32)
    d, _, hid = r.shape
    bv = input_or_none(n, 3)
    b = const_array(bv).astype(np.float32) if bv is not None else np.zeros((d, 2 * g * hid),
                                                                           np.float32)
    order = _ORDER[op]

    def gates(a):
        return a.reshape(d, g, hid, -1)[:, order].reshape(d, g * hid, -1)

    wb, rb = b[:, :g * hid].reshape(d, g, hid), b[:, g * hid:].reshape(d, g, hid)
    if op != "GRU":
        bias = (wb + rb)[:, order]
    else:  # R, U, WN, BN
        bias = np.stack([wb[:, 1] + rb[:, 1], wb[:, 0] + rb[:, 0], wb[:, 2], rb[:, 2]], axis=1)
    return gates(w), gates(r), np.ascontiguousarray(bias, np.float32)


def _int8_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row of [D, rows, K]: (int8 data, 127 / absmax per row)."""
    amax = np.abs(a).max(axis=-1)
    scale = np.where(amax > 0, 127.0 / np.maximum(amax, 1e-30), 1.0).astype(np.float32)
    q = np.clip(np.rint(a * scale[..., None]), -127, 127).astype(np.int8)
    return q, scale


def _const_state(v: ir.Value | None) -> np.ndarray | None:
    return const_array(v) if v is not None else np.zeros(1, np.float32)


def _state(lw, v: ir.Value | None, d: int, hid: int, name: str) -> str:
    """A state bottom (w=H, h=D): the blob, or a constant / zeros written as MemoryData."""
    arr = _const_state(v)
    if arr is None:
        return lw.b(v)
    return lw.memory_data(np.broadcast_to(arr.astype(np.float32).reshape(-1), (d * hid,))
                          .reshape(d, hid), name)


@RULES.rule("LSTM", "GRU", "RNN", check=_check_rnn)
def rnn(lw, n: ir.Node) -> None:
    op, name = n.op_type, n.name or n.op_type.lower()
    wx, wh, bias = _weights(n)
    d, hid = wh.shape[0], wh.shape[2]
    p = {0: hid, 1: wx.size, 2: _DIRECTION[n.attributes.get_string("direction", "forward")]}
    if lw.precision == "int8" and n.name not in lw.keep_float:
        (qx, sx), (qh, sh) = _int8_rows(wx), _int8_rows(wh)
        p[8] = 2
        lw.int8_inputs[n.name] = [1, *blob_shape(shape(n.inputs[0]))]  # [1, S, I]: timing
        weights = [("tagged", qx.reshape(-1)), ("tagged", bias.reshape(-1)),
                   ("tagged", qh.reshape(-1)), ("raw", sx.reshape(-1)), ("raw", sh.reshape(-1))]
        lw.int8_layers.append(name)
    else:
        weights = [lw.weight(wx), ("tagged", bias.reshape(-1)), lw.weight(wh)]
        if lw.precision == "int8":
            lw.float_layers.append(name)
    states = [input_or_none(n, 5), input_or_none(n, 6) if op == "LSTM" else None]
    n_state = _STATES[op]
    bottoms = [lw.b(n.inputs[0])]
    consts = [_const_state(v) for v in states[:n_state]]
    if not all(c is not None and not c.any() for c in consts):  # all-zero states: none given
        bottoms += [_state(lw, v, d, hid, f"{name}_state{i}")
                    for i, v in enumerate(states[:n_state])]
    y = n.outputs[0]
    if _reshaped_only(y, blob_shape(shape(y))):
        top = lw.out(y)  # the [S, D·H] blob holds Y's data: each reader writes its own shape
    else:
        top = lw.ng.unique(f"{y.name}_seq")
    tops = [top]
    outs = list(n.outputs[1:1 + n_state])
    if any(_used(v) for v in outs):
        tops += [lw.out(v) if _used(v) else lw.ng.unique(f"{name}_state_out{i}")
                 for i, v in enumerate(outs + [None] * (n_state - len(outs)))]
    lw.ng.add(op, name, bottoms, tops, p, weights).source = n.name
    if top != lw.blob.get(y.name):
        lw.ng.add("Reshape", f"{name}_y", [top], [lw.out(y)], dims_params(shape(y)))

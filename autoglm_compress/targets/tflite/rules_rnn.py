"""TFLite lowering rules of the recurrent layers (lower_rnn.py): LSTM → UNIDIRECTIONAL_SEQUENCE_LSTM
per direction, GRU unrolled into FULLY_CONNECTED/LOGISTIC/TANH/MUL/ADD steps. Registered in
rules.py's ``RULES``; lower.py imports this module. ``FLOAT_REASONS``: why each runs float in an
INT8 .tflite (lower_int8.py records it per TFLite op; the report names it)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ir_reads import input_or_none, wconst
from autoglm_compress.targets.tflite.lower_rnn import lower_gru, lower_lstm
from autoglm_compress.targets.tflite.rules import RULES

__all__ = ["FLOAT_REASONS"]

FLOAT_REASONS = {
    "LSTM": "LSTM runs TFLite's hybrid kernel (int8 weights, float activations and state): the "
            "integer LSTM needs 16-bit gate and cell intermediates with their own calibrated "
            "scales (the 8x8→16 scheme), which this emitter does not write",
    "GRU": "GRU has no TFLite builtin: unrolled into per-step ops with float activations (hybrid "
           "FULLY_CONNECTED: int8 weights); its state feeds back each step and the QDQ graph has "
           "no per-step scales",
}
_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


def _check_rnn(n: ir.Node) -> str | None:
    op = n.op_type
    shape = n.inputs[0].shape
    layout = n.attributes.get_int("layout", 0)
    if shape is None or len(shape) != 3 or not isinstance(shape[layout], int) \
            or not isinstance(shape[2], int):
        return f"{op} with an unknown sequence length or input size (give --input-shape)"
    optional = [input_or_none(n, k) for k in ((3, 7) if op == "LSTM" else (3,))]
    if any(wconst(v) is None for v in (n.inputs[1], n.inputs[2])) or any(
            v is not None and v.name and wconst(v) is None for v in optional):
        return f"{op} with non-constant weights or biases"
    acts = n.attributes.get("activations")
    dirs = 2 if n.attributes.get_string("direction", "forward") == "bidirectional" else 1
    if acts is not None and [a.lower() for a in acts.as_strings()] != \
            [a.lower() for a in _ACTIVATIONS[op]] * dirs:
        return f"{op} with activations other than {'/'.join(_ACTIVATIONS[op])}"
    if n.attributes.get("clip") is not None:
        return f"{op} with clip (TFLite clips the cell state, not the gate inputs)"
    if n.attributes.get_int("input_forget", 0):
        return "LSTM with input_forget (coupled input and forget gates)"
    lens = input_or_none(n, 4)
    if lens is not None and lens.name:
        arr = const_array(lens)
        if arr is None or not np.all(arr == shape[layout]):
            return (f"{op} with sequence_lens other than the full sequence length (TFLite's "
                    "kernels run every step of every batch item)")
    return None


def check_lstm(n: ir.Node) -> str | None:
    """Static length, constant weights, default activations, no clip/input_forget/sequence_lens.

    sequence_lens may be given when every entry is the full length. One
    UNIDIRECTIONAL_SEQUENCE_LSTM per direction."""
    return _check_rnn(n)


def check_gru(n: ir.Node) -> str | None:
    """Static length (unrolled), constant weights, default activations, no clip/sequence_lens.

    sequence_lens may be given when every entry is the full length."""
    return _check_rnn(n)


RULES.add("LSTM", lower=lower_lstm, check=check_lstm)
RULES.add("GRU", lower=lower_gru, check=check_gru)

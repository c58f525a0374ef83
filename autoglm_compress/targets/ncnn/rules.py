"""The ncnn emitter's rule set: one rule per ONNX op, registered by ``ops_layers.py``,
``ops_math.py``, ``ops_shape.py`` and ``lower_tokens.py`` (``lower.py`` imports them all).

Every node passes :func:`_blob_check` first: ncnn blobs have no batch axis and no unknown
dimension, so each activation must have batch 1 and a static shape. A sequence-first value
(a recurrent layer's layout 0, batch at axis 1: blobs.py) is read and written only by reshapes and
the recurrent layers (``ops_rnn.py``); the ``seq_first`` prepare pass moves the rest to batch-first.
"""

from __future__ import annotations

import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ncnn.blobs import batch_axis, shape
from autoglm_compress.targets.rules import Rule, RuleSet

__all__ = ["RULES"]


def _blob_check(node: ir.Node, rule: Rule) -> str | None:
    if node.op_type == "Constant" or rule.internal:
        return None
    acts = [v for v in node.inputs[:1] if v is not None and v.is_graph_input()]
    seq = [v for v in node.inputs[:1] if v is not None and v.dtype == ir.DataType.FLOAT
           and (batch_axis(shape(v)) or 0) > 0 and const_array(v) is None]  # sequence-first
    for v in (*acts, *seq, *node.outputs):  # every activation is a graph input or some node's output
        s = shape(v)
        if s and s[0] != 1 and s[0] >= 0:  # an unknown one: said below
            if not batch_axis(s):
                return f"a {s} value: ncnn blobs have no batch axis, so its leading dim must be 1"
            if node.op_type not in SEQ_FIRST_OPS:
                return (f"a {s} value: ncnn blobs have no batch axis, so batch must be 1, or "
                        "a sequence-first value (an RNN's layout 0) passed only through reshapes "
                        "and LSTM/GRU/RNN (use batch_first=True)")
        if any(d < 0 for d in s):
            return "unknown dimension (give --input-shape / --static-shapes)"
    return None


SEQ_FIRST_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "LSTM", "GRU", "RNN"})
RULES = RuleSet("ncnn", common=_blob_check)


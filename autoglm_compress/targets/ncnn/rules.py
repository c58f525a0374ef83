"""The ncnn emitter's rule set: one rule per ONNX op, registered by ``ops_layers.py``,
``ops_math.py``, ``ops_shape.py`` and ``lower_tokens.py`` (``lower.py`` imports them all).

Every node passes :func:`_blob_check` first: ncnn blobs have no batch axis and no unknown
dimension, so each activation must have batch 1 and a static shape.
"""

from __future__ import annotations

import onnx_ir as ir

from autoglm_compress.targets.ncnn.blobs import shape
from autoglm_compress.targets.rules import Rule, RuleSet

__all__ = ["RULES"]


def _blob_check(node: ir.Node, rule: Rule) -> str | None:
    if node.op_type == "Constant" or rule.internal:
        return None
    acts = [v for v in node.inputs[:1] if v is not None and v.is_graph_input()]
    for v in (*acts, *node.outputs):  # every activation is a graph input or some node's output
        s = shape(v)
        if s and s[0] != 1:
            return "ncnn blobs have no batch axis: batch must be 1 (give --input-shape)"
        if any(d < 0 for d in s):
            return "unknown dimension (give --input-shape / --static-shapes)"
    return None


RULES = RuleSet("ncnn", common=_blob_check)


"""The batch of an ncnn model's inputs, found through their leading Reshape / Transpose.

ncnn blobs have no batch axis, so the lowered graph runs at batch 1. A model's batch is usually its
inputs' dim 0, but a channels-last export (tf2onnx) often reads a flat or NHWC input through a
Reshape to [-1, …] and a Transpose (0, 3, 1, 2) before its first real op: dim 0 is the batch when it
reaches dim 0 of what that leading chain ends in (a Reshape keeping dim 0 — target −1 over the same
trailing size, 0, or the same size — and Transposes with perm[0] = 0).

When such an input runs at a batch ≠ 1 (its dims fixed to the data's by ``fold_shapes``), the check
refuses it with what helps: ``--input-shape NAME=1x…`` where the batch came from ``--input-shape``,
samples of batch 1 where it came from the data, a re-export where the model file fixes it. A
recurrent layer (layout 0) reading dim 0 reads it as its sequence: not a batch.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from autoglm_compress.errors import UnsupportedOpError
from autoglm_compress.ir_ops import const_array

__all__ = ["batch_reader", "refuse_batch"]

_SEQUENCE_FIRST = frozenset({"LSTM", "GRU", "RNN"})  # layout 0 reads dim 0 as the sequence


def _keeps_dim0(node: ir.Node, x: ir.Value) -> bool:
    """``node`` (a Reshape or Transpose reading ``x``) keeps ``x``'s dim 0 as its output's."""
    if node.op_type == "Transpose":
        perm = node.attributes.get("perm")
        return perm is not None and list(perm.as_ints())[:1] == [0]
    target, s = const_array(node.inputs[1]), x.shape
    if target is None or target.size == 0 or s is None or len(s) == 0:
        return False
    t0, rest = int(target.reshape(-1)[0]), [int(d) for d in target.reshape(-1)[1:]]
    if t0 == 0:
        return True
    trailing = [d for d in s[1:]]
    if not all(isinstance(d, int) for d in trailing) or any(d <= 0 for d in rest):
        return False
    same_rest = math.prod(rest) == math.prod(trailing)
    return same_rest and (t0 == -1 or (isinstance(s[0], int) and t0 == s[0]))


def batch_reader(v: ir.Value) -> ir.Node | None:
    """The first real op that reads graph input ``v``'s dim 0 as its own dim 0 through the leading
    Reshape / Transpose chain (that dim is the batch), else None."""
    todo, seen = [v], set()
    while todo:
        x = todo.pop(0)
        for use in x.uses():
            node = use.node
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type in ("Reshape", "Transpose") and use.idx == 0:
                if _keeps_dim0(node, x):
                    todo.append(node.outputs[0])
                continue
            return node
    return None


def refuse_batch(model: ir.Model, prepared: ir.Model, where: str, alternatives: str) -> None:
    """Refuse an input whose batch (dim 0 through its leading chain) is not 1 in ``prepared`` (the
    IR to lower, dims fixed to the run's data), with the advice that makes it 1."""
    from autoglm_compress.inputs import shape_hints

    source = {v.name: v for v in model.graph.inputs}
    hints = shape_hints(model)
    for v in prepared.graph.inputs:
        s = v.shape
        if not s or not isinstance(s[0], int) or s[0] == 1:
            continue
        reader = batch_reader(v)
        if reader is None or reader.op_type in _SEQUENCE_FIRST:
            continue
        d0 = source[v.name].shape[0] if v.name in source and source[v.name].shape else None
        one = "x".join(["1", *(str(d) for d in s[1:])])
        if isinstance(d0, int):
            how = f"the model file fixes input {v.name!r} to batch {d0}: re-export it with " \
                  "batch 1 (or a dynamic batch)"
        elif list(hints.get(v.name, ()))[:1] == [s[0]]:
            how = f"input {v.name!r} runs at batch {s[0]} from --input-shape: give " \
                  f"--input-shape {v.name}={one}"
        else:
            how = f"input {v.name!r} runs at batch {s[0]} from the data: give samples of " \
                  f"shape {one}"
        raise UnsupportedOpError(
            reader.op_type, reader.name or "?", where,
            f"ncnn blobs have no batch axis, so the batch must be 1; {how}; or use {alternatives}",
        )

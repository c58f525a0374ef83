"""Remove channels from a channel space (groups.py): slice every member's tensors to the kept
channels and set the space's value shapes, leaving a smaller dense IR."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.pruning.groups import ChannelGroup, Member

__all__ = ["prune_group", "importance_l1"]


def _set(v: ir.Value, arr: np.ndarray) -> None:
    v.const_value = ir.tensor(np.ascontiguousarray(arr), name=v.name)
    v.shape = ir.Shape(arr.shape)


def _take(node: ir.Node, index: int, keep: np.ndarray, axis: int) -> None:
    v = node.inputs[index]
    if v is None or not v.name:
        return
    a = const_array(v)
    _set(v, np.take(a, keep, axis=axis % a.ndim))


def importance_l1(group: ChannelGroup) -> np.ndarray:
    """Per-channel importance: the L1 norm of each source's output filter, each source normalised
    by its mean (so a residual space weighs its branches alike), summed over the sources."""
    total = np.zeros(group.channels)
    for m in group.sources:
        w = const_array(m.node.inputs[1]).astype(np.float64)
        norms = np.abs(np.moveaxis(w, m.axis % w.ndim, 0)).reshape(w.shape[m.axis % w.ndim], -1)
        norms = norms.sum(axis=1)
        total += norms / max(norms.mean(), 1e-12)
    return total


def model_graph(node: ir.Node) -> ir.Graph:
    return node.graph


def _member(m: Member, keep: np.ndarray) -> None:
    n = m.node
    if m.kind == "source":
        _take(n, 1, keep, m.axis)
        if len(n.inputs) > 2 and n.inputs[2] is not None and const_array(n.inputs[2]) is not None:
            b = const_array(n.inputs[2])
            if b.size > 1:
                _set(n.inputs[2], np.take(b.reshape(-1), keep))
    elif m.kind == "consumer":
        _take(n, 1, keep, m.axis)
    elif m.kind == "concat_consumer":
        cat = m.concat
        widths = [int(v.shape[1]) for v in cat.inputs]  # current (earlier inputs may be pruned)
        offset, width = sum(widths[:m.slot]), widths[m.slot]
        total = sum(widths)
        cols = np.concatenate([np.arange(offset), offset + keep,
                               np.arange(offset + width, total)])
        _take(n, 1, cols, m.axis)
    elif m.kind == "flatten_gemm":
        cols = (keep[:, None] * m.block + np.arange(m.block)[None, :]).reshape(-1)
        _take(n, 1, cols, m.axis)
        x = n.inputs[0]
        if x.shape is not None:
            x.shape = ir.Shape([x.shape[0], int(cols.size)])
        p = x.producer()
        if p is not None and p.op_type == "Reshape" and const_array(p.inputs[1]) is not None:
            shape = const_array(p.inputs[1]).astype(np.int64).copy()
            shape[1] = cols.size  # [N, C·H·W] → [N, kept·H·W]
            if p.inputs[1].is_initializer():
                _set(p.inputs[1], shape)
            else:
                new = ir.Value(name=f"{p.inputs[1].name}_pruned", shape=ir.Shape([shape.size]),
                               type=ir.TensorType(ir.DataType.INT64),
                               const_value=ir.tensor(shape))
                model_graph(p).register_initializer(new)
                p.replace_input_with(1, new)
    elif m.kind == "depthwise":
        _take(n, 1, keep, 0)
        if len(n.inputs) > 2 and n.inputs[2] is not None:
            _take(n, 2, keep, 0)
        n.attributes["group"] = ir.AttrInt64("group", int(keep.size))
    elif m.kind == "bn":
        for i in range(1, 5):
            _take(n, i, keep, 0)
    elif m.kind == "prelu":
        s = const_array(n.inputs[1])
        flat = s.reshape(s.shape[0], -1) if s.ndim > 1 else s
        _set(n.inputs[1], np.take(flat, keep, axis=0).reshape((keep.size, *s.shape[1:])))
    elif m.kind == "const":
        v = n.inputs[m.index]
        c = const_array(v)
        rank = len(n.outputs[0].shape or [])
        full = c.reshape((1,) * (rank - c.ndim) + c.shape)
        _set(v, np.take(full, keep, axis=1))


def prune_group(model: ir.Model, group: ChannelGroup, keep: np.ndarray) -> None:
    """Keep channels ``keep`` (sorted indices) of ``group`` everywhere in ``model``."""
    keep = np.sort(np.asarray(keep, np.int64))
    concats = {id(m.concat): m.concat for m in group.members if m.kind == "concat_consumer"}
    for m in group.members:
        _member(m, keep)  # concat consumers read the Concat's widths before they change below
    for cat in concats.values():
        y = cat.outputs[0]
        dims = list(y.shape)
        dims[1] = int(dims[1]) - (group.channels - int(keep.size)) * sum(
            1 for v in cat.inputs if v.name in group.values)
        y.shape = ir.Shape(dims)
    values = {v.name: v for n in model.graph for v in n.outputs if v is not None}
    for name in group.values:
        v = values.get(name)
        if v is not None and v.shape is not None and len(v.shape) >= 2:
            dims = list(v.shape)
            dims[1] = int(keep.size)
            v.shape = ir.Shape(dims)

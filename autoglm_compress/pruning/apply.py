"""Remove channels from a channel space (groups.py): slice every member's tensors to the kept
channels and set the space's value shapes, leaving a smaller dense IR. A constant shared with a
node outside the space (a deduplicated zero bias, one Reshape shape used by every layer) is copied
for the node that changes, never edited in place."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.pruning.groups import ChannelGroup, Member

__all__ = ["expand", "importance_bn", "importance_l1", "prune_group", "split_window"]


def expand(keep: np.ndarray, block: int) -> np.ndarray:
    """Channel indices → feature indices when each channel holds ``block`` consecutive features."""
    if block == 1:
        return keep
    return (keep[:, None] * block + np.arange(block)[None, :]).reshape(-1)


def _private(node: ir.Node, index: int) -> ir.Value:
    """``node``'s input ``index``, copied first if any other node (or the graph) also reads it."""
    v = node.inputs[index]
    if len(list(v.uses())) <= 1 and not v.is_graph_output() and v.is_initializer():
        return v
    graph = node.graph
    k, name = 0, f"{v.name}_pruned"
    while name in graph.initializers:
        k += 1
        name = f"{v.name}_pruned{k}"
    t = ir.tensor(const_array(v), name=name)
    new = ir.Value(name=name, shape=ir.Shape(t.shape), type=ir.TensorType(t.dtype), const_value=t)
    graph.register_initializer(new)
    node.replace_input_with(index, new)
    return new


def _set(node: ir.Node, index: int, arr: np.ndarray) -> None:
    v = _private(node, index)
    v.const_value = ir.tensor(np.ascontiguousarray(arr), name=v.name)
    v.shape = ir.Shape(arr.shape)


def _take(node: ir.Node, index: int, keep: np.ndarray, axis: int) -> None:
    v = node.inputs[index]
    if v is None or not v.name:
        return
    a = const_array(v)
    _set(node, index, np.take(a, keep, axis=axis % a.ndim))


def _source_norms(m: Member, block: int, p: int = 1) -> np.ndarray:
    """Lp norm (p = 1, 2) of each output channel's filter (``block`` output features per channel;
    a fused Attention's head: its Q, K and V columns)."""
    w = np.abs(const_array(m.node.inputs[1]).astype(np.float64)) ** p
    if m.kind == "attention":
        s = w.sum(axis=0).reshape(3, -1).sum(axis=0).reshape(-1, block).sum(axis=1)
    else:
        ax = m.axis % w.ndim
        s = np.moveaxis(w, ax, 0).reshape(w.shape[ax], -1).sum(axis=1)
        s = s.reshape(-1, block).sum(axis=1)
    return s ** (1.0 / p)


def importance_bn(group: ChannelGroup) -> np.ndarray | None:
    """|γ| / sqrt(var + ε) of the space's BatchNormalization nodes (network slimming), each
    normalised by its mean, averaged; None when the space has none (folded, or no BN)."""
    terms = []
    for m in group.members:
        if m.kind == "bn":
            g, var = (const_array(m.node.inputs[i]).astype(np.float64) for i in (1, 4))
            terms.append(np.abs(g) / np.sqrt(var + m.node.attributes.get_float("epsilon", 1e-5)))
    return _mean_normalised(terms, group.channels) if terms else None


def split_window(m: Member) -> tuple[int, int]:
    """(offset, width) of a split_source member's output in the split value's channels."""
    b, e = m.splitter.windows()[m.slot]
    return b, e - b


def importance_l1(group: ChannelGroup, p: int = 1) -> np.ndarray:
    """Per-channel importance: the L1 (``p`` = 2: L2) norm of each source's output filter and of
    each consumer's input slice, each weight normalised by its mean (so a residual space weighs
    its branches alike), averaged over those weights (so spaces compare under a global
    threshold). A Split output's channels are its window of the split value's sources. Counting
    the readers too: BERT prune 0.5 cosine 0.905 → 0.909, digits prune 0.3 accuracy before
    fine-tuning 0.636 → 0.782."""
    terms = []
    for m in group.sources:
        if m.kind == "split_source":
            off, width = split_window(m)
            terms += [_source_norms(q, 1, p)[off:off + width] for q in m.space.sources]
        else:
            terms.append(_source_norms(m, group.block if m.value in group.expanded else 1, p))
    terms += [_source_norms(m, group.block if m.value in group.expanded else 1, p)
              for m in group.members if m.kind == "consumer"]
    return _mean_normalised(terms, group.channels)


def _mean_normalised(terms: list[np.ndarray], channels: int) -> np.ndarray:
    if not terms:
        return np.zeros(channels)
    return sum(t / max(float(t.mean()), 1e-12) for t in terms) / len(terms)


def _member(m: Member, keep: np.ndarray) -> None:
    n = m.node
    if m.kind == "source":
        _take(n, 1, keep, m.axis)
        if len(n.inputs) > 2 and n.inputs[2] is not None and const_array(n.inputs[2]) is not None:
            b = const_array(n.inputs[2])
            if b.size > 1:
                _set(n, 2, np.take(b.reshape(-1), keep))
    elif m.kind == "consumer":
        _take(n, 1, keep, m.axis)
    elif m.kind == "flatten_gemm":
        _flatten_gemm(m, keep)
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
        _set(n, 1, np.take(flat, keep, axis=0).reshape((keep.size, *s.shape[1:])))
    elif m.kind == "attention":
        hidden = const_array(n.inputs[1]).shape[1] // 3
        cols = np.concatenate([keep, hidden + keep, 2 * hidden + keep])
        _take(n, 1, cols, 1)
        if len(n.inputs) > 2 and n.inputs[2] is not None and n.inputs[2].name:
            _take(n, 2, cols, 0)
        heads = n.attributes.get_int("num_heads", 1)
        n.attributes["num_heads"] = ir.AttrInt64("num_heads", keep.size * heads // hidden)
        if "qkv_hidden_sizes" in n.attributes:
            n.attributes["qkv_hidden_sizes"] = ir.AttrInt64s("qkv_hidden_sizes", [keep.size] * 3)
    elif m.kind == "const":
        c = const_array(n.inputs[m.index])
        rank = len(n.outputs[0].shape or [])
        full = c.reshape((1,) * (rank - c.ndim) + c.shape)
        _set(n, m.index, np.take(full, keep, axis=m.axis))


def _concat_consumer(ms: list[Member], keep: np.ndarray) -> None:
    """The conv after a channel Concat loses ``keep``'s complement at every input slot of the
    space (a space can feed the Concat more than once: C2f's split half and its residual)."""
    cat = ms[0].concat
    slots = {m.slot for m in ms}
    widths = [int(v.shape[1]) for v in cat.inputs]  # current: other spaces may be pruned already
    cols, off = [], 0
    for i, w in enumerate(widths):
        cols.append(off + (keep if i in slots else np.arange(w)))
        off += w
    _take(ms[0].node, 1, np.concatenate(cols), ms[0].axis)


def _flatten_gemm(m: Member, keep: np.ndarray) -> None:
    n = m.node
    cols = (keep[:, None] * m.block + np.arange(m.block)[None, :]).reshape(-1)
    _take(n, 1, cols, m.axis)
    x = n.inputs[0]
    if x.shape is not None:
        x.shape = ir.Shape([x.shape[0], int(cols.size)])
    p = x.producer()
    if p is not None and p.op_type == "Reshape" and const_array(p.inputs[1]) is not None:
        shape = const_array(p.inputs[1]).astype(np.int64).copy()
        shape[1] = cols.size  # [N, C·H·W] → [N, kept·H·W]
        _set(p, 1, shape)


def _reshape(m: Member, kept: int) -> None:
    """A Reshape's shape constant (slot 1), or the Concat input that holds the entry."""
    shape = const_array(m.node.inputs[m.slot]).astype(np.int64).copy()
    shape.reshape(-1)[m.index] = kept
    _set(m.node, m.slot, shape)


def _split_source(m: Member, keep: np.ndarray) -> None:
    """Keep ``keep`` of the splitter's output ``slot``: the split value's sources (and BN,
    constants) lose the other rows of that window, the Split's sizes (or the Slices' bounds) and
    the split value's shapes shrink."""
    parent = m.space
    wins = m.splitter.windows()
    rows = np.concatenate([b + keep if i == m.slot else np.arange(b, e)
                           for i, (b, e) in enumerate(wins)])  # channels between Slices go
    for p in parent.members:
        _member(p, rows)
    sizes = [e - b for b, e in wins]
    sizes[m.slot] = int(keep.size)
    first = m.splitter.nodes[0]
    if first.op_type == "Split":
        if len(first.inputs) > 1 and first.inputs[1] is not None and first.inputs[1].name:
            _set(first, 1, np.asarray(sizes, np.int64))
        else:
            first.attributes["split"] = ir.AttrInt64s("split", sizes)
    else:
        ends = np.cumsum(sizes)
        for n, b, e in zip(m.splitter.nodes, ends - np.asarray(sizes), ends):
            _set(n, 1, np.asarray([b], const_array(n.inputs[1]).dtype))
            _set(n, 2, np.asarray([e], const_array(n.inputs[2]).dtype))
    _set_dims(first.graph, parent, {n: sum(sizes) for n in parent.values})


def _set_dims(graph: ir.Graph, group: ChannelGroup, width: dict[str, int]) -> None:
    values = {v.name: v for n in graph for v in n.outputs if v is not None}
    for name, w in width.items():
        v = values.get(name)
        if v is not None and v.shape is not None and len(v.shape) >= 1:
            dims = list(v.shape)
            dims[group.axes[name] % len(dims)] = w
            v.shape = ir.Shape(dims)


def prune_group(model: ir.Model, group: ChannelGroup, keep: np.ndarray) -> None:
    """Keep channels ``keep`` (sorted indices) of ``group`` everywhere in ``model``."""
    keep = np.sort(np.asarray(keep, np.int64))
    concats = {id(m.concat): m.concat for m in group.members if m.kind == "concat_consumer"}
    readers: dict[tuple[int, int], list[Member]] = {}
    for m in group.members:  # concat consumers read the Concat's widths before they change below
        if m.kind == "concat_consumer":
            readers.setdefault((id(m.node), id(m.concat)), []).append(m)
        elif m.kind == "reshape":
            _reshape(m, int(keep.size) * group.width(m.value))
        elif m.kind == "split_source":
            _split_source(m, keep)
        else:
            _member(m, expand(keep, group.width(m.value)))
    for ms in readers.values():
        _concat_consumer(ms, keep)
    for cat in concats.values():
        y = cat.outputs[0]
        dims = list(y.shape)
        dims[1] = int(dims[1]) - (group.channels - int(keep.size)) * sum(
            1 for v in cat.inputs if v.name in group.values)
        y.shape = ir.Shape(dims)
    _set_dims(model.graph, group, {n: int(keep.size) * group.width(n) for n in group.values})

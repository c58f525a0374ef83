"""Channel dependency analysis on the IR: which output channels can be removed together.

A *channel space* is a set of activation values whose channel axis (axis 1, NC…; or the last axis
of a 2-D [N, C] value) indexes the same channels: ops that keep channels one-to-one join their
input and output (BatchNormalization, Relu/Clip/… , pooling, Resize, depthwise Conv, element-wise
Add/Mul/… of two activations — a residual Add joins every branch). A space is *prunable* when every
value in it is written by a weighted op (Conv, ConvTranspose, Gemm/MatMul with a constant weight:
the sources, whose output channels are removed) or by a channel-preserving op of the space, and
every reader is understood: a weighted op's input channels, BN parameters, a per-channel constant,
a depthwise conv (its weights and ``group`` shrink with the space), Flatten → Gemm (the Gemm's input
features are channel × spatial blocks), a channel Concat read only by plain convs (each input
space is pruned on its own; the conv after it loses the matching input channels at that input's
current offset). Anything else — a graph input or output, Reshape, Transpose, a grouped
(non-depthwise) conv, a shared weight — *freezes* the space, and the reason is kept for the report
(issue 14: "a group that cannot be pruned safely is left alone and listed").

Supported now: CNN couplings (conv chains, BN, activations, pools, depthwise, residual Add, SE-style
Mul by a [N, C, 1, 1] gate, Flatten/GlobalPool → Gemm, Concat → conv). Split/Slice on channels, a
Concat read by other ops, Transpose and attention heads freeze their spaces (listed, not pruned).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array, groups, is_weighted, out_channel_axis

__all__ = ["ChannelGroup", "Member", "channel_groups"]

logger = logging.getLogger(__name__)

_PRESERVING = frozenset({
    "Relu", "Clip", "Sigmoid", "HardSwish", "HardSigmoid", "LeakyRelu", "Tanh", "Elu", "Gelu",
    "Identity", "Dropout", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "Resize", "Softplus", "Mish", "Neg", "Abs",
})
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min"})


@dataclasses.dataclass
class Member:
    """One place that changes when the space loses channels: ``kind`` says how."""

    kind: str  # "source" | "consumer" | "depthwise" | "bn" | "const" | "prelu" | "flatten_gemm"
    #            | "concat_consumer"
    node: ir.Node
    index: int = 0  # input index of the tensor to slice (consumer / const / bn)
    axis: int = 0  # its axis that holds the space's channels
    block: int = 1  # flatten_gemm: input features per channel (H·W)
    concat: ir.Node | None = None  # concat_consumer: the Concat, and which of its inputs this is
    slot: int = 0


@dataclasses.dataclass
class ChannelGroup:
    """A channel space: its values, width, the members to rewrite, and why it is frozen if it is."""

    values: list[str]
    channels: int
    members: list[Member] = dataclasses.field(default_factory=list)
    frozen: list[str] = dataclasses.field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.frozen and any(m.kind == "source" for m in self.members)

    @property
    def sources(self) -> list[Member]:
        return [m for m in self.members if m.kind == "source"]


class _Spaces:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, a: str) -> str:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, *names: str) -> None:
        roots = [self.find(n) for n in names]
        for r in roots[1:]:
            self.parent[r] = roots[0]


def _is_act(v: ir.Value | None) -> bool:
    return v is not None and bool(v.name) and const_array(v) is None


def _channels(v: ir.Value) -> int | None:
    s = v.shape
    if s is None or len(s) < 2 or not isinstance(s[1], int):
        return None
    return int(s[1])


def _depthwise(node: ir.Node, w: np.ndarray) -> bool:
    g = groups(node)
    return g > 1 and w.shape[1] == 1 and w.shape[0] == g


def channel_groups(model: ir.Model) -> list[ChannelGroup]:
    """The channel spaces of ``model`` (shapes inferred), prunable or frozen with reasons."""
    g = model.graph
    sp = _Spaces()
    members: list[tuple[str, Member]] = []  # (value whose space the member belongs to, member)
    freeze: list[tuple[str, str]] = []  # (value, reason)
    uses_weight: dict[str, int] = {}
    for node in g:
        for v in node.inputs:
            if v is not None and v.name and const_array(v) is not None:
                uses_weight[v.name] = uses_weight.get(v.name, 0) + 1

    for node in g:
        op = node.op_type
        ins = [v for v in node.inputs if _is_act(v)]
        outs = [v for v in node.outputs if v is not None and v.name]
        for v in (*ins, *outs):
            sp.find(v.name)
        if op in ("Constant",):
            continue
        if is_weighted(node) and op in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            w_val = node.inputs[1]
            w = const_array(w_val)
            x = node.inputs[0]
            y = node.outputs[0]
            if w is None or (op == "MatMul" and w.ndim != 2) or (
                    op == "Gemm" and node.attributes.get_int("transA", 0)):
                for v in (*ins, *outs):
                    freeze.append((v.name, f"{op} {node.name!r} with a non-constant weight"))
                continue
            if uses_weight.get(w_val.name, 0) > 1:
                for v in (*ins, *outs):
                    freeze.append((v.name, f"weight {w_val.name!r} is shared"))
                continue
            if op == "Conv" and groups(node) > 1:
                if _depthwise(node, w):
                    sp.union(x.name, y.name)
                    members.append((x.name, Member("depthwise", node)))
                else:
                    freeze += [(x.name, f"grouped conv {node.name!r}"),
                               (y.name, f"grouped conv {node.name!r}")]
                continue
            if op == "ConvTranspose" and groups(node) > 1:
                freeze += [(x.name, f"grouped deconv {node.name!r}"),
                           (y.name, f"grouped deconv {node.name!r}")]
                continue
            members.append((y.name, Member("source", node, 1, out_channel_axis(node, w.ndim))))
            in_axis = 1 if op == "Conv" else 0 if op == "ConvTranspose" else (
                1 if op == "Gemm" and node.attributes.get_int("transB", 0) else 0)
            p = x.producer()
            if op in ("Gemm", "MatMul") and p is not None and p.op_type in (
                    "Flatten", "Reshape") and _flatten_of_map(p):
                src = p.inputs[0]
                hw = int(np.prod([d for d in src.shape[2:]])) if src.shape is not None else 1
                members.append((src.name, Member("flatten_gemm", node, 1, in_axis, hw)))
            else:
                members.append((x.name, Member("consumer", node, 1, in_axis)))
            continue
        if op == "BatchNormalization":
            sp.union(ins[0].name, outs[0].name)
            members.append((ins[0].name, Member("bn", node)))
            continue
        if op == "PRelu":
            sp.union(ins[0].name, outs[0].name)
            slope = const_array(node.inputs[1])
            if slope is not None and slope.size > 1:
                members.append((ins[0].name, Member("prelu", node, 1)))
            continue
        if op in _PRESERVING and len(ins) == 1:
            sp.union(ins[0].name, outs[0].name)
            continue
        if op in _ELEMENTWISE:
            acts = [v for v in node.inputs if _is_act(v)]
            sp.union(*(v.name for v in acts), outs[0].name)
            for i, v in enumerate(node.inputs):
                c = const_array(v) if v is not None and v.name else None
                if c is not None and c.size > 1:
                    rank = len(outs[0].shape or [])
                    full = c.reshape((1,) * (rank - c.ndim) + c.shape) if c.ndim <= rank else c
                    if rank >= 2 and full.shape[1] > 1 and full.size == full.shape[1]:
                        members.append((outs[0].name, Member("const", node, i, 1)))
                    else:
                        freeze.append((outs[0].name, f"{op} {node.name!r} with a constant "
                                       "that is not per channel"))
            continue
        if op == "Concat" and outs and _channel_concat(node):
            readers = _concat_readers(outs[0])
            if readers is not None:
                for slot, v in enumerate(node.inputs):
                    for r, in_axis in readers:
                        members.append((v.name, Member("concat_consumer", r, 1, in_axis,
                                                       concat=node, slot=slot)))
                continue
        if op in ("Flatten", "Reshape") and _flatten_of_map(node):
            y = outs[0]
            if all(u.op_type in ("Gemm", "MatMul") and u.inputs[0] is y for u, _ in y.uses()):
                continue  # handled by the Gemm as flatten_gemm
        for v in (*ins, *outs):
            freeze.append((v.name, f"{op} {node.name!r} (not analysed for channel pruning)"))

    for v in g.inputs:
        freeze.append((v.name, "graph input"))
    for v in g.outputs:
        freeze.append((v.name, "graph output"))

    by_root: dict[str, ChannelGroup] = {}
    values = {v.name: v for n in g for v in (*n.inputs, *n.outputs) if v is not None and v.name}
    values.update({v.name: v for v in g.inputs})
    for name, v in values.items():
        if const_array(v) is not None:
            continue
        root = sp.find(name)
        grp = by_root.setdefault(root, ChannelGroup([], _channels(v) or 0))
        grp.values.append(name)
    for name, m in members:
        by_root[sp.find(name)].members.append(m)
    for name, why in freeze:
        grp = by_root.get(sp.find(name))
        if grp is not None and why not in grp.frozen:
            grp.frozen.append(why)
    for grp in by_root.values():
        if grp.channels <= 1:
            grp.frozen.append("no channel axis")
    return [grp for grp in by_root.values() if grp.members or grp.frozen]


def _channel_concat(node: ir.Node) -> bool:
    """Concat along the channel axis (1) of activations only."""
    y = node.outputs[0]
    rank = len(y.shape or [])
    return rank >= 2 and node.attributes.get_int("axis", 0) % rank == 1 and all(
        _is_act(v) for v in node.inputs)


def _concat_readers(y: ir.Value) -> list[tuple[ir.Node, int]] | None:
    """(reader, weight in-channel axis) when every reader of a channel Concat's output is a
    plain Conv/ConvTranspose (group 1) with a constant, unshared weight; else None (frozen)."""
    if y.is_graph_output():
        return None
    out = []
    for r, idx in y.uses():
        if idx != 0 or r.op_type not in ("Conv", "ConvTranspose") or groups(r) != 1 \
                or const_array(r.inputs[1]) is None:
            return None
        out.append((r, 1 if r.op_type == "Conv" else 0))
    return out or None


def _flatten_of_map(node: ir.Node) -> bool:
    """Flatten(axis 1) of an N C H W map, or a Reshape of it to [N, C·H·W]: channel-major blocks."""
    x, y = node.inputs[0], node.outputs[0]
    if x.shape is None or y.shape is None or len(x.shape) < 3 or len(y.shape) != 2:
        return False
    if node.op_type == "Flatten" and node.attributes.get_int("axis", 1) != 1:
        return False
    dims = list(x.shape)
    return all(isinstance(d, int) for d in dims) and y.shape[1] == int(np.prod(dims[1:]))

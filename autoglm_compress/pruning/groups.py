"""Channel dependency analysis on the IR: which output channels can be removed together.

A *channel space* is a set of activation values that share one channel index on their *channel
axis* — axis 1 for NC… maps and Gemm rows, the last axis after a MatMul with a constant weight
([B, S, F] in a transformer FFN), a moved axis after a Transpose. Ops that keep channels one-to-one
join their input and output: BatchNormalization, point-wise ops (Relu, Erf, …), pooling/Resize
(channels on axis 1), depthwise Conv, element-wise ops of activations (a residual Add joins every
branch; an input that broadcasts over the channel axis, e.g. an attention mask, is not joined),
Softmax over another axis, Transpose, a Reshape that keeps the last axis, and a MatMul of two
activations whose channels sit on the same batch axis (attention heads in QKᵀ and P·V).

A space is *prunable* when every value in it is written by a weighted op (Conv, ConvTranspose,
Gemm/MatMul with a constant weight: the *sources*, whose output channels are removed) or by an op of
the space, and every reader is understood: a weighted op's input channels, BN parameters, a
per-channel constant, a depthwise conv (its weights and ``group`` shrink with the space), Flatten →
Gemm (channel × spatial blocks), a channel Concat read only by plain convs (each input space pruned
on its own, at its current offset), a channel Split or non-overlapping channel Slices (each
output space pruned on its own: the source writing the split value loses the rows at that
output's offset, the Split's sizes / the Slices' bounds shrink; channels no Slice reads go too).
A Shape that only reads other axes (its start/end, or constant Gathers/Slices of its result)
is not a reader of the channels.

*Attention heads*: a Reshape [.., H] → [.., heads, head_dim] after the Q/K/V projections and the
Reshape back before the output projection make a space whose channels are heads and whose
*expanded* values (projection outputs, the merged context) hold ``block`` = head_dim features per
channel: pruning keeps whole heads in Wq/Wk/Wv (columns), their biases, the Reshape shape
constants (with a dynamic batch / length: the constant inputs of the Concat that builds the shape
at run time) and Wo (rows); onnxruntime's fused ``com.microsoft.Attention`` (packed QKV weight) the
same way, its ``num_heads`` with them. The FFN hidden dimension is an ordinary space (MatMul →
GELU → MatMul).

Anything else — a graph input or output, a Reshape whose channel entry is computed, a grouped
(non-depthwise) conv, a shared weight, LayerNormalization over the channels, an unknown op —
*freezes* the space, and the reason is kept for the report (issue 14: "a group that cannot be
pruned safely is left alone and listed").
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array, groups, is_weighted, out_channel_axis

__all__ = ["ChannelGroup", "Member", "Splitter", "channel_groups", "slice_window", "split_sizes"]

logger = logging.getLogger(__name__)

_POINTWISE = frozenset({
    "Relu", "Clip", "Sigmoid", "HardSwish", "HardSigmoid", "LeakyRelu", "Tanh", "Elu", "Gelu",
    "Identity", "Dropout", "Softplus", "Mish", "Neg", "Abs", "Erf", "IsNaN", "Exp", "Log",
    "Sqrt", "Reciprocal", "Cast", "Not", "Selu", "Celu", "Softsign", "Sin", "Cos",
})
_SPATIAL = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize",
                      "LpPool", "GlobalLpPool"})
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Where", "And", "Or",
                          "Equal", "Greater", "Less", "Pow"})
_HEAD_KINDS = frozenset({"source", "consumer", "const", "reshape", "attention"})


@dataclasses.dataclass
class Splitter:
    """A channel Split, or non-overlapping Slices of one value's channels: one output space
    each (channels between the Slices' windows are read by nobody and go when any is pruned)."""

    nodes: list[ir.Node]  # the Split, or the Slices in channel order

    @property
    def outputs(self) -> list[ir.Value]:
        if self.nodes[0].op_type == "Split":
            return list(self.nodes[0].outputs)
        return [n.outputs[0] for n in self.nodes]

    def sizes(self) -> list[int]:
        return [e - b for b, e in self.windows()]

    def windows(self) -> list[tuple[int, int]]:
        """(start, end) of each output in the split value's channels, in channel order; Slices
        may leave gaps (channels nobody reads), never overlap."""
        if self.nodes[0].op_type == "Split":
            ends = np.cumsum(split_sizes(self.nodes[0])).tolist()
            return [(e - w, e) for e, w in zip(ends, split_sizes(self.nodes[0]))]
        return [slice_window(n) for n in self.nodes]


@dataclasses.dataclass
class Member:
    """One place that changes when the space loses channels: ``kind`` says how."""

    kind: str  # "source" | "consumer" | "depthwise" | "bn" | "const" | "prelu" | "flatten_gemm"
    #            | "concat_consumer" | "reshape" | "split_source" | "attention" (fused QKV)
    node: ir.Node
    index: int = 0  # input index of the tensor to slice (const); reshape: shape entry to rewrite
    axis: int = 0  # its axis that holds the space's channels
    block: int = 1  # flatten_gemm: input features per channel (H·W)
    concat: ir.Node | None = None  # concat_consumer: the Concat
    slot: int = 0  # which input of the Concat / output of the splitter
    value: str = ""  # the activation whose channels this member touches
    space: ChannelGroup | None = None  # split_source: the space of the split value
    splitter: Splitter | None = None  # split_source: the Split / Slices that cut it


@dataclasses.dataclass
class ChannelGroup:
    """A channel space: its values, width, the members to rewrite, and why it is frozen if it is."""

    values: list[str]
    channels: int
    members: list[Member] = dataclasses.field(default_factory=list)
    frozen: list[str] = dataclasses.field(default_factory=list)
    axes: dict[str, int] = dataclasses.field(default_factory=dict)  # value -> channel axis
    expanded: set[str] = dataclasses.field(default_factory=set)  # values with block per channel
    block: int = 1  # features per channel on expanded values (head_dim for attention heads)
    split_by: ir.Node | None = None  # set when a Split reads it: pruned through its outputs

    @property
    def prunable(self) -> bool:
        return not self.frozen and self.split_by is None and bool(self.sources)

    @property
    def sources(self) -> list[Member]:
        return [m for m in self.members if m.kind in ("source", "split_source", "attention")]

    @property
    def kind(self) -> str:
        return "heads" if self.block > 1 else "channels"

    def width(self, name: str) -> int:
        """Features per channel on value ``name``'s channel axis (block if expanded, else 1)."""
        return self.block if name in self.expanded else 1


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


def _rank(v: ir.Value) -> int | None:
    return None if v.shape is None else len(v.shape)


def _dims(v: ir.Value) -> list[int] | None:
    if v.shape is None or not all(isinstance(d, int) for d in v.shape):
        return None
    return [int(d) for d in v.shape]


def _last2(v: ir.Value) -> list | None:
    """The last two dims of ``v`` (one for a 1-D value), ints or symbols; None if unknown."""
    if v.shape is None or len(v.shape) < 1:
        return None
    return list(v.shape)[-2:]


def _prod(d: list) -> int | None:
    """Product of the last two dims when both are ints (else None: never equal to a dim)."""
    return d[0] * d[1] if len(d) == 2 and all(isinstance(x, int) for x in d) else None


def _depthwise(node: ir.Node, w: np.ndarray) -> bool:
    g = groups(node)
    return g > 1 and w.shape[1] == 1 and w.shape[0] == g


def split_sizes(node: ir.Node) -> list[int] | None:
    """A Split's output sizes (its ``split`` input or attribute, else equal parts), None if unknown."""
    if len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].name:
        s = const_array(node.inputs[1])
        return None if s is None else [int(d) for d in s.reshape(-1)]
    if "split" in node.attributes:
        return [int(d) for d in node.attributes["split"].as_ints()]
    x = node.inputs[0].shape
    if x is None:
        return None
    c, n = x[node.attributes.get_int("axis", 0) % len(x)], len(node.outputs)
    return [c // n] * n if isinstance(c, int) and c % n == 0 else None


def slice_window(node: ir.Node) -> tuple[int, int] | None:
    """(start, end) of a Slice that cuts only axis 1 with step 1 and constant bounds, else None."""
    x = node.inputs[0].shape
    arrs = [const_array(v) if i < len(node.inputs) and (v := node.inputs[i]) is not None
            and v.name else None for i in range(1, 5)]
    starts, ends, axes, steps = arrs
    if x is None or len(x) < 2 or not isinstance(x[1], int) or starts is None or ends is None \
            or len(node.inputs) > 3 and axes is None:
        return None
    axes = list(range(starts.size)) if axes is None else [int(a) % len(x) for a in axes]
    if axes != [1] or (steps is not None and int(steps.reshape(-1)[0]) != 1):
        return None
    c = x[1]
    b, e = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])
    b, e = (b + c if b < 0 else b), (e + c if e < 0 else e)
    return max(0, min(b, c)), max(0, min(e, c))


class _Analysis:
    def __init__(self, model: ir.Model):
        self.g = model.graph
        self.opset = model.opset_imports.get("", 13)
        self.sp = _Spaces()
        self.members: list[Member] = []
        self.freezes: list[tuple[str, str]] = []  # (value, reason)
        self.axis: dict[str, int] = {}
        self.expanded: set[str] = set()
        self.marks: list[tuple[str, int]] = []  # (value, head_dim) from head Reshapes
        self.splits: list[ir.Node] = []
        self.slices: dict[str, list[ir.Node]] = {}  # value -> the channel Slices reading it
        self.uses_weight: dict[str, int] = {}
        for node in self.g:
            for v in node.inputs:
                if v is not None and v.name and const_array(v) is not None:
                    self.uses_weight[v.name] = self.uses_weight.get(v.name, 0) + 1

    # -- bookkeeping ---------------------------------------------------------------------------
    def freeze(self, why: str, *values: ir.Value) -> None:
        self.freezes += [(v.name, why) for v in values if v is not None and v.name]

    def claim(self, v: ir.Value, axis: int) -> bool:
        """Say ``v``'s channels are on ``axis``; a second, different claim freezes its space."""
        rank = _rank(v)
        if rank is None or rank == 0:
            self.freeze("unknown rank", v)
            return False
        axis %= rank
        have = self.axis.setdefault(v.name, axis)
        if have != axis:
            self.freeze(f"channels on axis {have} and {axis} of {v.name!r}", v)
            return False
        return True

    def ax(self, v: ir.Value) -> int:
        """``v``'s channel axis: as claimed, else 1 (NC…), claimed now."""
        if v.name not in self.axis:
            self.claim(v, 1 if (_rank(v) or 0) >= 2 else 0)
        return self.axis.get(v.name, 1)

    def add(self, kind: str, node: ir.Node, value: ir.Value, **kw) -> None:
        self.members.append(Member(kind, node, value=value.name, **kw))

    def follow(self, x: ir.Value, y: ir.Value, axis: int) -> None:
        """``y`` carries ``x``'s channels on ``axis``."""
        if self.claim(y, axis):
            self.sp.union(x.name, y.name)
            if x.name in self.expanded:
                self.expanded.add(y.name)

    # -- ops -----------------------------------------------------------------------------------
    def visit(self, node: ir.Node) -> None:
        op = node.op_type
        ins = [v for v in node.inputs if _is_act(v)]
        outs = [v for v in node.outputs if v is not None and v.name]
        for v in (*ins, *outs):
            self.sp.find(v.name)
        if op == "Constant":
            return
        if is_weighted(node) and op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and not (
                op == "MatMul" and len(ins) == 2):
            self._weighted(node, ins, outs)
        elif op == "BatchNormalization" and self.ax(ins[0]) == 1:
            self.follow(ins[0], outs[0], 1)
            self.add("bn", node, ins[0])
        elif op == "PRelu" and self.ax(ins[0]) == 1:
            self.follow(ins[0], outs[0], 1)
            slope = const_array(node.inputs[1])
            if slope is not None and slope.size > 1:
                self.add("prelu", node, ins[0], index=1)
        elif op in _POINTWISE and len(ins) == 1:
            self.follow(ins[0], outs[0], self.ax(ins[0]))
        elif op in _SPATIAL and len(ins) == 1 and self.ax(ins[0]) == 1:
            self.follow(ins[0], outs[0], 1)
        elif op in ("Softmax", "LogSoftmax") and self._softmax_keeps(node, ins[0]):
            self.follow(ins[0], outs[0], self.ax(ins[0]))
        elif op in _ELEMENTWISE and ins:
            self._elementwise(node, ins, outs[0])
        elif not self._layout(node, op, ins, outs):
            self.freeze(f"{op} {node.name!r} (not analysed for channel pruning)", *ins, *outs)

    def _layout(self, node: ir.Node, op: str, ins, outs) -> bool:
        """Ops that move, split or join channels; True when the op was understood (its handler
        recorded the coupling), False to freeze its values."""
        one = len(ins) == 1
        return bool(
            (op == "Transpose" and one and self._transpose(node, ins[0], outs[0]))
            or (op == "MatMul" and len(ins) == 2 and self._matmul_acts(node, *ins, outs[0]))
            or (op == "Concat" and outs and self._concat(node))
            or (op == "Split" and one and self._split(node, ins[0]))
            or (op == "Attention" and node.domain == "com.microsoft"
                and self._fused_attention(node, ins, outs))
            or (op == "Slice" and one and self._slice(node, ins[0]))
            or (op == "Shape" and one and self._shape_reader(node, ins[0]))
            or (op in ("Flatten", "Reshape") and ins and self._reshape(node, ins[0], outs[0])))

    def _weighted(self, node: ir.Node, ins, outs) -> None:
        op = node.op_type
        w_val, x, y = node.inputs[1], node.inputs[0], node.outputs[0]
        w = const_array(w_val)
        if w is None or (op == "MatMul" and w.ndim != 2) or (
                op == "Gemm" and node.attributes.get_int("transA", 0)):
            self.freeze(f"{op} {node.name!r} with a non-constant weight", *ins, *outs)
            return
        if self.uses_weight.get(w_val.name, 0) > 1:
            self.freeze(f"weight {w_val.name!r} is shared", *ins, *outs)
            return
        if op in ("Conv", "ConvTranspose") and groups(node) > 1:
            if op == "Conv" and _depthwise(node, w) and self.ax(x) == 1:
                self.follow(x, y, 1)
                self.add("depthwise", node, x)
            else:
                self.freeze(f"grouped {op} {node.name!r}", x, y)
            return
        matmul = op == "MatMul"
        y_axis = (_rank(y) or 2) - 1 if matmul else 1
        if not self.claim(y, y_axis):
            return
        self.expanded.add(y.name)
        self.add("source", node, y, index=1, axis=out_channel_axis(node, w.ndim))
        in_axis = 1 if op == "Conv" else 0 if op == "ConvTranspose" else (
            1 if op == "Gemm" and node.attributes.get_int("transB", 0) else 0)
        p = x.producer()
        if op in ("Gemm", "MatMul") and p is not None and p.op_type in (
                "Flatten", "Reshape") and _flatten_of_map(p):
            src = p.inputs[0]
            if self.ax(src) == 1:
                hw = int(np.prod(list(src.shape[2:])))
                self.add("flatten_gemm", node, src, index=1, axis=in_axis, block=hw)
            else:
                self.freeze(f"{p.op_type} {p.name!r} of a map whose channels are not on axis 1",
                            src)
            return
        if self.claim(x, (_rank(x) or 2) - 1 if matmul else 1):
            self.add("consumer", node, x, index=1, axis=in_axis)

    def _softmax_keeps(self, node: ir.Node, x: ir.Value) -> bool:
        rank = _rank(x)
        if rank is None:
            return False
        a = node.attributes.get_int("axis", -1 if self.opset >= 13 else 1) % rank
        c = self.ax(x)
        return c != a if self.opset >= 13 else c < a  # before 13 it normalises axes a… together

    def _elementwise(self, node: ir.Node, ins, y: ir.Value) -> None:
        if y.shape is None or any(v.shape is None for v in ins):
            self.freeze(f"{node.op_type} {node.name!r} with unknown shapes", *ins, y)
            return
        out = list(y.shape)
        rank = len(out)
        joined, axes = [], set()
        for v in ins:
            d = list(v.shape)
            if not d:
                continue  # a scalar
            a = self.ax(v) + rank - len(d)
            if d[self.ax(v)] == 1 and out[a] != 1:
                continue  # broadcasts over the channels (a mask, a per-sample scale): not joined
            joined.append(v)
            axes.add(a)
        if len(axes) > 1:
            self.freeze(f"{node.op_type} {node.name!r} mixes channel axes", *ins, y)
            return
        axis = axes.pop() if axes else 1
        if not self.claim(y, axis):
            return
        if joined:
            self.sp.union(*(v.name for v in joined), y.name)
            if any(v.name in self.expanded for v in joined):
                self.expanded.add(y.name)
        for i, v in enumerate(node.inputs):
            c = const_array(v) if v is not None and v.name else None
            if c is None or c.size <= 1:
                continue
            full = c.reshape((1,) * (rank - c.ndim) + c.shape) if c.ndim <= rank else c
            if c.ndim <= rank and full.shape[axis] > 1 and full.size == full.shape[axis]:
                self.add("const", node, y, index=i, axis=axis)
            else:
                self.freeze(f"{node.op_type} {node.name!r} with a constant that is not per "
                            "channel", y)

    def _transpose(self, node: ir.Node, x: ir.Value, y: ir.Value) -> bool:
        rank = _rank(x)
        if rank is None:
            return False
        perm = list(node.attributes.get_ints("perm", list(range(rank))[::-1]))
        self.follow(x, y, perm.index(self.ax(x)))
        return True

    def _matmul_acts(self, node: ir.Node, a: ir.Value, b: ir.Value, y: ir.Value) -> bool:
        """QKᵀ / P·V: both operands' channels on the same batch axis (the heads)."""
        if a.shape is None or b.shape is None or y.shape is None:
            return False
        r = len(y.shape)
        pa, pb = self.ax(a) + r - len(a.shape), self.ax(b) + r - len(b.shape)
        if pa != pb or pa >= r - 2:
            return False
        if self.claim(y, pa):
            self.sp.union(a.name, b.name, y.name)
        return True

    def _concat(self, node: ir.Node) -> bool:
        if not _channel_concat(node):
            return False
        readers = _concat_readers(node.outputs[0])
        if readers is None or not all(self.claim(v, 1) for v in node.inputs):
            return False
        for slot, v in enumerate(node.inputs):
            for r, in_axis in readers:
                self.add("concat_consumer", r, v, index=1, axis=in_axis, concat=node, slot=slot)
        return True

    def _split(self, node: ir.Node, x: ir.Value) -> bool:
        rank = _rank(x)
        if rank is None or rank < 2 or node.attributes.get_int("axis", 0) % rank != 1 \
                or split_sizes(node) is None or self.ax(x) != 1:
            return False
        for y in node.outputs:
            self.claim(y, 1)
        self.splits.append(node)
        return True

    def _fused_attention(self, node: ir.Node, ins, outs) -> bool:
        """onnxruntime's fused Attention (packed QKV weight [H_in, 3H], ``num_heads``): its output
        [B, S, H] carries the heads, ``H / num_heads`` features each; its input stays whole."""
        w = const_array(node.inputs[1])
        heads = node.attributes.get_int("num_heads", 0)
        sizes = list(node.attributes.get_ints("qkv_hidden_sizes", []))
        extra = [v for v in node.inputs[4:] if v is not None and v.name]
        if w is None or w.ndim != 2 or heads < 1 or w.shape[1] % 3 or extra or (
                sizes and len(set(sizes)) != 1) or node.attributes.get_int("unidirectional", 0):
            return False
        hidden = w.shape[1] // 3
        y, x = outs[0], node.inputs[0]
        if y.shape is None and x.shape is not None:  # contrib op: shape inference skips it
            y.shape = ir.Shape([*x.shape[:-1], hidden])
            y.type = y.type or x.type
        if hidden % heads or not self.claim(y, (_rank(y) or 3) - 1):
            return False
        self.freeze(f"input of fused Attention {node.name!r}", node.inputs[0])
        self.expanded.add(y.name)
        self.marks.append((y.name, hidden // heads))
        self.add("attention", node, y)
        return True

    def _slice(self, node: ir.Node, x: ir.Value) -> bool:
        if self.ax(x) != 1 or slice_window(node) is None:
            return False
        self.claim(node.outputs[0], 1)
        self.slices.setdefault(x.name, []).append(node)
        return True

    def _shape_reader(self, node: ir.Node, x: ir.Value) -> bool:
        """A Shape whose dims are only read at other axes than the channel axis (its ``start`` /
        ``end`` leave it out, or only constant Gathers / Slices of the other entries read it):
        pruning does not change what it gives (a dynamic-axes export's ``shape[:-1]`` before
        a Reshape of the FFN rows)."""
        r = _rank(x)
        if not r:
            return False
        a = self.ax(x) % r

        def norm(i: int) -> int:
            return min(max(i + r if i < 0 else i, 0), r)

        lo, hi = norm(node.attributes.get_int("start", 0)), norm(node.attributes.get_int("end", r))
        if not lo <= a < hi:
            return True
        n, dims = hi - lo, node.outputs[0]
        for use, _ in dims.uses():
            if use.inputs[0] is not dims:
                return False
            if use.op_type == "Gather" and use.attributes.get_int("axis", 0) == 0:
                idx = const_array(use.inputs[1])
                if idx is None or a - lo in {int(i) % n for i in idx.reshape(-1)}:
                    return False
            elif use.op_type == "Slice":
                arrs = [const_array(use.inputs[i]) if i < len(use.inputs) and use.inputs[i]
                        is not None and use.inputs[i].name else None for i in range(1, 5)]
                starts, ends, axes, steps = arrs
                if starts is None or ends is None or (len(use.inputs) > 3 and axes is None) or (
                        axes is not None and axes.reshape(-1).tolist() not in ([0], [-1])) or (
                        steps is not None and int(steps.reshape(-1)[0]) != 1):
                    return False
                b, e = (int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0]))
                b = min(max(b + n if b < 0 else b, 0), n)
                e = min(max(e + n if e < 0 else e, 0), n)
                if b <= a - lo < e:
                    return False
            else:
                return False
        return True

    def _reshape(self, node: ir.Node, x: ir.Value, y: ir.Value) -> bool:
        if _flatten_of_map(node) and self.ax(x) == 1 and all(
                u.op_type in ("Gemm", "MatMul") and u.inputs[0] is y for u, _ in y.uses()):
            return True  # handled by the Gemm as flatten_gemm
        dx, dy = _last2(x), _last2(y)  # row-major: the last axes decide, the rest follows
        shape = node.op_type == "Reshape"
        if dx is None or dy is None or (shape and _shape_entry(node, 0) is False):
            return False
        a, rx, ry = self.ax(x), len(x.shape), len(y.shape)
        if a == rx - 1 and dx[-1] == dy[-1] and isinstance(dx[-1], int):
            self.follow(x, y, ry - 1)  # [B, S, C] <-> [B·S, C]
            self._shape_member(node, y, ry - 1, shape)
            return True
        if a == rx - 1 and ry >= 3 and _prod(dy) == dx[-1] and dy[-2] != 1 \
                and x.name in self.expanded:
            if self.claim(y, ry - 2):  # [.., H] -> [.., heads, head_dim]
                self.sp.union(x.name, y.name)
                self.marks.append((x.name, dy[-1]))
                self._shape_member(node, y, ry - 2, shape)
            return True
        if rx >= 3 and a == rx - 2 and _prod(dx) == dy[-1]:
            if self.claim(y, ry - 1):  # [.., heads, head_dim] -> [.., H]
                self.sp.union(x.name, y.name)
                self.expanded.add(y.name)
                self.marks.append((y.name, dx[-1]))
                self._shape_member(node, y, ry - 1, shape)
            return True
        return False

    def _shape_member(self, node: ir.Node, y: ir.Value, pos: int, shape: bool) -> None:
        if not shape:  # Flatten: nothing to rewrite
            return
        entry = _shape_entry(node, pos)
        if not entry:
            self.freeze(f"Reshape {node.name!r} computes the channel dimension at run time", y)
        elif entry[3] == 0:
            self.freeze(f"Reshape {node.name!r} copies the channel dimension (0)", y)
        elif entry[3] != -1:
            self.add("reshape", entry[0], y, index=entry[2], slot=entry[1])

    # -- result --------------------------------------------------------------------------------
    def groups(self) -> list[ChannelGroup]:
        g = self.g
        for v in g.inputs:
            self.freeze("graph input", v)
        for v in g.outputs:
            self.freeze("graph output", v)
        by_root: dict[str, ChannelGroup] = {}
        values = {v.name: v for n in g for v in (*n.inputs, *n.outputs)
                  if v is not None and v.name}
        values.update({v.name: v for v in g.inputs})
        for name, v in values.items():
            if const_array(v) is not None:
                continue
            grp = by_root.setdefault(self.sp.find(name), ChannelGroup([], 0))
            grp.values.append(name)
            grp.axes[name] = self.axis.get(name, 1)
            if name in self.expanded:
                grp.expanded.add(name)
        for m in self.members:
            by_root[self.sp.find(m.value)].members.append(m)
        for name, why in self.freezes:
            grp = by_root.get(self.sp.find(name))
            if grp is not None and why not in grp.frozen:
                grp.frozen.append(why)
        for name, head in self.marks:
            grp = by_root[self.sp.find(name)]
            if grp.block not in (1, head):
                grp.frozen.append("mixed head sizes")
            grp.block = head
        for grp in by_root.values():
            _set_width(grp, values)
        for node in self.splits:
            self._split_members(Splitter([node]), by_root, values)
        for name, nodes in self.slices.items():
            nodes = sorted(nodes, key=lambda n: slice_window(n))
            wins = [slice_window(n) for n in nodes]
            if all(b < e for b, e in wins) and all(a[1] <= b[0] for a, b in zip(wins, wins[1:])):
                self._split_members(Splitter(nodes), by_root, values)
            else:
                why = f"Slices of {name!r} overlap (or one is empty)"
                for n in (*nodes, values[name].producer()):
                    for v in n.outputs if n is not None else ():
                        by_root[self.sp.find(v.name)].frozen.append(why)
        return [grp for grp in by_root.values() if grp.members or grp.frozen]

    def _split_members(self, splitter: Splitter, by_root, values) -> None:
        x = splitter.nodes[0].inputs[0]
        parent = by_root[self.sp.find(x.name)]
        why = _split_blocker(parent, splitter, values)
        for slot, y in enumerate(splitter.outputs):
            grp = by_root.get(self.sp.find(y.name))
            if grp is None:
                continue
            if why:
                grp.frozen.append(why)
            else:
                grp.members.append(Member("split_source", splitter.nodes[slot % len(
                    splitter.nodes)], value=y.name, slot=slot, space=parent, splitter=splitter))
        if why:
            parent.frozen.append(why)
        else:
            parent.split_by = splitter.nodes[0]


def _set_width(grp: ChannelGroup, values: dict[str, ir.Value]) -> None:
    """The group's channel count from its values' channel dims; inconsistent widths freeze it."""
    widths = set()
    for name in grp.values:
        s = values[name].shape
        if s is None or len(s) == 0 or not isinstance(s[grp.axes[name] % len(s)], int):
            continue
        n, per = int(s[grp.axes[name] % len(s)]), grp.width(name)
        widths.add(n // per if n % per == 0 else -1)
    grp.channels = min(widths) if len(widths) == 1 else 0
    if len(widths) > 1 or -1 in widths:
        grp.frozen.append(f"inconsistent channel widths {sorted(widths)}")
    if grp.channels <= 1:
        grp.frozen.append("no channel axis")
    if grp.block > 1:
        bad = sorted({m.kind for m in grp.members} - _HEAD_KINDS)
        if bad:
            grp.frozen.append(f"attention heads read by {', '.join(bad)}")


def _split_blocker(parent: ChannelGroup, splitter: Splitter, values) -> str | None:
    """Why the value a Split (or its Slices) reads cannot be pruned through its outputs (None: it
    can): it must be written by weighted sources (through BN / per-channel constants / point-wise
    ops) and read only inside its space and by the splitter."""
    what = f"{splitter.nodes[0].op_type} {splitter.nodes[0].name!r}"
    if parent.frozen:
        return f"{what} of a frozen space ({parent.frozen[0]})"
    if parent.block != 1 or any(parent.axes[n] != 1 for n in parent.values):
        return f"{what} of a space with channels off axis 1"
    inside, cut = set(parent.values), {id(n) for n in splitter.nodes}
    for name in parent.values:
        for use, _ in values[name].uses():
            if id(use) not in cut and not all(o.name in inside for o in use.outputs):
                return f"{what}: its input is also read by {use.op_type}"
    kinds = {m.kind for m in parent.members}
    if "source" not in kinds or kinds - {"source", "bn", "const", "prelu"}:
        return f"{what} of a value not written by plain convs"
    return None


def channel_groups(model: ir.Model) -> list[ChannelGroup]:
    """The channel spaces of ``model`` (shapes inferred), prunable or frozen with reasons."""
    a = _Analysis(model)
    for node in model.graph:
        a.visit(node)
    return a.groups()


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


def _shape_entry(node: ir.Node, pos: int):
    """Where entry ``pos`` of a Reshape's target shape is written: (node, input slot, index in
    that constant, value) — the shape constant itself, or a constant input of the Concat that
    builds the shape at run time (dynamic batch: Shape → Gather → Concat with [heads], [head_dim]);
    None when that entry is computed; False when the shape is neither."""
    s = const_array(node.inputs[1])
    if s is not None:
        return node, 1, pos, int(s.reshape(-1)[pos])
    cat = node.inputs[1].producer()
    if cat is None or cat.op_type != "Concat" or cat.attributes.get_int("axis", 0) != 0:
        return False
    off = 0
    for j, v in enumerate(cat.inputs):
        n = v.shape[0] if v is not None and v.shape is not None and len(v.shape) == 1 else None
        if not isinstance(n, int):
            return False
        if off <= pos < off + n:
            c = const_array(v)
            return None if c is None else (cat, j, pos - off, int(c.reshape(-1)[pos - off]))
        off += n
    return False


def _flatten_of_map(node: ir.Node) -> bool:
    """Flatten(axis 1) of an N C H W map, or a Reshape of it to [N, C·H·W]: channel-major blocks."""
    x, y = node.inputs[0], node.outputs[0]
    if x.shape is None or y.shape is None or len(x.shape) < 3 or len(y.shape) != 2:
        return False
    if node.op_type == "Flatten" and node.attributes.get_int("axis", 1) != 1:
        return False
    dims = list(x.shape)
    return all(isinstance(d, int) for d in dims) and y.shape[1] == int(np.prod(dims[1:]))

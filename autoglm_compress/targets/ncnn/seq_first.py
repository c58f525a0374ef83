"""Fit the sequence-first values around recurrent layers to ncnn's blobs (ncnn target, in prepare).

torch exports ``nn.LSTM`` / ``nn.GRU`` as ONNX LSTM/GRU in layout 0: X [S, 1, I], Y [S, D, 1, H],
states [D, 1, H] — the batch (1) is not the leading axis. With batch 1 such a value holds the same
data, in the same order, as its batch-first twin ([1, S, I], …), so ncnn's blob for it is that twin's
(blobs.py drops the first size-1 axis). What ncnn cannot follow is an op that moves or indexes those
axes, so in a graph with a recurrent layer:

- a Transpose that moves only size-1 axes (torch's batch_first ``transpose(0, 1)`` of [1, S, I],
  the (0, 2, 1, 3) after a bidirectional Y) and touches a sequence-first value becomes a Reshape;
  one from a batch-first value into a sequence-first one (a CRNN's [1, C, W] → [W, 1, C]) becomes
  the Transpose into the batch-first twin ([1, W, C]) and a Reshape;
- a Slice / Gather / Concat over a sequence-first value (torch slicing h0 [L·D, 1, H] per layer,
  concatenating the layers' Y_h, ``h_n[-1]``) runs on the batch-first twins, between Reshapes;
- a sequence-first graph input read by a recurrent layer (x [S, 1, I], h0 [L·D, 1, H]) is read
  through its twin and back (two Reshapes, no ncnn layer), so its dim 0 is not taken for a batch.

Everything else that reads a sequence-first value is refused by the ncnn check, naming it. The IR
stays valid ONNX (layout 0 kept: onnxruntime runs no other) with the same numbers.
"""

from __future__ import annotations

import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ncnn.blobs import batch_axis
from autoglm_compress.targets.ncnn.reshape_chains import _as_reshape, _dims, _shape_const

__all__ = ["seq_first", "RECURRENT"]

RECURRENT = frozenset({"LSTM", "GRU", "RNN"})


def _seq_axis(v: ir.Value) -> int | None:
    """The batch axis of a non-constant sequence-first value (> 0), else None."""
    s = _dims(v)
    if s is None or not s or s[0] == 1 or const_array(v) is not None:
        return None
    b = batch_axis(s)
    return b or None


def _twin(s: list[int], b: int) -> list[int]:
    return [1, *s[:b], *s[b + 1:]]


def _moves_only_ones(node: ir.Node) -> bool:
    s = _dims(node.inputs[0])
    if s is None:
        return False
    perm = [int(p) for p in node.attributes.get_ints("perm", list(reversed(range(len(s)))))]
    return [a for a in range(len(s)) if s[a] != 1] == [p for p in perm if s[p] != 1]


def _reshape_before(node: ir.Node, x: ir.Value, dims: list[int], twins: dict,
                    suffix: str = "_batch_first") -> ir.Value:
    """Reshape(x, dims) before ``node``, made once per (x, dims)."""
    key = (id(x), tuple(dims))
    if key not in twins:
        g = node.graph
        y = ir.Value(name=f"{x.name}{suffix}", shape=ir.Shape(dims), type=x.type)
        shp = _shape_const(g, f"{x.name}{suffix}_dims", dims)
        g.insert_before(node, [ir.Node("", "Reshape", [x, shp], outputs=[y],
                                       name=f"{node.name or x.name}{suffix}")])
        twins[key] = y
    return twins[key]


def _on_twins(node: ir.Node, b: int, twins: dict) -> None:
    """Run Slice / Gather / Concat ``node`` over the batch-first twins of its sequence-first
    data inputs (batch axis ``b``), the result reshaped back to its output."""
    g = node.graph
    data = list(range(len(node.inputs))) if node.op_type == "Concat" else [0]
    ins = list(node.inputs)
    for i in data:
        ins[i] = _reshape_before(node, ins[i], _twin(_dims(ins[i]), b), twins)
    rank = len(_dims(node.inputs[0]))

    def moved(a: int) -> int:
        a %= rank
        return a + 1 if a < b else a

    attrs = {k: a for k, a in node.attributes.items() if k != "axis"}
    out = node.outputs[0]
    out_b = b
    if node.op_type == "Slice":
        axes = const_array(ins[3]) if len(ins) > 3 and ins[3] is not None else range(
            len(const_array(ins[1])))
        ins = ins[:3] + [_shape_const(g, f"{out.name}_twin_axes", [moved(int(a)) for a in axes])] \
            + ins[4:]
    else:
        axis = node.attributes.get_int("axis", 0)
        attrs["axis"] = ir.AttrInt64("axis", moved(axis))
        if node.op_type == "Gather" and const_array(ins[1]).ndim == 0 and axis % rank < b:
            out_b = b - 1  # a scalar index removes an axis before the batch
    s_out = _dims(out)
    twin = ir.Value(name=f"{out.name}_twin", shape=ir.Shape(_twin(s_out, out_b)), type=out.type)
    g.insert_before(node, [ir.Node("", node.op_type, ins, attributes=list(attrs.values()),
                                   outputs=[twin], name=f"{node.name or out.name}_twin")])
    _as_reshape(node, twin, s_out)


def _seq_input(node: ir.Node) -> int | None:
    """The batch axis of ``node``'s sequence-first data input (Concat: its output's)."""
    if node.op_type == "Concat":
        return _seq_axis(node.outputs[0])
    return _seq_axis(node.inputs[0])


def _indexing_ok(node: ir.Node, b: int) -> bool:
    if any(_dims(v) is None for v in (*node.inputs[:1], *node.outputs)):
        return False
    rank = len(_dims(node.inputs[0]))
    if node.op_type == "Slice":
        if any(const_array(v) is None for v in node.inputs[1:] if v is not None):
            return False
        av = node.inputs[3] if len(node.inputs) > 3 else None
        axes = const_array(av) if av is not None else range(len(const_array(node.inputs[1])))
        return all(int(a) % rank != b for a in axes)
    if node.op_type == "Gather" and const_array(node.inputs[1]) is None:
        return False
    axis = node.attributes.get_int("axis", 0) % rank
    if node.op_type == "Concat" and any(_dims(v) is None or len(_dims(v)) != rank
                                        or _dims(v)[b] != 1 for v in node.inputs):
        return False
    return axis != b


def _transpose_via_twin(node: ir.Node, b: int) -> None:
    """A Transpose of a batch-first input into a sequence-first output (batch axis ``b``): the
    same Transpose into the batch-first twin (batch kept at axis 0), reshaped to the output."""
    perm = [int(p) for p in node.attributes.get_ints("perm")]
    one = perm[b]  # a size-1 input axis, like axis 0: the two are interchangeable
    twin_perm = [0] + [one if p == 0 else p for j, p in enumerate(perm) if j != b]
    out = node.outputs[0]
    twin = ir.Value(name=f"{out.name}_twin", shape=ir.Shape(_twin(_dims(out), b)), type=out.type)
    node.graph.insert_before(node, [ir.Node("", "Transpose", [node.inputs[0]],
                                            [ir.AttrInt64s("perm", twin_perm)], outputs=[twin],
                                            name=f"{node.name or out.name}_twin")])
    _as_reshape(node, twin, _dims(out))


def _input_via_twin(node: ir.Node, i: int, twins: dict) -> None:
    """A sequence-first graph input read by recurrent ``node``: read through Reshapes to its
    batch-first twin and back (no layers in ncnn), so its dim 0 is not taken for a batch."""
    v = node.inputs[i]
    s = _dims(v)
    twin = _reshape_before(node, v, _twin(s, _seq_axis(v)), twins)
    node.replace_input_with(i, _reshape_before(node, twin, s, twins, "_seq"))


def seq_first(model: ir.Model) -> int:
    """Rewrite ``model`` in place; how many nodes were rewritten."""
    g = model.graph
    if not any(n.op_type in RECURRENT for n in g):
        return 0
    changed, twins = 0, {}
    for node in list(g):
        if node.op_type in RECURRENT and not node.attributes.get_int("layout", 0):
            for i in (0, 5, 6):
                v = node.inputs[i] if len(node.inputs) > i else None
                if v is not None and v.is_graph_input() and _seq_axis(v):
                    _input_via_twin(node, i, twins)
                    changed += 1
        elif node.op_type == "Transpose" and _dims(node.outputs[0]) is not None and (
                _seq_axis(node.inputs[0]) or _seq_axis(node.outputs[0])):
            if _moves_only_ones(node):
                _as_reshape(node, node.inputs[0], _dims(node.outputs[0]))
            elif (_dims(node.inputs[0]) or [0])[0] == 1 and "perm" in node.attributes:
                _transpose_via_twin(node, _seq_axis(node.outputs[0]))
            else:
                continue
            changed += 1
        elif node.op_type in ("Slice", "Gather", "Concat"):
            b = _seq_input(node)
            if b is not None and _indexing_ok(node, b):
                _on_twins(node, b, twins)
                changed += 1
    return changed

"""Fold index-only Gathers and Reshape chains before ncnn lowering (ncnn target, in prepare).

Hugging Face's attention-mask code moves the [1, S] padding mask through a Flatten to [S, 1], a
Gather with the constant indices 0…S−1 (an identity along that axis) and a Reshape to
[1, 1, 1, S]. The middle values have a leading dimension ≠ 1, which ncnn's batch-less blobs cannot
hold, yet the chain only rearranges elements. This rewrite turns a Gather whose constant indices
are exactly 0…n−1 over an axis of size n into a Reshape to its output shape, then lets a Reshape /
Flatten / Squeeze / Unsqueeze whose input comes from another such node (read by nothing else) read
that node's input directly. The IR stays valid ONNX with the same numbers.

``unpack_qkv``: ViT-style attention (timm, PP-OCR's SVTR) packs Q, K and V as
``x [1, N, 3·H·D] → Reshape [1, N, 3, H, D] → Transpose(2, 0, 3, 1, 4) → [3, 1, H, N, D]`` and takes
each with a Gather (or a Slice + Squeeze) on axis 0 — 5-D values whose leading axis is not a batch.
Each part becomes ``Slice(x, axis 2) → Reshape [1, N, H, D] → Transpose(0, 2, 1, 3)``: the same
[1, H, N, D] tensor through 4-D values ncnn can hold (and its SDPA fusion can read).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array

__all__ = ["fold_reshape_chains", "unpack_qkv"]

_RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def _dims(v: ir.Value) -> list[int] | None:
    if v.shape is None or not all(isinstance(d, int) for d in v.shape):
        return None
    return [int(d) for d in v.shape]


def _shape_const(graph: ir.Graph, name: str, dims: list[int]) -> ir.Value:
    arr = np.asarray(dims, np.int64)
    base, k = name, 1
    while name in graph.initializers:
        name, k = f"{base}_{k}", k + 1
    v = ir.Value(name=name, shape=ir.Shape([arr.size]), type=ir.TensorType(ir.DataType.INT64),
                 const_value=ir.tensor(arr, name=name))
    graph.register_initializer(v)
    return v


def _as_reshape(node: ir.Node, x: ir.Value, dims: list[int]) -> None:
    """Replace ``node`` by Reshape(x, dims), its output value kept."""
    g = node.graph
    y = node.outputs[0]
    shape = _shape_const(g, f"{y.name}_reshape_dims", dims)
    new_out = ir.Value(shape=y.shape, type=y.type)
    new = ir.Node("", "Reshape", [x, shape], outputs=[new_out],
                  name=f"{node.name}_reshape" if node.name else None)
    g.insert_after(node, [new])
    y.replace_all_uses_with(new_out, replace_graph_outputs=True)
    name = y.name
    g.remove(node, safe=True)
    new_out.name = name


def _identity_gather(node: ir.Node) -> bool:
    if node.op_type != "Gather" or len(node.inputs) != 2:
        return False
    data, idx = node.inputs
    ind, dx = const_array(idx), _dims(data)
    if ind is None or dx is None or _dims(node.outputs[0]) is None or ind.ndim == 0:
        return False
    axis = node.attributes.get_int("axis", 0) % len(dx)
    flat = ind.reshape(-1).astype(np.int64)
    return flat.size == dx[axis] and bool((flat == np.arange(flat.size)).all())


def fold_reshape_chains(model: ir.Model) -> int:
    """Rewrite ``model`` in place; how many nodes were folded away or turned into a Reshape."""
    changed = 0
    for node in list(model.graph):
        if node.graph is None:
            continue
        if _identity_gather(node):
            _as_reshape(node, node.inputs[0], _dims(node.outputs[0]))
            changed += 1
    for node in list(model.graph):
        if node.graph is None or node.op_type not in _RESHAPES:
            continue
        dy = _dims(node.outputs[0])
        prev = node.inputs[0].producer()
        if dy is None or prev is None or prev.op_type not in _RESHAPES:
            continue
        mid = prev.outputs[0]
        if mid.is_graph_output() or len(list(mid.uses())) != 1:
            continue
        _as_reshape(node, prev.inputs[0], dy)
        model.graph.remove(prev, safe=True)
        changed += 1
    return changed + _squeezed_transposes(model)


def _only_reader(v: ir.Value) -> ir.Node | None:
    uses = list(v.uses())
    return None if v.is_graph_output() or len(uses) != 1 else uses[0][0]


def _squeezed_transposes(model: ir.Model) -> int:
    """``x [1, *s] → Reshape [*s] → Transpose(p) → Reshape [1, *t]`` (the dynamo exporter's
    ``k.transpose(-2, -1)`` of [1, H, S, D]: a middle value whose leading dim is H) becomes
    ``Transpose(x, [0, *(p + 1)])``: the same [1, *t] tensor, with no batch-less middle value."""
    done = 0
    for sq in list(model.graph):
        if sq.graph is None or sq.op_type != "Reshape":
            continue
        dx, dm = _dims(sq.inputs[0]), _dims(sq.outputs[0])
        tr = _only_reader(sq.outputs[0])
        if dx is None or dm is None or dx != [1, *dm] or tr is None or tr.op_type != "Transpose":
            continue
        un = _only_reader(tr.outputs[0])
        perm = tr.attributes.get_ints("perm", list(range(len(dm)))[::-1])
        dt = _dims(tr.outputs[0])
        if un is None or un.op_type != "Reshape" or dt is None or _dims(un.outputs[0]) != [1, *dt]:
            continue
        y = un.outputs[0]
        out = ir.Value(shape=y.shape, type=y.type)
        new = ir.Node("", "Transpose", [sq.inputs[0]], outputs=[out],
                      attributes=[ir.AttrInt64s("perm", [0, *(int(p) + 1 for p in perm)])],
                      name=f"{tr.name}_batched" if tr.name else None)
        model.graph.insert_after(un, [new])
        y.replace_all_uses_with(out, replace_graph_outputs=True)
        name = y.name
        model.graph.remove([un, tr, sq], safe=True)
        out.name = name
        done += 1
    return done


def _part_index(node: ir.Node) -> tuple[int, ir.Value] | None:
    """(i, the [1, H, N, D] value) when ``node`` takes part i of the packed [3, 1, H, N, D]."""
    if node.op_type == "Gather" and node.attributes.get_int("axis", 0) == 0:
        idx = const_array(node.inputs[1])
        if idx is not None and idx.ndim == 0:
            return int(idx), node.outputs[0]
    if node.op_type == "Slice" and len(node.inputs) >= 3:
        starts, ends = const_array(node.inputs[1]), const_array(node.inputs[2])
        axes = const_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None \
            else np.zeros(1, np.int64)
        steps = const_array(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None \
            else np.ones(1, np.int64)
        if starts is None or ends is None or axes is None or steps is None or starts.size != 1 \
                or int(axes.reshape(-1)[0]) != 0 or int(steps.reshape(-1)[0]) != 1 \
                or int(ends.reshape(-1)[0]) != int(starts.reshape(-1)[0]) + 1:
            return None
        uses = list(node.outputs[0].uses())
        if len(uses) != 1 or node.outputs[0].is_graph_output():
            return None
        sq = uses[0][0]
        axes_sq = const_array(sq.inputs[1]) if len(sq.inputs) > 1 and sq.inputs[1] is not None \
            else np.asarray(list(sq.attributes.get_ints("axes", [])))
        if sq.op_type == "Squeeze" and axes_sq is not None and list(axes_sq.reshape(-1)) == [0]:
            return int(starts.reshape(-1)[0]), sq.outputs[0]
    return None


def unpack_qkv(model: ir.Model) -> int:
    """Rewrite packed Q/K/V unpacking (module docstring) in place; how many parts."""
    g = model.graph
    done = 0
    for tr in list(g):
        if tr.graph is None or tr.op_type != "Transpose" or \
                list(tr.attributes.get_ints("perm", [])) != [2, 0, 3, 1, 4]:
            continue
        r = tr.inputs[0].producer()
        dr = _dims(tr.inputs[0])
        x = r.inputs[0] if r is not None and r.op_type == "Reshape" else None
        dx = _dims(x) if x is not None else None
        if dx is None or dr is None or len(dx) != 3 or dx[0] != 1 or dr[0] != 1 \
                or dr[1] != dx[1] or dr[2] * dr[3] * dr[4] != dx[2]:
            continue
        _, n_tok, k, heads, d = dr
        parts = [(u, _part_index(u)) for u, _ in tr.outputs[0].uses()]
        if not parts or any(p is None or not 0 <= p[0] < k for _, p in parts):
            continue
        for reader, (i, out) in parts:
            base = out.name or f"qkv{i}"
            sl = ir.Value(shape=ir.Shape([1, n_tok, heads * d]), type=x.type)
            rs = ir.Value(shape=ir.Shape([1, n_tok, heads, d]), type=x.type)
            new_out = ir.Value(shape=ir.Shape([1, heads, n_tok, d]), type=x.type)
            nodes = [
                ir.Node("", "Slice", [x, _shape_const(g, f"{base}_start", [i * heads * d]),
                                      _shape_const(g, f"{base}_end", [(i + 1) * heads * d]),
                                      _shape_const(g, f"{base}_axis", [2])], outputs=[sl]),
                ir.Node("", "Reshape", [sl, _shape_const(g, f"{base}_heads", [1, n_tok, heads, d])],
                        outputs=[rs]),
                ir.Node("", "Transpose", [rs], attributes=[ir.AttrInt64s("perm", [0, 2, 1, 3])],
                        outputs=[new_out]),
            ]
            g.insert_before(reader, nodes)
            out.replace_all_uses_with(new_out)
            name = out.name
            producer = out.producer()
            if producer is not reader:  # Slice + Squeeze: drop the Squeeze first
                g.remove(producer, safe=True)
            g.remove(reader, safe=True)
            new_out.name = name
            done += 1
        g.remove(tr, safe=True)
        if not list(r.outputs[0].uses()) and not r.outputs[0].is_graph_output():
            g.remove(r, safe=True)
    return done

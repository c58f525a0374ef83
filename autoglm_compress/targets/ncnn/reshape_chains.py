"""Fold index-only Gathers and Reshape chains before ncnn lowering (ncnn target, in prepare).

Hugging Face's attention-mask code moves the [1, S] padding mask through a Flatten to [S, 1], a
Gather with the constant indices 0…S−1 (an identity along that axis) and a Reshape to
[1, 1, 1, S]. The middle values have a leading dimension ≠ 1, which ncnn's batch-less blobs cannot
hold, yet the chain only rearranges elements. This rewrite turns a Gather whose constant indices
are exactly 0…n−1 over an axis of size n into a Reshape to its output shape, then lets a Reshape /
Flatten / Squeeze / Unsqueeze whose input comes from another such node (read by nothing else) read
that node's input directly. The IR stays valid ONNX with the same numbers.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array

__all__ = ["fold_reshape_chains"]

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
    y.replace_all_uses_with(new_out)
    if y.is_graph_output():
        outs = g.outputs
        outs[[o is y for o in outs].index(True)] = new_out
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
    return changed

"""Give ncnn's batch-less blobs the batch axis back where an exporter flattened it into rows.

Transformer exports run their linear layers on [B·S, H] values: a Reshape [1, S, H] → [S, H] (or
[1, S, heads, d] → [S, heads·d]; a CRNN's sequence-first LSTM output [S, 1, H] → [S, H]), Gemms
and element-wise ops on rows, a Reshape back to [1, S, N]. ncnn blobs have no batch axis (an ONNX
[1, S, H] is the 2-D blob h=S, w=H), so the [S, H] rows look like a batch of S and are refused.
This rewrite (ncnn target, before quantization) finds each such region — entered through a flatten
Reshape, left only through Reshapes back to [1, S, N], made of Gemm with constant weights and
element-wise/point-wise ops — and lifts it to [1, S, ·]: the entry Reshape becomes an identity (the
exits read the same elements), each Gemm
a MatMul (+ Add of its bias), every value in between gains the leading 1. The IR stays valid ONNX
with the same numbers; ncnn then runs the MatMuls as InnerProduct over the blob's rows.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array

__all__ = ["lift_rows"]

_ROWWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Erf", "Relu", "Gelu", "Sigmoid", "Tanh", "Clip", "HardSwish",
    "HardSigmoid", "LeakyRelu", "Identity", "Dropout",
})


def _dims(v: ir.Value) -> list[int] | None:
    if v.shape is None or not all(isinstance(d, int) for d in v.shape):
        return None
    return [int(d) for d in v.shape]


def _is_act(v: ir.Value | None) -> bool:
    return v is not None and bool(v.name) and const_array(v) is None


def _region(y: ir.Value, rows: int):
    """(nodes, values, exit Reshapes) of the row region fed by ``y``, or None if it leaks."""
    nodes, values, exits, todo = [], {y.name: y}, [], [y]
    while todo:
        v = todo.pop()
        if v.is_graph_output():
            return None
        for node, _ in v.uses():
            if any(node is n for n in nodes) or any(node is e for e in exits):
                continue
            out = node.outputs[0]
            d = _dims(out)
            if node.op_type == "Reshape" and d is not None and len(d) >= 3 \
                    and d[:2] in ([1, rows], [rows, 1]) and int(np.prod(d)) == int(np.prod(_dims(v))):
                exits.append(node)  # back to [1, S, …] / [S, 1, …]: reads the lifted rows unchanged
                continue
            gemm_ok = node.op_type == "Gemm" and const_array(node.inputs[1]) is not None \
                and not node.attributes.get_int("transA", 0)
            if not (gemm_ok or (node.op_type in _ROWWISE and node.domain in ("", "ai.onnx",
                                                                             "com.microsoft"))):
                return None
            if any(_is_act(x) and x.name not in values for x in node.inputs):
                continue  # another input not reached yet: seen again from that one, or leaks
            if d is None or len(d) != 2 or d[0] != rows or len(node.outputs) != 1:
                return None
            nodes.append(node)
            values[out.name] = out
            todo.append(out)
    inside = {id(n) for n in (*nodes, *exits)}
    if any(id(u) not in inside for v in values.values() for u, _ in v.uses()):
        return None  # a reader that also reads from outside the region
    return nodes, values, exits


def _identity_shape(node: ir.Node, shape: list[int]) -> None:
    arr = np.asarray(shape, np.int64)
    name = f"{node.outputs[0].name}_shape"
    v = ir.Value(name=name, shape=ir.Shape([arr.size]), type=ir.TensorType(ir.DataType.INT64),
                 const_value=ir.tensor(arr, name=name))
    node.graph.register_initializer(v)
    node.replace_input_with(1, v)


def _gemm_to_matmul(node: ir.Node) -> None:
    """Gemm(x, W, c) on lifted rows → MatMul(x, W') then Add(c) (alpha/beta/transB folded)."""
    g = node.graph
    w = const_array(node.inputs[1]).astype(np.float32)
    w = (w.T if node.attributes.get_int("transB", 0) else w) * node.attributes.get_float(
        "alpha", 1.0)
    y = node.outputs[0]
    wname = f"{node.name or y.name}_w_rows"
    wv = ir.Value(name=wname, shape=ir.Shape(w.shape), type=ir.TensorType(ir.DataType.FLOAT),
                  const_value=ir.tensor(np.ascontiguousarray(w), name=wname))
    g.register_initializer(wv)
    c = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None \
        else None
    mm_out = ir.Value(name=f"{y.name}_mm" if c is not None else None, shape=y.shape,
                      type=y.type)
    mm = ir.Node("", "MatMul", [node.inputs[0], wv], outputs=[mm_out],
                 name=f"{node.name}_mm" if node.name else None)
    new = [mm]
    if c is not None:
        c = (c.astype(np.float32) * node.attributes.get_float("beta", 1.0)).reshape(-1)
        cname = f"{node.name or y.name}_bias_rows"
        cv = ir.Value(name=cname, shape=ir.Shape(c.shape), type=ir.TensorType(ir.DataType.FLOAT),
                      const_value=ir.tensor(c, name=cname))
        g.register_initializer(cv)
        add_out = ir.Value(shape=y.shape, type=y.type)
        new.append(ir.Node("", "Add", [mm_out, cv], outputs=[add_out],
                           name=f"{node.name}_bias" if node.name else None))
    last = new[-1].outputs[0]
    g.insert_after(node, new)
    y.replace_all_uses_with(last)
    name = y.name
    g.remove(node, safe=True)
    last.name = name


def lift_rows(model: ir.Model) -> int:
    """Lift every flattened-batch row region of ``model`` in place; how many were lifted."""
    lifted = 0
    for r in list(model.graph):
        if r.op_type != "Reshape" or r.graph is None:
            continue
        x, y = r.inputs[0], r.outputs[0]
        dx, dy = _dims(x), _dims(y)
        if dx is None or dy is None or len(dx) < 3 or 1 not in dx[:2] or \
                dy != [dx[0] * dx[1], int(np.prod(dx[2:]))]:
            continue  # not [1, S, …] (or an RNN's sequence-first [S, 1, …]) → [S, N]
        found = _region(y, dy[0])
        if found is None:
            continue
        nodes, values, exits = found
        for v in values.values():
            v.shape = ir.Shape([1, *_dims(v)])
        _identity_shape(r, [1, *dy])
        for n in nodes:
            if n.op_type == "Gemm":
                _gemm_to_matmul(n)
        lifted += 1
    return lifted

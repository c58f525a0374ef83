"""ncnn lowering of what a Hugging Face encoder does before and around its layers: token
embeddings, constant-index Gathers and the boolean attention-mask logic.

- ``Gather(table [V, H], ids)`` with ids a graph input of an integer type → ``Embed`` (0=H,
  1=V, 3=V·H). ncnn's Embed reads its bottom blob as int32, so that input is fed int32 data
  (``int32_inputs``); in INT8 the table is written int8 with one scale (int8_scale_term 2, as
  ncnn2int8 quantizes Embed).
- ``Gather`` with a constant scalar index or a constant ascending run of indices on a non-batch
  axis → ``Crop`` (+ ``Reshape`` where the rank changes), e.g. BERT's pooler taking token 0.
- ncnn blobs are float: a boolean is 0.0 / 1.0. ``Cast`` to BOOL of an integer value →
  min(|x|, 1) (exact for integers); casts between bool, integer and float values that keep the
  value are aliases; a float → integer cast (truncation) is refused. ``And`` → Mul, ``Or`` → Max,
  ``Not`` → 1 − x. ``Where(c, a, b)`` → c·(a − b) + b, or (1 − c)·b when a = 0, or c·a when b = 0;
  ±inf select constants become ±FLT_MAX (0·inf would be NaN in that arithmetic; exp(−FLT_MAX − m)
  is 0 just as exp(−inf) is, so a masked softmax is unchanged).
- ``Where(IsNaN(x), const, x)`` (HF's guard after a masked softmax) → x: ncnn has no NaN test, and
  a softmax of finite scores (the FLT_MAX mask above keeps them finite) is never NaN.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ir_reads import scalar
from autoglm_compress.targets.ncnn.blobs import dims_params, shape
from autoglm_compress.targets.ncnn.ops_math import binary
from autoglm_compress.targets.ncnn.rules import RULES

__all__ = ["int32_inputs"]

_FLT_MAX = float(np.finfo(np.float32).max)
_INTS = frozenset({
    ir.DataType.INT8, ir.DataType.INT16, ir.DataType.INT32, ir.DataType.INT64,
    ir.DataType.UINT8, ir.DataType.UINT16, ir.DataType.UINT32, ir.DataType.UINT64,
})
_FLOATS = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE,
                     ir.DataType.BFLOAT16})


def _is_embed(node: ir.Node) -> bool:
    table, ids = node.inputs[0], node.inputs[1]
    t = const_array(table)
    return (t is not None and t.ndim == 2 and node.attributes.get_int("axis", 0) == 0
            and ids.is_graph_input() and ids.dtype in _INTS)


def _index_run(node: ir.Node) -> tuple[int, int, int] | None:
    """(axis, start, stop) of a Gather with a constant scalar or ascending-by-one index run."""
    idx = const_array(node.inputs[1])
    if idx is None or const_array(node.inputs[0]) is not None:
        return None
    dims = shape(node.inputs[0])
    axis = node.attributes.get_int("axis", 0) % len(dims)
    flat = idx.reshape(-1).astype(np.int64)
    if flat.size == 0 or dims[axis] < 0:
        return None
    flat = np.where(flat < 0, flat + dims[axis], flat)
    if (np.diff(flat) != 1).any():
        return None
    return axis, int(flat[0]), int(flat[-1]) + 1


def _nan_guard(where: ir.Node) -> bool:
    """Where(IsNaN(x), const, x)."""
    c, a, b = where.inputs
    p = c.producer()
    return p is not None and p.op_type == "IsNaN" and p.inputs[0] is b \
        and const_array(a) is not None


def _check_gather(node: ir.Node) -> str | None:
    """An embedding lookup of int graph-input ids [1, S], or a constant scalar / ascending index
    run on a non-batch axis."""
    if _is_embed(node):
        ids = node.inputs[1]
        if len(shape(ids)) != 2:
            return "token ids must be [1, S] for ncnn's Embed"
        if any(u.op_type != "Gather" or not _is_embed(u) for u, _ in ids.uses()):
            return "an Embed's ids input (int32 in ncnn) is also read by other layers"
        return None
    run = _index_run(node)
    if run is None:
        return "Gather other than an embedding table lookup of int graph-input ids or a " \
               "constant scalar / ascending index run"
    if run[0] == 0:
        return "Gather on the batch axis"
    return None


def _check_cast(node: ir.Node) -> str | None:
    """Casts that keep the value (no float → integer/bool)."""
    src, to = node.inputs[0].dtype, node.attributes.get_int("to", 0)
    if src in _FLOATS and ir.DataType(to) not in _FLOATS:
        return "float → integer/bool cast (ncnn blobs are float)"
    return None


def _check_isnan(node: ir.Node) -> str | None:
    """Only as Where(IsNaN(x), c, x) (ncnn has no NaN test)."""
    if any(u.op_type != "Where" or not _nan_guard(u) for u, _ in node.outputs[0].uses()):
        return "IsNaN other than Where(IsNaN(x), c, x) (ncnn has no NaN test)"
    return None


def _check_where(node: ir.Node) -> str | None:
    """Infinite constants only as scalars."""
    for v in node.inputs[1:]:
        arr = const_array(v)
        if arr is not None and arr.size > 1 and not np.isfinite(arr).all():
            return "Where with non-scalar infinite constants"
    return None


def int32_inputs(graph: ir.Graph) -> list[str]:
    """Graph inputs ncnn reads as int32 (Embed ids)."""
    return [v.name for v in graph.inputs
            if any(u.op_type == "Gather" and _is_embed(u) for u, _ in v.uses())]


def _embed(lw, n: ir.Node) -> None:
    table = const_array(n.inputs[0]).astype(np.float32)
    v, h = table.shape
    p = {0: h, 1: v, 2: 0, 3: table.size}
    if lw.precision == "int8" and n.name not in lw.keep_float:
        amax = float(np.abs(table).max())
        scale = np.float32(127.0 / amax if amax > 0 else 1.0)
        q = np.clip(np.rint(table * scale), -127, 127).astype(np.int8)
        p[18] = 2
        weights = [("tagged", q.reshape(-1)), ("raw", np.asarray([scale], np.float32))]
        lw.int8_layers.append(n.name or "embed")
    else:
        weights = [lw.weight(table)]
        if lw.precision == "int8":
            lw.float_layers.append(n.name or "embed")
    lw.ng.add("Embed", n.name or "embed", [lw.b(n.inputs[1])], [lw.out(n.outputs[0])], p,
              weights)


def _gather_run(lw, n: ir.Node) -> None:
    axis, start, stop = _index_run(n)
    name = n.name or "gather"
    y = n.outputs[0]
    out_rank, in_rank = len(shape(y)), len(shape(n.inputs[0]))
    crop_out = lw.out(y) if out_rank == in_rank else lw.ng.unique(f"{y.name}_crop")
    lw.ng.add("Crop", name, [lw.b(n.inputs[0])], [crop_out],
              {9: [start], 10: [stop], 11: [axis - 1]})
    if out_rank != in_rank:
        lw.ng.add("Reshape", f"{name}_reshape", [crop_out], [lw.out(y)], dims_params(shape(y)))


def _binop(lw, name: str, a: str, out: str, op: int, scalar: float | None = None,
           b: str | None = None) -> None:
    p = {0: op, 1: 1, 2: scalar} if scalar is not None else {0: op}
    lw.ng.add("BinaryOp", name, [a] if b is None else [a, b], [out], p)


def _where(lw, n: ir.Node) -> None:
    c, a, b = n.inputs
    y = n.outputs[0]
    name = n.name or "where"
    if _nan_guard(n):
        lw.blob[y.name] = lw.b(b)
        return
    sa, sb = scalar(a, _FLT_MAX), scalar(b, _FLT_MAX)
    cb = lw.b(c)
    if sa is not None and sb is not None:
        if sa == 0.0:  # (1 − c)·b: no inf − inf, no 0·inf
            t = lw.ng.unique(f"{y.name}_not")
            _binop(lw, f"{name}_not", cb, t, 7, 1.0)
            _binop(lw, name, t, lw.out(y), 2, sb)
        elif sb == 0.0:
            _binop(lw, name, cb, lw.out(y), 2, sa)
        else:
            t = lw.ng.unique(f"{y.name}_scaled")
            _binop(lw, f"{name}_scale", cb, t, 2, sa - sb)
            _binop(lw, name, t, lw.out(y), 0, sb)
        return
    rank = len(shape(y))

    def operand(v):
        arr = const_array(v) if v.name not in lw.blob else None
        if arr is None:
            return lw.b(v)
        return lw.memory_data(np.clip(arr.astype(np.float32), -_FLT_MAX, _FLT_MAX), v.name, rank)

    d, t = lw.ng.unique(f"{y.name}_diff"), lw.ng.unique(f"{y.name}_sel")
    bb = operand(b)
    _binop(lw, f"{name}_diff", operand(a), d, 1, b=bb)
    _binop(lw, f"{name}_sel", d, t, 2, b=cb)
    _binop(lw, name, t, lw.out(y), 0, b=bb)


@RULES.rule("Gather", check=_check_gather)
def gather(lw, n: ir.Node) -> None:
    return _embed(lw, n) if _is_embed(n) else _gather_run(lw, n)


@RULES.rule("IsNaN", check=_check_isnan)
def isnan(lw, n: ir.Node) -> None:
    """Read only by the NaN guards, which alias their x."""


RULES.add("Where", lower=_where, check=_check_where)


@RULES.rule("Cast", check=_check_cast)
def cast(lw, n: ir.Node) -> None:
    y = n.outputs[0]
    src, to = n.inputs[0].dtype, ir.DataType(n.attributes.get_int("to", 0))
    if to == ir.DataType.BOOL and src != ir.DataType.BOOL:
        t = lw.ng.unique(f"{y.name}_abs")
        lw.ng.add("UnaryOp", f"{n.name or 'cast'}_abs", [lw.b(n.inputs[0])], [t], {0: 0})
        _binop(lw, n.name or "cast", t, lw.out(y), 5, 1.0)
    else:
        lw.blob[y.name] = lw.b(n.inputs[0])


@RULES.rule("Not")
def logical_not(lw, n: ir.Node) -> None:
    _binop(lw, n.name or "not", lw.b(n.inputs[0]), lw.out(n.outputs[0]), 7, 1.0)


@RULES.rule("And", "Or")
def logical(lw, n: ir.Node) -> None:
    binary(lw, n, {"And": 2, "Or": 4}[n.op_type])

"""ncnn rules for data movement: Concat, Reshape / Flatten / Squeeze / Unsqueeze, Crop (Slice),
Slice (Split), Permute (Transpose), Reduction, and the ops that are aliases of their input
(Identity, Dropout, the activation Q/DQ pairs of the INT8 IR: the conv quantizes its input).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ir_reads import input_or_none, ints, reduce_axes
from autoglm_compress.targets.ncnn.blobs import blob_shape, dims_params, permute_type, shape
from autoglm_compress.targets.ncnn.rules import RULES

_REDUCE = {"ReduceSum": 0, "ReduceMean": 3, "ReduceMax": 4, "ReduceMin": 5}


@RULES.rule("Concat")
def concat(lw, n: ir.Node) -> None:
    axis = n.attributes.get_int("axis", 0) % len(shape(n.outputs[0]))
    lw.ng.add("Concat", n.name or "concat", [lw.b(v) for v in n.inputs],
              [lw.out(n.outputs[0])], {0: axis - 1})


def _check_reshape(node: ir.Node) -> str | None:
    """At most 4-D blobs (5-D with the batch)."""
    return "ncnn blobs have at most 4 dimensions" if len(shape(node.outputs[0])) > 5 else None


@RULES.rule("Flatten", "Reshape", "Squeeze", "Unsqueeze", check=_check_reshape)
def reshape(lw, n: ir.Node) -> None:
    out = shape(n.outputs[0])
    if blob_shape(out) == blob_shape(shape(n.inputs[0])) and all(d > 0 for d in out):
        lw.blob[n.outputs[0].name] = lw.b(n.inputs[0])  # a no-op (a lifted row entry, [S, 1, I])
        return
    if n.op_type == "Flatten" and n.attributes.get_int("axis", 1) == 1:
        return lw.simple(n, "Flatten")
    return lw.simple(n, "Reshape", dims_params(out))


def _check_slice(node: ir.Node) -> str | None:
    """Constant starts/ends/axes, steps 1, not on the batch axis."""
    if any(const_array(v) is None for v in node.inputs[1:] if v is not None):
        return "Slice with non-constant starts/ends"
    sv, av = input_or_none(node, 4), input_or_none(node, 3)
    steps = const_array(sv) if sv is not None else None
    axes = const_array(av) if av is not None else np.arange(len(const_array(node.inputs[1])))
    rank = len(shape(node.inputs[0]))
    if (steps is not None and (steps != 1).any()) or any(int(a) % rank == 0 for a in axes):
        return "Slice with steps ≠ 1 or on the batch axis"
    return None


@RULES.rule("Slice", check=_check_slice)
def crop(lw, n: ir.Node) -> None:
    """ONNX Slice (steps 1) → ncnn Crop with starts/ends/axes arrays (axes without batch)."""
    full = shape(n.inputs[0])
    rank = len(full)
    starts, ends = const_array(n.inputs[1]), const_array(n.inputs[2])
    av = input_or_none(n, 3)
    axes = const_array(av) if av is not None else np.arange(len(starts))
    b, e, ax = [], [], []
    for a, s0, e0 in zip(axes, starts, ends):
        a = int(a) % rank
        dim = full[a]
        s0, e0 = int(s0), int(e0)
        b.append(min(max(s0 + dim if s0 < 0 else s0, 0), dim))
        e.append(min(max(e0 + dim if e0 < 0 else e0, 0), dim))
        ax.append(a - 1)
    lw.simple(n, "Crop", {9: b, 10: e, 11: ax})


def _check_split(node: ir.Node) -> str | None:
    """Not on the batch axis."""
    if node.attributes.get_int("axis", 0) % max(len(shape(node.inputs[0])), 1) == 0:
        return "Split on the batch axis"
    return None


@RULES.rule("Split", check=_check_split)
def split(lw, n: ir.Node) -> None:
    axis = n.attributes.get_int("axis", 0) % len(shape(n.inputs[0]))
    sizes = [shape(o)[axis] for o in n.outputs]
    lw.ng.add("Slice", n.name or "split", [lw.b(n.inputs[0])], [lw.out(o) for o in n.outputs],
              {0: sizes, 1: axis - 1})


def _perm(node: ir.Node) -> list[int]:
    return ints(node, "perm", reversed(range(len(shape(node.inputs[0])))))


def _check_transpose(node: ir.Node) -> str | None:
    """Of the non-batch axes of a 3-D/4-D tensor."""
    if _perm(node)[0] != 0 or len(shape(node.inputs[0])) not in (3, 4):
        return "Transpose other than of the non-batch axes of a 3-D/4-D tensor"
    return None


@RULES.rule("Transpose", check=_check_transpose)
def transpose(lw, n: ir.Node) -> None:
    lw.simple(n, "Permute", {0: permute_type(_perm(n))})


def _check_reduce(node: ir.Node) -> str | None:
    """Constant axes, not over the batch axis."""
    axes = reduce_axes(node, len(shape(node.inputs[0])))
    if axes is None or 0 in axes:
        return "reduction over the batch axis or with non-constant axes"
    return None


@RULES.rule(*_REDUCE, check=_check_reduce)
def reduction(lw, n: ir.Node) -> None:
    axes = reduce_axes(n, len(shape(n.inputs[0])))
    lw.simple(n, "Reduction", {0: _REDUCE[n.op_type], 1: 0, 2: 1.0, 3: [a - 1 for a in axes],
                               4: n.attributes.get_int("keepdims", 1), 5: 1})


@RULES.rule("Identity", "Dropout")
def alias(lw, n: ir.Node) -> None:
    lw.blob[n.outputs[0].name] = lw.b(n.inputs[0])


@RULES.rule("Constant")
def constant(lw, n: ir.Node) -> None:
    """Read by the layers that use it (MemoryData or a parameter)."""


@RULES.rule("QuantizeLinear", "DequantizeLinear", internal=True)
def qdq(lw, n: ir.Node) -> None:
    """An activation's Q/DQ: the float blob (the int8 conv quantizes it); a weight's: read by the
    conv through ``int8_parts``."""
    x = n.inputs[0]
    if x.name in lw.blob:
        lw.blob[n.outputs[0].name] = lw.blob[x.name]

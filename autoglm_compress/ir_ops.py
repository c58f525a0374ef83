"""IR facts per op, as one table: where a weighted op keeps its weight and bias and which weight
axes index its output and input channels. Every pass that touches weights reads them from here
(quantization, bias correction, calibration channel statistics, SmoothQuant, equalization, QAT,
TensorRT rule checks, and next pruning).

Layouts (ONNX operator spec), ``g`` = the ``group`` attribute:

=============  ==========================  ======  =====  =====  ====================
op             weight W                    W idx   out    in     activation channel
=============  ==========================  ======  =====  =====  ====================
Conv           [C_out, C_in/g, k…]         1       0      1      1 (NC…)
ConvTranspose  [C_in, C_out/g, k…]         1       1      0      1 (NC…)
Gemm           [K, N]; transB=1: [N, K]    1       1 / 0  0 / 1  -1; transA=1: 0
MatMul         [… , K, N]                  1       -1     -2     -1
=============  ==========================  ======  =====  =====  ====================

Bias: input 2 of Conv / ConvTranspose / Gemm (Gemm's ``C``, broadcast to [M, N]); MatMul has none.
Negative axes count from the end of the weight's shape. With groups the channel axis of a weight
holds one group's share: a Conv weight's axis 1 has C_in/g entries and a ConvTranspose weight's
axis 1 has C_out/g; :func:`out_channels` / :func:`in_channels` return the full counts
(``W.shape[axis] · g`` for the grouped axis). The table is data; the functions only add the
attribute-dependent rules (Gemm's transA/transB, groups, negative axes).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

__all__ = [
    "WEIGHTED_OPS",
    "WeightedOp",
    "activation_channel_axis",
    "bias_input",
    "bias_value",
    "trailing_bias",
    "const_array",
    "groups",
    "in_channel_axis",
    "in_channels",
    "is_weighted",
    "out_channel_axis",
    "out_channels",
    "weight_input",
    "weight_value",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WeightedOp:
    """Where ``op`` keeps its weight/bias and which weight axes are its output/input channels."""

    weight: int  # input index of the weight
    bias: int | None  # input index of the bias, None when the op has none
    out_axis: int  # weight axis of the output channels (negative: from the end)
    in_axis: int  # weight axis of the input channels
    act_axis: int  # channel axis of the activation input 0
    swap_axes_attr: str | None = None  # int attribute that, when 1, swaps out_axis and in_axis
    swap_act_attr: str | None = None  # int attribute that, when 1, moves act_axis to 0
    grouped_axis: int | None = None  # weight axis holding one group's share of its channels


WEIGHTED_OPS: dict[str, WeightedOp] = {
    "Conv": WeightedOp(weight=1, bias=2, out_axis=0, in_axis=1, act_axis=1, grouped_axis=1),
    "ConvTranspose": WeightedOp(
        weight=1, bias=2, out_axis=1, in_axis=0, act_axis=1, grouped_axis=1
    ),
    "Gemm": WeightedOp(
        weight=1,
        bias=2,
        out_axis=1,
        in_axis=0,
        act_axis=-1,
        swap_axes_attr="transB",
        swap_act_attr="transA",
    ),
    "MatMul": WeightedOp(weight=1, bias=None, out_axis=-1, in_axis=-2, act_axis=-1),
}


def is_weighted(node: ir.Node) -> bool:
    """True for ops of the table (the default ONNX domain only)."""
    return node.op_type in WEIGHTED_OPS and node.domain in ("", "ai.onnx")


def _spec(node: ir.Node) -> WeightedOp:
    if not is_weighted(node):
        raise KeyError(f"{node.op_type} (node {node.name!r}) is not a weighted op")
    return WEIGHTED_OPS[node.op_type]


def weight_input(node: ir.Node) -> int:
    """Input index of ``node``'s weight."""
    return _spec(node).weight


def bias_input(node: ir.Node) -> int | None:
    """Input index of ``node``'s bias, or None when the op has no bias input."""
    return _spec(node).bias


def weight_value(node: ir.Node) -> ir.Value | None:
    """The value connected to the weight input (None when absent)."""
    idx = weight_input(node)
    return node.inputs[idx] if len(node.inputs) > idx else None


def bias_value(node: ir.Node) -> ir.Value | None:
    """The value connected to the bias input (None when the op has none or it is absent)."""
    idx = bias_input(node)
    return node.inputs[idx] if idx is not None and len(node.inputs) > idx else None


def trailing_bias(node: ir.Node) -> tuple[ir.Node, int, np.ndarray] | None:
    """(Add, its constant input's index, the constant as a vector) when ``node``'s output is read
    only by an Add of a constant vector over the last axis — a MatMul's bias as exporters write
    it; None otherwise."""
    y = node.outputs[0]
    uses = list(y.uses())
    if len(uses) != 1 or y.is_graph_output() or uses[0][0].op_type != "Add":
        return None
    add, idx = uses[0][0], 1 - uses[0][1]
    c = const_array(add.inputs[idx])
    if c is None or c.size == 0 or c.reshape(-1).size != c.shape[-1]:
        return None
    return add, idx, c.reshape(-1)


def _weight_rank(node: ir.Node, rank: int | None) -> int:
    """``rank``, else the weight's (constant or typed) rank, else 2 (the smallest weight rank)."""
    if rank is not None:
        return rank
    w = weight_value(node)
    arr = const_array(w)
    if arr is not None:
        return arr.ndim
    if w is not None and w.shape is not None:
        return w.shape.rank()
    return 2


def _swapped(node: ir.Node, attr: str | None) -> bool:
    return attr is not None and bool(node.attributes.get_int(attr, 0))


def out_channel_axis(node: ir.Node, rank: int | None = None) -> int:
    """Non-negative weight axis of the output channels (``rank``: the weight's, when known)."""
    s = _spec(node)
    axis = s.in_axis if _swapped(node, s.swap_axes_attr) else s.out_axis
    return axis % _weight_rank(node, rank)


def in_channel_axis(node: ir.Node, rank: int | None = None) -> int:
    """Non-negative weight axis of the input channels (one group's share for grouped convs)."""
    s = _spec(node)
    axis = s.out_axis if _swapped(node, s.swap_axes_attr) else s.in_axis
    return axis % _weight_rank(node, rank)


def activation_channel_axis(node: ir.Node) -> int:
    """Channel axis of the activation input 0: 1 for NC… convs, -1 (last) for Gemm/MatMul rows,
    0 for Gemm with transA=1 (A is [K, M]). Negative axes count from the end."""
    s = _spec(node)
    return 0 if _swapped(node, s.swap_act_attr) else s.act_axis


def groups(node: ir.Node) -> int:
    """The ``group`` attribute of a grouped op (Conv/ConvTranspose), 1 otherwise."""
    return node.attributes.get_int("group", 1) if _spec(node).grouped_axis is not None else 1


def _channels(node: ir.Node, shape, axis: int) -> int:
    grouped = _spec(node).grouped_axis
    n = int(shape[axis])
    return n * groups(node) if grouped is not None and axis == grouped % len(shape) else n


def out_channels(node: ir.Node, weight_shape) -> int:
    """Number of output channels given the weight's shape (ConvTranspose: C_out/g · g)."""
    return _channels(node, weight_shape, out_channel_axis(node, len(weight_shape)))


def in_channels(node: ir.Node, weight_shape) -> int:
    """Number of input channels given the weight's shape (Conv: C_in/g · g)."""
    return _channels(node, weight_shape, in_channel_axis(node, len(weight_shape)))


def const_array(v: ir.Value | None) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output (``value``, ``value_float(s)``,
    ``value_int(s)``), else None."""
    if v is None:
        return None
    if v.const_value is not None:
        return v.const_value.numpy()
    p = v.producer()
    if p is None or p.op_type != "Constant":
        return None
    if "value" in p.attributes:
        return p.attributes["value"].as_tensor().numpy()
    for key, read, dtype in _CONSTANT_ATTRS:
        if key in p.attributes:
            return np.array(read(p.attributes[key]), dtype)
    return None


_CONSTANT_ATTRS = (
    ("value_float", lambda a: a.as_float(), np.float32),
    ("value_floats", lambda a: a.as_floats(), np.float32),
    ("value_int", lambda a: a.as_int(), np.int64),
    ("value_ints", lambda a: a.as_ints(), np.int64),
)

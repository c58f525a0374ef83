"""Reading QDQ back out of an IR: the quantization parameters around each compute node.

Beside the writer (:mod:`.qdq`): emitters that express int8 natively (TFLite, ncnn) need, for each
op, the affine parameters of what it reads and what it writes. Works on our QDQ graphs and on any
graph with ``QuantizeLinear``/``DequantizeLinear`` pairs (onnxruntime's quantizer, TensorRT's
exporters). Semantics (ONNX): ``DequantizeLinear(q, s, z)`` gives ``x̂ = (q − z) · s``, with ``s``
and ``z`` 0-d (per tensor) or 1-d along ``axis`` (per channel; default axis 1, negative counts
from the end); a missing ``z`` is 0 of uint8.

* An **input** ``i`` of a compute node is quantized when its producer is a ``DequantizeLinear``:
  its :class:`QParams` are that DQ's scale, zero point, dtype (of the integer tensor) and axis,
  plus the integer array itself when the DQ reads a constant (weights, int32 biases).
* An **output** ``j`` is quantized when a ``QuantizeLinear`` reads it, directly or after one fused
  activation (``Relu``/``Clip`` reading it alone, the writer's Conv→Relu→Q): the Q's parameters.
* A compute node **runs in int8** when every float activation input (not a constant) comes through a
  DQ and, for a weighted op (:mod:`autoglm_compress.ir_ops`), so does its weight; constants of other
  ops, integer inputs (shapes, indices) and biases do not decide it. A Relu/Clip that alone reads
  an int8 node's output is fused into it (int8). Nodes without any float activation input (shape
  arithmetic) are neither int8 nor float compute.

Block quantization (``block_size``, opset 21) is not read: such a node raises UnsupportedOpError.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.errors import UnsupportedOpError
from autoglm_compress.ir_ops import const_array, is_weighted, weight_input

__all__ = ["Int8Split", "NodeQuant", "QParams", "int8_split", "read_qdq", "read_qparams"]

logger = logging.getLogger(__name__)
_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
_NOT_COMPUTE = _QDQ | {"Constant"}
_FUSED = frozenset({"Relu", "Clip"})
_FLOAT = frozenset(
    {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
)
_DTYPE_NAMES = {
    ir.DataType.INT8: "int8",
    ir.DataType.UINT8: "uint8",
    ir.DataType.INT16: "int16",
    ir.DataType.UINT16: "uint16",
    ir.DataType.INT32: "int32",
}


@dataclasses.dataclass(frozen=True)
class QParams:
    """Affine parameters of one quantized tensor: x̂ = (q − zero_point) · scale."""

    scale: np.ndarray  # float32; 0-d per tensor, 1-d per channel
    zero_point: np.ndarray  # integer, shaped like ``scale``
    dtype: str  # of the integer tensor: "int8", "uint8", "int32", ...
    axis: int | None  # non-negative channel axis of the tensor; None per tensor
    node: str  # the Q/DQ node they were read from
    quantized: np.ndarray | None = None  # the integer array, when the DQ reads a constant

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def dequantize(self) -> np.ndarray | None:
        """x̂ of the constant integer array (None for activations)."""
        if self.quantized is None:
            return None
        shape = [1] * self.quantized.ndim
        if self.axis is not None:
            shape[self.axis] = -1
        z = self.zero_point.astype(np.float64).reshape(shape if self.axis is not None else ())
        s = self.scale.astype(np.float64).reshape(shape if self.axis is not None else ())
        return ((self.quantized.astype(np.float64) - z) * s).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class NodeQuant:
    """What surrounds one compute node: its quantized inputs and outputs, by index."""

    node: str
    op_type: str
    inputs: dict[int, QParams]
    outputs: dict[int, QParams]
    int8: bool  # runs in int8 (see the module docstring)
    float_inputs: tuple[int, ...]  # float activation inputs that are not DQ'd


@dataclasses.dataclass(frozen=True)
class Int8Split:
    """Compute nodes by where they run: names, in graph order."""

    int8: list[str]
    float: list[str]

    def as_dict(self) -> dict:
        return {"int8": len(self.int8), "float": len(self.float), "float_nodes": self.float}


def read_qparams(node: ir.Node) -> QParams | None:
    """Scale/zero point/dtype/axis of a Q or DQ node (None when its scale is not a constant)."""
    if node.attributes.get_int("block_size", 0):
        raise UnsupportedOpError(
            node.op_type,
            node.name or "?",
            "the QDQ reader",
            "block quantization is not read; re-export with per-tensor or per-channel scales",
        )
    scale = const_array(node.inputs[1])
    if scale is None:
        return None
    zp_v = node.inputs[2] if len(node.inputs) > 2 else None
    zp = const_array(zp_v)
    if zp_v is not None and zp is None:
        return None
    q = const_array(node.inputs[0]) if node.op_type == "DequantizeLinear" else None
    dtype = _int_dtype(node, q, zp)
    zp = np.zeros(scale.shape, np.dtype(dtype)) if zp is None else zp  # ONNX: absent z is 0
    return QParams(
        scale=np.asarray(scale, np.float32),
        zero_point=np.asarray(zp),
        dtype=dtype,
        axis=_axis(node, scale),
        node=node.name or "",
        quantized=q,
    )


def _int_dtype(node: ir.Node, q: np.ndarray | None, zp: np.ndarray | None) -> str:
    if q is not None:
        return str(q.dtype)
    if zp is not None:
        return str(zp.dtype)
    v = node.inputs[0] if node.op_type == "DequantizeLinear" else node.outputs[0]
    if v.dtype in _DTYPE_NAMES:
        return _DTYPE_NAMES[v.dtype]
    attr = node.attributes.get_int("output_dtype", 0) if node.op_type == "QuantizeLinear" else 0
    return _DTYPE_NAMES.get(ir.DataType(attr), "uint8") if attr else "uint8"


def _axis(node: ir.Node, scale: np.ndarray) -> int | None:
    if scale.ndim == 0:
        return None
    ref = node.inputs[0]  # the integer tensor (DQ) or the float one (Q): same shape
    arr = const_array(ref)
    rank = arr.ndim if arr is not None else (ref.shape.rank() if ref.shape is not None else None)
    axis = node.attributes.get_int("axis", 1)
    return axis % rank if rank else axis


def _input_qparams(v: ir.Value | None) -> QParams | None:
    p = v.producer() if v is not None else None
    return read_qparams(p) if p is not None and p.op_type == "DequantizeLinear" else None


def _output_qparams(y: ir.Value) -> QParams | None:
    """Q reading ``y``, or reading the output of a lone fused activation of ``y``."""
    for value in (y, _fused(y)):
        if value is None:
            continue
        for user, _ in ((u[0], u[1]) for u in value.uses()):
            if user.op_type == "QuantizeLinear" and user.inputs[0] is value:
                return read_qparams(user)
    return None


def _fused(y: ir.Value) -> ir.Value | None:
    uses = list(y.uses())
    if len(uses) == 1 and not y.is_graph_output() and uses[0][0].op_type in _FUSED:
        return uses[0][0].outputs[0]
    return None


def _is_activation(v: ir.Value | None) -> bool:
    """A float tensor computed at run time (not a constant, not an integer shape/index)."""
    if v is None or const_array(v) is not None:
        return False
    p = v.producer()
    if p is not None and p.op_type == "DequantizeLinear":
        return True
    return v.dtype in _FLOAT or v.dtype is None


def _node_quant(node: ir.Node) -> NodeQuant:
    inputs = {i: q for i, v in enumerate(node.inputs) if (q := _input_qparams(v)) is not None}
    outputs = {j: q for j, y in enumerate(node.outputs) if (q := _output_qparams(y)) is not None}
    acts = [i for i, v in enumerate(node.inputs) if _is_activation(v)]
    float_inputs = tuple(i for i in acts if i not in inputs)
    needed = set(acts)
    if is_weighted(node) and len(node.inputs) > weight_input(node):
        needed.add(weight_input(node))
    int8 = bool(acts) and needed <= set(inputs)
    return NodeQuant(node.name or "", node.op_type, inputs, outputs, int8, float_inputs)


def read_qdq(model: ir.Model | ir.Graph) -> dict[str, NodeQuant]:
    """Node name -> :class:`NodeQuant` for every compute node (not Q/DQ/Constant), graph order."""
    g = model.graph if isinstance(model, ir.Model) else model
    out: dict[str, NodeQuant] = {}
    by_node: dict[int, NodeQuant] = {}
    for i, node in enumerate(g):
        if node.op_type in _NOT_COMPUTE:
            continue
        nq = _node_quant(node)
        if not nq.int8 and _fused_into_int8(node, by_node):
            nq = dataclasses.replace(nq, int8=True, float_inputs=())
        out[node.name or f"{node.op_type}_{i}"] = by_node[id(node)] = nq
    return out


def _fused_into_int8(node: ir.Node, seen: dict[int, NodeQuant]) -> bool:
    """A Relu/Clip that is the only reader of an int8 node's output runs fused into it."""
    x = node.inputs[0] if node.op_type in _FUSED and node.inputs else None
    p = x.producer() if x is not None else None
    if p is None or id(p) not in seen or not seen[id(p)].int8 or x.is_graph_output():
        return False
    return len(list(x.uses())) == 1


def int8_split(model: ir.Model | ir.Graph) -> Int8Split:
    """Compute nodes that run in int8 (activations and weight DQ'd) and those that run in float
    (a float activation input, or a weighted op's weight, not DQ'd)."""
    nodes = read_qdq(model)
    int8 = [name for name, nq in nodes.items() if nq.int8]
    flt = [name for name, nq in nodes.items() if not nq.int8 and _has_float_compute(nq)]
    return Int8Split(int8, flt)


def _has_float_compute(nq: NodeQuant) -> bool:
    return bool(nq.float_inputs) or bool(nq.inputs)

"""ncnn rules for element-wise math and activations: BinaryOp, Eltwise, UnaryOp, ReLU, Clip,
Sigmoid / Swish, TanH, HardSwish, HardSigmoid, ELU, GELU, PReLU.

A Relu / Clip / LeakyRelu / Sigmoid / HardSwish read only by a conv or FC is fused into it
(:func:`fuse_code`: 9=activation_type, 10=params); x·sigmoid(x) becomes one Swish.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ir_reads import clip_bounds
from autoglm_compress.targets.ncnn.blobs import shape
from autoglm_compress.targets.ncnn.rules import RULES

BINARY = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Max": 4, "Min": 5, "Pow": 6}
_REVERSED = {1: 7, 3: 8, 6: 9}  # const − x → rsub, const / x → rdiv, const ^ x → rpow
# ONNX element-wise math → ncnn UnaryOp op_type (src/layer/unaryop.h)
UNARY = {"Abs": 0, "Neg": 1, "Floor": 2, "Ceil": 3, "Sqrt": 5, "Exp": 7, "Log": 8, "Sin": 9,
         "Cos": 10, "Tan": 11, "Asin": 12, "Acos": 13, "Atan": 14, "Reciprocal": 15,
         "Sign": 20}
# ONNX's variadic element-wise ops → ncnn Eltwise (op_type 1 = sum with coefficients, 2 = max)
_ELTWISE = {"Sum": 1, "Mean": 1, "Max": 2}
_MAX_RANK = "ncnn blobs have at most 4 dimensions"


def is_eltwise(node: ir.Node) -> bool:
    """Sum / Mean (any arity), Max over more than two inputs: one ncnn Eltwise."""
    return node.op_type in ("Sum", "Mean") or (node.op_type == "Max" and len(node.inputs) > 2)


def fuse_code(node: ir.Node) -> tuple[int, list[float]] | None:
    """ncnn's fused activation (type, params) for ``node``, None when it has none."""
    op = node.op_type
    if op == "Relu":
        return 1, []
    if op == "LeakyRelu":
        return 2, [node.attributes.get_float("alpha", 0.01)]
    if op == "Clip":
        lo, hi = clip_bounds(node)
        return 3, [lo if lo is not None else -3.4e38, hi if hi is not None else 3.4e38]
    if op == "Sigmoid":
        return 4, []
    if op == "HardSwish":
        return 6, [1.0 / 6.0, 0.5]
    return None


# -- binary and variadic ----------------------------------------------------------------------

def _check_binary(node: ir.Node) -> str | None:
    """At most 4-D blobs (5-D with the batch)."""
    return _MAX_RANK if len(shape(node.outputs[0])) > 5 else None


def _check_eltwise(node: ir.Node) -> str | None:
    """Activations of one shape: no broadcast, no constants."""
    if any(v is None or v.const_value is not None or shape(v) != shape(node.outputs[0])
           for v in node.inputs):
        return "ncnn Eltwise needs activations of one shape (no broadcast, no constants)"
    return None


def _check_max(node: ir.Node) -> str | None:
    """Two inputs at most 4-D, or more inputs of one shape (Eltwise)."""
    return _check_eltwise(node) if is_eltwise(node) else _check_binary(node)


def _check_min(node: ir.Node) -> str | None:
    """Two inputs, at most 4-D."""
    if len(node.inputs) != 2:
        return "ncnn has no Eltwise min over more than two inputs"
    return _check_binary(node)


FP16_MAX = 65504.0  # the largest finite float16


def _scalar(arr, op: int) -> float:
    """A scalar operand as BinaryOp's parameter. An Add/Sub/Mul scalar beyond float16's range
    (attention masks written as ``(1 − m) · −3.4e38``) is clamped to ±65504: ncnn on ARM stores
    blobs in fp16 by default, where it becomes ±inf and the softmax after it NaN; as an additive
    mask −65504 removes a score exactly as −3.4e38 does (exp underflows to 0 either way)."""
    x = float(arr.reshape(-1)[0])
    if op in (BINARY["Add"], BINARY["Sub"], BINARY["Mul"]) and abs(x) > FP16_MAX:
        return FP16_MAX if x > 0 else -FP16_MAX
    return x


def binary(lw, n: ir.Node, op: int | None = None) -> None:
    """One BinaryOp (a scalar constant operand as its parameter, others as MemoryData)."""
    if n.op_type == "Pow" and _power(lw, n):
        return
    op = BINARY[n.op_type] if op is None else op
    a, c = n.inputs
    rank = len(shape(n.outputs[0]))
    ca = const_array(a) if a.name not in lw.blob else None
    cc = const_array(c) if c.name not in lw.blob else None
    if cc is not None and cc.size == 1:
        ins, p = [lw.b(a)], {0: op, 1: 1, 2: _scalar(cc, op)}
    elif ca is not None and ca.size == 1:
        ins, p = [lw.b(c)], {0: _REVERSED.get(op, op), 1: 1, 2: _scalar(ca, op)}
    else:
        ins = [lw.memory_data(arr, v.name, rank) if arr is not None else lw.b(v)
               for v, arr in ((a, ca), (c, cc))]
        p = {0: op}
    lw.ng.add("BinaryOp", n.name or "binary", ins, [lw.out(n.outputs[0])], p)


def _power(lw, n: ir.Node) -> bool:
    """x^2 → UnaryOp square, x^0.5 → sqrt, x^−1 → reciprocal, x^1 → x: ncnn's SIMD pow is
    exp(y·log x), NaN for a negative base (a decomposed LayerNorm squares x − mean)."""
    e = const_array(n.inputs[1]) if n.inputs[1].name not in lw.blob else None
    if e is None or e.size != 1:
        return False
    code = {2.0: 4, 0.5: 5, -1.0: 15}.get(float(e.reshape(-1)[0]))
    if float(e.reshape(-1)[0]) == 1.0:
        lw.blob[n.outputs[0].name] = lw.b(n.inputs[0])
        return True
    if code is None:
        return False
    lw.simple(n, "UnaryOp", {0: code})
    return True


def eltwise(lw, n: ir.Node) -> None:
    k = len(n.inputs)
    p = {0: _ELTWISE[n.op_type]}
    if n.op_type == "Mean":
        p[1] = [1.0 / k] * k
    lw.ng.add("Eltwise", n.name or "eltwise", [lw.b(v) for v in n.inputs],
              [lw.out(n.outputs[0])], p)


RULES.add("Add", "Sub", "Mul", "Div", "Pow", lower=binary, check=_check_binary)
RULES.add("Min", lower=binary, check=_check_min)
RULES.add("Sum", "Mean", lower=eltwise, check=_check_eltwise)


@RULES.rule("Max", check=_check_max)
def maximum(lw, n: ir.Node) -> None:
    return eltwise(lw, n) if is_eltwise(n) else binary(lw, n)


# -- unary and activations --------------------------------------------------------------------

@RULES.rule(*UNARY)
def unary(lw, n: ir.Node) -> None:
    lw.simple(n, "UnaryOp", {0: UNARY[n.op_type]})


@RULES.rule("Relu", "LeakyRelu")
def relu(lw, n: ir.Node) -> None:
    lw.simple(n, "ReLU", {0: n.attributes.get_float("alpha", 0.01)}
              if n.op_type == "LeakyRelu" else None)


def _check_clip(node: ir.Node) -> str | None:
    """Constant bounds."""
    if any(v is not None and v.name and const_array(v) is None for v in node.inputs[1:3]):
        return "Clip with non-constant bounds"
    return None


@RULES.rule("Clip", check=_check_clip)
def clip(lw, n: ir.Node) -> None:
    lo, hi = clip_bounds(n)
    lw.simple(n, "Clip", {0: lo if lo is not None else -3.4e38,
                          1: hi if hi is not None else 3.4e38})


@RULES.rule("Sigmoid")
def sigmoid(lw, n: ir.Node) -> None:
    mul = lw.swish_of(n)
    if mul is None:
        return lw.simple(n, "Sigmoid")
    lw.fused.add(id(mul))
    lw.ng.add("Swish", n.name or "swish", [lw.b(n.inputs[0])], [lw.out(mul.outputs[0])])


@RULES.rule("Tanh")
def tanh(lw, n: ir.Node) -> None:
    lw.simple(n, "TanH")


@RULES.rule("HardSwish")
def hard_swish(lw, n: ir.Node) -> None:
    lw.simple(n, "HardSwish", {0: 1.0 / 6.0, 1: 0.5})


@RULES.rule("HardSigmoid")
def hard_sigmoid(lw, n: ir.Node) -> None:
    lw.simple(n, "HardSigmoid", {0: n.attributes.get_float("alpha", 0.2),
                                 1: n.attributes.get_float("beta", 0.5)})


@RULES.rule("Elu")
def elu(lw, n: ir.Node) -> None:
    lw.simple(n, "ELU", {0: n.attributes.get_float("alpha", 1.0)})


@RULES.rule("Gelu", domains=("", "com.microsoft"))
def gelu(lw, n: ir.Node) -> None:
    lw.simple(n, "GELU")


def _check_erf(node: ir.Node) -> str | None:
    """Only inside an exact GELU (written as one GELU layer)."""
    from autoglm_compress.passes.fuse_gelu import match_gelu

    return None if match_gelu(node) else "Erf outside a GELU (ncnn has GELU, not Erf)"


@RULES.rule("Erf", check=_check_erf)
def erf(lw, n: ir.Node) -> None:
    from autoglm_compress.errors import UnsupportedOpError

    # the target's prepare passes (fuse_gelu) turn every GELU's Erf into a Gelu node
    raise UnsupportedOpError("Erf", n.name or "?", "ncnn", "a GELU's Erf reached the emitter "
                             "unfused: run the fuse_gelu pass first (prepare_passes)")


@RULES.rule("PRelu")
def prelu(lw, n: ir.Node) -> None:
    slope = const_array(n.inputs[1]).astype(np.float32).reshape(-1)
    lw.simple(n, "PReLU", {0: slope.size}, [("raw", slope)])

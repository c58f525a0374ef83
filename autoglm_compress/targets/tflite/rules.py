"""The TFLite emitter's lowering rules: one per ONNX op (or group of ops written by the same code).

Each rule writes its node through the lowerer ``lw`` (lower.py's ``_Lowerer``: ``lw.conv(n)``,
``lw.pool(n)``, …); its check says why a particular node cannot be written (None: it can), and the
check's docstring's first line is the condition (``RULES.table()``). What the arm target supports —
its ``lowering.toml`` table, ``unsupported_reason`` and the dispatch — is generated from
``RULES``. The sequence and spatial ops (lower_seq.py, lower_spatial.py) have theirs in
rules_seq.py.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ir_reads import dims, ints, wconst
from autoglm_compress.targets.rules import RuleSet

__all__ = ["RULES", "UNARY", "BINARY", "method", "resize_mode"]

RULES = RuleSet("TFLite")


def method(name: str):
    """The rule's lowering ``lw.<name>(n)``: a method of the lowerer (lower.py's _Lowerer or its
    mixins)."""
    def lower(lw, n: ir.Node) -> None:
        getattr(lw, name)(n)

    lower.__name__ = lower.__qualname__ = name
    return lower


# ONNX op → TFLite builtin (BINARY: and its options type)
UNARY = {"Relu": 19, "Sigmoid": 14, "Tanh": 28, "HardSwish": 117, "Exp": 47, "Sqrt": 75,
         "Abs": 101, "Neg": 59, "Floor": 8}
BINARY = {"Add": (0, 11), "Sub": (41, 28), "Mul": (18, 21), "Div": (42, 29),
          "Max": (55, 0), "Min": (57, 0), "Pow": (78, 0)}


def resize_mode(node: ir.Node) -> tuple[tuple[int, bool, bool] | None, str | None]:
    """((builtin, align_corners, half_pixel_centers), None) or (None, why)."""
    mode = node.attributes.get_string("mode", "nearest")
    ct = node.attributes.get_string("coordinate_transformation_mode", "half_pixel")
    nearest = node.attributes.get_string("nearest_mode", "round_prefer_floor")
    if len(dims(node.outputs[0], 1)) != 4:
        return None, "only 4-D (NCHW) resizes"
    if mode == "nearest" and ct == "asymmetric" and nearest == "floor":
        return (97, False, False), None
    if mode == "nearest" and ct in ("half_pixel", "pytorch_half_pixel") and nearest == "round_prefer_ceil":
        return (97, False, True), None
    if mode == "linear" and ct in ("half_pixel", "pytorch_half_pixel"):
        return (23, False, True), None
    if mode == "linear" and ct == "align_corners":
        return (23, True, False), None
    return None, f"Resize mode {mode}/{ct}/{nearest} has no TFLite equivalent"


# -- convolution, fully connected, pooling ------------------------------------------------------
def check_conv(n: ir.Node) -> str | None:
    """2-D convolutions with constant weights; depthwise or ungrouped."""
    w = wconst(n.inputs[1])
    if w is None or w.ndim != 4:
        return "only 2-D convolutions with constant weights"
    g = n.attributes.get_int("group", 1)
    cin = w.shape[1] * g
    if g != 1 and not (g == cin and w.shape[1] == 1):
        return "grouped (non-depthwise) convolution"
    return None


RULES.add("Conv", lower=method("conv"), check=check_conv)


def check_gemm(n: ir.Node) -> str | None:
    """Constant weight, no transA, alpha 1 (FULLY_CONNECTED)."""
    if n.attributes.get_int("transA", 0) or n.attributes.get_float("alpha", 1.0) != 1.0:
        return "Gemm with transA or alpha ≠ 1"
    if wconst(n.inputs[1]) is None:
        return "Gemm with a non-constant weight"
    return None


RULES.add("Gemm", lower=method("gemm"), check=check_gemm)

# A constant 2-D weight → FULLY_CONNECTED, else BATCH_MATMUL.
RULES.add("MatMul", lower=method("matmul"))


def check_max_pool(n: ir.Node) -> str | None:
    """ceil_mode only where the output size is known (the end is padded to reach it)."""
    if n.attributes.get_int("ceil_mode", 0) and any(
            not isinstance(d, int) for d in (n.outputs[0].shape or [None])):
        return "ceil_mode max pooling with unknown output size"
    return None


def check_average_pool(n: ir.Node) -> str | None:
    """No ceil_mode."""
    if n.attributes.get_int("ceil_mode", 0):
        return "ceil_mode average pooling"
    return None


RULES.add("MaxPool", lower=method("pool"), check=check_max_pool)
RULES.add("AveragePool", lower=method("pool"), check=check_average_pool)
RULES.add("GlobalAveragePool", "GlobalMaxPool", lower=method("global_pool"))


# -- layout and shape ---------------------------------------------------------------------------
RULES.add("Flatten", "Reshape", "Unsqueeze", "Squeeze", lower=method("reshape"))
RULES.add("Softmax", lower=method("softmax"))
RULES.add("Concat", lower=method("concat"))


@RULES.rule("Transpose")
def transpose(lw, n: ir.Node) -> None:
    perm = ints(n, "perm", reversed(range(len(dims(n.inputs[0], 1)))))
    x = lw.get(n.inputs[0].name, "onnx")
    lw.b.op(39, [x, lw.b.const(lw._name("perm"), np.asarray(perm, np.int32))],
            [lw.out(n.outputs[0], "onnx")])


def check_resize(n: ir.Node) -> str | None:
    """4-D; nearest (asymmetric/floor, half_pixel/ceil) or linear (half_pixel, align_corners)."""
    return resize_mode(n)[1]


RULES.add("Resize", lower=method("resize"), check=check_resize)


def check_split(n: ir.Node) -> str | None:
    """Output shapes known."""
    if any(o.shape is None for o in n.outputs):
        return "Split with unknown output shapes"
    return None


RULES.add("Split", lower=method("split"), check=check_split)


def check_slice(n: ir.Node) -> str | None:
    """Constant starts, ends, axes and steps."""
    if any(const_array(v) is None for v in n.inputs[1:] if v is not None):
        return "Slice with non-constant starts/ends"
    return None


RULES.add("Slice", lower=method("slice"), check=check_slice)


@RULES.rule("Constant")
def constant(lw, n: ir.Node) -> None:
    """Nothing to write: read where used (const_array follows Constant nodes)."""


@RULES.rule("Identity", "Dropout")
def identity(lw, n: ir.Node) -> None:
    lw.vals[n.outputs[0].name] = lw.vals[n.inputs[0].name]


# -- elementwise --------------------------------------------------------------------------------
RULES.add(*BINARY, lower=method("binary"))


@RULES.rule(*UNARY)
def unary(lw, n: ir.Node) -> None:
    lw.unary(n, UNARY[n.op_type])


def check_clip(n: ir.Node) -> str | None:
    """Constant bounds (0/6 → RELU6, else MAXIMUM/MINIMUM)."""
    if any(v is not None and v.name and const_array(v) is None for v in n.inputs[1:3]):
        return "Clip with non-constant bounds"
    return None


RULES.add("Clip", lower=method("clip"), check=check_clip)


@RULES.rule("LeakyRelu")
def leaky_relu(lw, n: ir.Node) -> None:
    s = lw.b.s
    opt = s.LeakyReluOptionsT()
    opt.alpha = n.attributes.get_float("alpha", 0.01)
    lw.unary(n, 98, opt, s.BuiltinOptions.LeakyReluOptions)


def check_erf(n: ir.Node) -> str | None:
    """Only inside an exact GELU (fused into TFLite's GELU before lowering: fuse_gelu)."""
    from autoglm_compress.passes.fuse_gelu import match_gelu

    if match_gelu(n) is None:
        return "Erf outside a GELU (TFLite has GELU, not Erf)"
    return None


@RULES.rule("Erf", check=check_erf)
def erf(lw, n: ir.Node) -> None:
    """Never reached: the target's prepare passes fuse every GELU's Erf first (fuse_gelu)."""
    from autoglm_compress.errors import UnsupportedOpError

    raise UnsupportedOpError("Erf", n.name or "?", "arm target", "a GELU's Erf reached the "
                             "emitter unfused: run the fuse_gelu pass first (prepare_passes)")

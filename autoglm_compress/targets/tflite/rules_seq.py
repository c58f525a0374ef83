"""TFLite lowering rules of the sequence ops (lower_seq.py: GATHER, CAST, reductions,
LayerNormalization, GELU, comparisons and logic) and the spatial ops beyond conv and pooling
(lower_spatial.py: TRANSPOSE_CONV, PRELU, PAD, ELU, HardSigmoid, unfolded BatchNormalization).
Registered in rules.py's ``RULES``; lower.py imports this module."""

from __future__ import annotations

import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ir_reads import input_or_none, ints, reduce_axes, wconst
from autoglm_compress.targets.tflite.lower_seq import LOGIC_CODES, REDUCE_CODES
from autoglm_compress.targets.tflite.rules import RULES, method

__all__: list[str] = []


# -- sequence ops -------------------------------------------------------------------------------
def check_gather(n: ir.Node) -> str | None:
    """Indices non-negative where constant."""
    idx = const_array(n.inputs[1])
    if idx is not None and (idx < 0).any():
        return "Gather with negative constant indices"
    return None


RULES.add("Gather", lower=method("gather"), check=check_gather)


_CAST_TO = (1, 6, 7, 9, 10, 3, 2)  # float, int32, int64, bool, float16, int8, uint8


def check_cast(n: ir.Node) -> str | None:
    """To float, float16, int8/uint8, int32/int64 or bool."""
    if n.attributes.get_int("to", 1) not in _CAST_TO:
        return "Cast to a type TFLite's CAST does not take"
    return None


RULES.add("Cast", lower=method("cast"), check=check_cast)


def check_reduce(n: ir.Node) -> str | None:
    """Constant axes, known rank."""
    shape = n.inputs[0].shape
    if shape is None or reduce_axes(n, len(shape)) is None:
        return f"{n.op_type} with non-constant axes or unknown rank"
    return None


RULES.add(*REDUCE_CODES, lower=method("reduce"), check=check_reduce)


def check_layernorm(n: ir.Node) -> str | None:
    """Constant scale and bias; the mean/inv-std outputs unread (decomposed: MEAN … RSQRT)."""
    bias = input_or_none(n, 2)
    if const_array(n.inputs[1]) is None or (bias is not None and const_array(bias) is None):
        return "LayerNormalization with non-constant scale/bias"
    if len(n.outputs) > 1 and any(o.uses() for o in n.outputs[1:]):
        return "LayerNormalization whose mean/inv-std outputs are used"
    return None


RULES.add("LayerNormalization", lower=method("layernorm"), check=check_layernorm)

# ONNX Gelu (opset 20) or the com.microsoft Gelu fuse_gelu writes → GELU.
RULES.add("Gelu", domains=("", "com.microsoft"), lower=method("gelu"))
RULES.add(*LOGIC_CODES, lower=method("logic"))


# -- spatial ops --------------------------------------------------------------------------------
def check_conv_transpose(n: ir.Node) -> str | None:
    """2-D, constant weights, ungrouped, undilated; pads (not output_shape or auto_pad SAME_*)."""
    w = wconst(n.inputs[1])
    if w is None or w.ndim != 4:
        return "only 2-D transposed convolutions with constant weights"
    if n.attributes.get_int("group", 1) != 1:
        return "grouped transposed convolution"
    if any(d != 1 for d in ints(n, "dilations", [1, 1])):
        return "dilated transposed convolution"
    if n.attributes.get("output_shape") is not None:
        return "ConvTranspose with output_shape (give pads instead)"
    if n.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return "ConvTranspose with auto_pad SAME_*"
    return None


RULES.add("ConvTranspose", lower=method("conv_transpose"), check=check_conv_transpose)


def check_elu(n: ir.Node) -> str | None:
    """Alpha 1 (TFLite's ELU)."""
    if n.attributes.get_float("alpha", 1.0) != 1.0:
        return "ELU with alpha ≠ 1 (TFLite's ELU has alpha 1)"
    return None


RULES.add("Elu", lower=method("elu"), check=check_elu)


def check_batchnorm(n: ir.Node) -> str | None:
    """Inference mode with constant statistics (MUL and ADD: one not folded into a conv)."""
    if any(const_array(v) is None for v in n.inputs[1:5]) \
            or n.attributes.get_int("training_mode", 0):
        return "BatchNormalization in training mode or with non-constant statistics"
    return None


RULES.add("BatchNormalization", lower=method("batchnorm"), check=check_batchnorm)


def check_prelu(n: ir.Node) -> str | None:
    """Constant slope."""
    if const_array(n.inputs[1]) is None:
        return "PRelu with a non-constant slope"
    return None


RULES.add("PRelu", lower=method("prelu"), check=check_prelu)


def check_pad(n: ir.Node) -> str | None:
    """Constant or reflect mode; constant pads and value; no axes input."""
    mode = n.attributes.get_string("mode", "constant")
    if mode not in ("constant", "reflect"):
        return f"Pad mode {mode!r} (TFLite has constant and reflect)"
    if const_array(n.inputs[1]) is None:
        return "Pad with non-constant pads"
    value = input_or_none(n, 2)
    if value is not None and value.name and const_array(value) is None:
        return "Pad with a non-constant value"
    if input_or_none(n, 3) is not None:
        return "Pad with axes"
    return None


RULES.add("Pad", lower=method("pad_op"), check=check_pad)
RULES.add("HardSigmoid", lower=method("hard_sigmoid"))

"""arm target (ncnn): the emitter's op dispatch is rules kept as data (targets/ncnn/rules.py).
Every op has one rule, the lowering table's supported list is generated from them, and each rule's
check accepts one small node and refuses another with the message users see."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from rule_nodes import f32, gelu_erf, i64, model_of, one

from autoglm_compress.errors import UnsupportedOpError
from autoglm_compress.targets.ncnn.lower import RULES, unsupported_reason
from autoglm_compress.targets.ncnn.target import NcnnTarget

S3 = {"x": [1, 4, 8], "y": [1, 4, 8]}
CASES = {
    "Conv": (one("Conv", ["x", "w"], c={"w": f32(4, 3, 3, 3)}),
             [(one("Conv", ["x", "w"], c={"w": f32(4, 3, 3)}, shapes={"x": [1, 3, 8]}),
               "only 2-D convolutions with constant weights")]),
    "ConvTranspose": (one("ConvTranspose", ["x", "w"], c={"w": f32(3, 4, 2, 2)}),
                      [(one("ConvTranspose", ["x", "w"], c={"w": f32(3, 4, 2, 2)}, group=3),
                        "grouped transposed convolution")]),
    "Gemm": (one("Gemm", ["x", "w"], c={"w": f32(4, 6)}, shapes={"x": [1, 4], "y": [1, 6]}),
             [(one("Gemm", ["x", "w"], c={"w": f32(4, 6)}, transA=1, shapes={"x": [1, 4]}),
               "Gemm with transA or a non-constant weight"),
              (one("Gemm", ["x", "w"], c={"w": f32(4, 6)}, shapes={"x": [1, 2, 4]}),
               "Gemm on a rank ≠ 2 input")]),
    "MatMul": (one("MatMul", ["x", "w"], c={"w": f32(8, 5)}, shapes={"x": [1, 4, 8]}),
               [(one("MatMul", ["x", "w"], c={"w": f32(8, 5)}),
                 "MatMul with a constant weight on a rank other than 2 or 3 (rows) input"),
                (one("MatMul", ["x", "z"], shapes={"x": [1, 4, 8], "z": [1, 8]}),
                 "MatMul of two activations other than batched 3-D/4-D of equal rank")]),
    "LayerNormalization": (
        one("LayerNormalization", ["x", "s"], c={"s": f32(8)}, shapes=S3),
        [(one("LayerNormalization", ["x", "s"], c={"s": f32(4, 8)}, axis=1, shapes=S3),
          "LayerNormalization over more than the last axis, or non-constant scale")]),
    "Resize": (one("Resize", ["x", "", "sc"], c={"sc": np.asarray([1, 1, 2, 2], np.float32)},
                   mode="nearest", coordinate_transformation_mode="asymmetric",
                   shapes={"y": [1, 3, 16, 16]}),
               [(one("Resize", ["x", "", "sc"], c={"sc": np.asarray([1, 1, 2, 2], np.float32)},
                     mode="cubic", shapes={"y": [1, 3, 16, 16]}),
                 "Resize mode cubic/half_pixel has no ncnn Interp equivalent")]),
    "Pad": (one("Pad", ["x", "p"], c={"p": i64(0, 0, 1, 1, 0, 0, 1, 1)}),
            [(one("Pad", ["x", "p"], c={"p": i64(1, 0, 1, 1, 0, 0, 1, 1)}),
              "Pad on the batch axis"),
             (one("Pad", ["x", "p"], c={"p": i64(0, 0, 1, 1, 0, 0, 1, 1)}, mode="wrap"),
              "Pad other than constant/edge/reflect with constant pads on a 4-D map")]),
    "Max": (one("Max", ["x", "z"]),
            [(one("Max", ["x", "z", "w"], c={"w": f32(1, 3, 8, 8)}),
              "ncnn Eltwise needs activations of one shape (no broadcast, no constants)")]),
    "Min": (one("Min", ["x", "z"]),
            [(one("Min", ["x", "z", "u"]), "ncnn has no Eltwise min over more than two inputs")]),
    "Add": (one("Add", ["x", "z"]),
            [(one("Add", ["x", "z"], shapes={"x": [1, 2, 2, 2, 2, 2], "y": [1, 2, 2, 2, 2, 2]}),
              "ncnn blobs have at most 4 dimensions")]),
    "Clip": (one("Clip", ["x", "lo", "hi"], c={"lo": np.float32(0), "hi": np.float32(6)}),
             [(one("Clip", ["x", "lo"]), "Clip with non-constant bounds")]),
    "Erf": (gelu_erf(), [(gelu_erf(lone=True), "Erf outside a GELU (ncnn has GELU, not Erf)")]),
    "Reshape": (one("Reshape", ["x", "s"], c={"s": i64(1, 3, 64)}, shapes={"y": [1, 3, 64]}),
                [(one("Reshape", ["x", "s"], c={"s": i64(1, 3, 2, 2, 2, 8)},
                      shapes={"y": [1, 3, 2, 2, 2, 8]}), "ncnn blobs have at most 4 dimensions")]),
    "Slice": (one("Slice", ["x", "b", "e", "a"], c={"b": i64(1), "e": i64(3), "a": i64(2)}),
              [(one("Slice", ["x", "b", "e", "a"], c={"b": i64(0), "e": i64(1), "a": i64(0)}),
                "Slice with steps ≠ 1 or on the batch axis"),
               (one("Slice", ["x", "b", "e"], c={"b": i64(0)}),
                "Slice with non-constant starts/ends")]),
    "Split": (one("Split", ["x"], ["y", "z"], axis=2),
              [(one("Split", ["x"], ["y", "z"], axis=0), "Split on the batch axis")]),
    "Transpose": (one("Transpose", ["x"], perm=[0, 1, 3, 2]),
                  [(one("Transpose", ["x"], perm=[1, 0, 2, 3]),
                    "Transpose other than of the non-batch axes of a 3-D/4-D tensor")]),
    "ReduceMean": (one("ReduceMean", ["x", "a"], c={"a": i64(2, 3)}),
                   [(one("ReduceMean", ["x", "a"], c={"a": i64(0)}),
                     "reduction over the batch axis or with non-constant axes")]),
    "Cast": (one("Cast", ["x"], to=10),
             [(one("Cast", ["x"], to=7), "float → integer/bool cast (ncnn blobs are float)")]),
    "Where": (one("Where", ["x", "a", "b"], c={"a": np.float32(-np.inf), "b": f32(1)}),
              [(one("Where", ["x", "a", "b"],
                    c={"a": np.full((2,), -np.inf, np.float32), "b": f32(1)}),
                "Where with non-scalar infinite constants")]),
    "LSTM": (one("LSTM", ["x", "w", "r"], c={"w": f32(1, 64, 8), "r": f32(1, 64, 16)},
                 hidden_size=16, shapes={"x": [5, 1, 8]}),
             [(one("LSTM", ["x", "w", "r"], c={"w": f32(1, 64, 8), "r": f32(1, 64, 16)},
                   hidden_size=16, clip=1.0, shapes={"x": [5, 1, 8]}),
               "LSTM with clip or input_forget (ncnn has neither)")]),
    "GRU": (one("GRU", ["x", "w", "r"], c={"w": f32(1, 48, 8), "r": f32(1, 48, 16)},
                hidden_size=16, linear_before_reset=1, shapes={"x": [1, 5, 8]}, layout=1),
            [(one("GRU", ["x", "w", "r"], c={"w": f32(1, 48, 8), "r": f32(1, 48, 16)},
                  hidden_size=16, shapes={"x": [1, 5, 8]}, layout=1),
              "GRU with linear_before_reset=0 (ncnn's GRU applies the reset gate after the "
              "recurrent matmul, as torch exports it)")]),
    "RNN": (one("RNN", ["x", "w", "r"], c={"w": f32(1, 16, 8), "r": f32(1, 16, 16)},
                hidden_size=16, shapes={"x": [5, 1, 8]}),
            [(one("RNN", ["x", "w", "r"], c={"w": f32(1, 16, 8), "r": f32(1, 16, 16)},
                  hidden_size=16, activations=["Relu"], shapes={"x": [5, 1, 8]}),
              "RNN with activations other than tanh (ncnn's only ones)")]),
}


def test_table_supported_is_generated_from_the_rules():
    t = NcnnTarget()
    for prec in t.precisions:
        assert set(t.table.entry(prec)["supported"]) == RULES.ops()
    assert "QuantizeLinear" in RULES.ops(internal=True) and "QuantizeLinear" not in RULES.ops()


def test_every_rule_with_a_check_has_a_case_and_a_stated_condition():
    checked = {op for r in RULES.rules() if r.check for op in r.ops}
    covered = {op for op in CASES} | {
        # ops sharing a rule (and so a check) with one above
        "Sub", "Mul", "Div", "Pow", "Sum", "Mean", "Flatten", "Squeeze", "Unsqueeze",
        "ReduceSum", "ReduceMax", "ReduceMin", "Gather", "IsNaN"}
    assert checked <= covered, sorted(checked - covered)
    for op, cond in RULES.table():
        r = RULES.get(op)
        assert (r.check is None) == (cond == ""), op


@pytest.mark.parametrize("op", sorted(CASES))
def test_rule_check_accepts_and_refuses(op):
    good, bad = CASES[op]
    assert good.op_type == op and unsupported_reason(good) is None
    for node, why in bad:
        assert unsupported_reason(node) == why


def test_common_check_batch_and_unknown_dims():
    assert "leading dim must be 1" in unsupported_reason(one("Relu", ["x"], shapes={"x": [2, 3, 8, 8]}))
    assert "unknown dimension" in unsupported_reason(
        one("Relu", ["x"], shapes={"x": [1, "C", 8, 8]}))


def test_op_without_a_rule_is_refused_before_any_work():
    node = one("Einsum", ["x", "z"], equation="ij,jk->ik")
    assert unsupported_reason(node) == "no ncnn lowering for this op yet"
    assert unsupported_reason(one("Gelu", ["x"], domain="com.microsoft")) is None
    assert "domain" in unsupported_reason(one("Relu", ["x"], domain="com.microsoft"))
    model = model_of([helper.make_node("Einsum", ["x", "z"], ["y"], equation="ij,jk->ik")])
    with pytest.raises(UnsupportedOpError, match="'Einsum'.*no lowering"):
        NcnnTarget().check(model, "fp32")

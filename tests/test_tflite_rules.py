"""arm target (TFLite): the emitter's op dispatch is rules kept as data (targets/tflite/rules.py).
Every op has a rule, the lowering table's supported list is generated from them, and each rule's
check accepts one small node and refuses another with the message users see."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from rule_nodes import f32, gelu_erf, i64, model_of, one

from autoglm_compress.targets.tflite.lower import unsupported_reason

F = TensorProto.FLOAT
_model, _f, _i, _gelu = model_of, f32, i64, gelu_erf


def _layernorm_mean_used() -> ir.Node:
    nodes = [helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean"], name="n"),
             helper.make_node("Identity", ["mean"], ["m2"])]
    m = _model(nodes, {"s": _f(8)}, outputs=("y", "m2"))
    return next(n for n in m.graph if n.name == "n")


def _rnn(op, x=(5, 1, 3), const_w=True, sequence_lens: int | None = -1, **attrs) -> ir.Node:
    """An LSTM/GRU node (hidden 4, input 3) over ``x``; ``sequence_lens`` a constant (batch 1),
    None: a graph input, -1: absent."""
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    g = 4 if op == "LSTM" else 3
    c = {"r": _f(dirs, g * 4, 4), "b": _f(dirs, 2 * g * 4)}
    shapes = {"x": list(x), "w": [dirs, g * 4, 3], "l": [1]}
    if const_w:
        c["w"] = _f(dirs, g * 4, 3)
    ins = ["x", "w", "r", "b"]
    if sequence_lens != -1:
        ins.append("l")
        if sequence_lens is not None:
            c["l"] = np.asarray([sequence_lens], np.int32)
    return one(op, ins, c=c, shapes=shapes, hidden_size=4, **attrs)


SPLIT_SHAPES = {"y": [1, 3, 4, 8], "z": [1, 3, 4, 8]}
# op → (a node its rule accepts, [(a node it refuses, the refusal)]), one entry per rule with a check
CASES = {
    "Conv": (lambda: one("Conv", ["x", "w"], c={"w": _f(3, 1, 3, 3)}, group=3), [
        (lambda: one("Conv", ["x", "w"], shapes={"w": [4, 3, 3, 3]}),
         "only 2-D convolutions with constant weights"),
        (lambda: one("Conv", ["x", "w"], c={"w": _f(4, 2, 3, 3)}, group=2),
         "grouped (non-depthwise) convolution")]),
    "Gemm": (lambda: one("Gemm", ["x", "w"], c={"w": _f(8, 4)}, transB=1), [
        (lambda: one("Gemm", ["x", "w"], c={"w": _f(8, 4)}, transA=1),
         "Gemm with transA or alpha ≠ 1"),
        (lambda: one("Gemm", ["x", "w"], shapes={"x": [1, 8], "w": [8, 4]}),
         "Gemm with a non-constant weight")]),
    "MaxPool": (lambda: one("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
                            shapes={"y": [1, 3, 4, 4]}), [
        (lambda: one("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
         "ceil_mode max pooling with unknown output size")]),
    "AveragePool": (lambda: one("AveragePool", ["x"], kernel_shape=[2, 2]), [
        (lambda: one("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
         "ceil_mode average pooling")]),
    "Resize": (lambda: one("Resize", ["x", "", "s"], c={"s": np.asarray([1, 1, 2, 2], np.float32)},
                           shapes={"y": [1, 3, 16, 16]}, mode="nearest", nearest_mode="floor",
                           coordinate_transformation_mode="asymmetric"), [
        (lambda: one("Resize", ["x", "", "s"], c={"s": np.asarray([1, 1, 2, 2], np.float32)},
                     shapes={"y": [1, 3, 16, 16]}, mode="cubic"),
         "Resize mode cubic/half_pixel/round_prefer_floor has no TFLite equivalent"),
        (lambda: one("Resize", ["x", "", "s"], c={"s": np.asarray([1, 1, 2], np.float32)},
                     shapes={"x": [1, 3, 8], "y": [1, 3, 16]}, mode="linear"),
         "only 4-D (NCHW) resizes")]),
    "Slice": (lambda: one("Slice", ["x", "b", "e"], c={"b": _i(1), "e": _i(3)}), [
        (lambda: one("Slice", ["x", "b", "e"], c={"e": _i(3)}, shapes={"b": [1]}),
         "Slice with non-constant starts/ends")]),
    "Split": (lambda: one("Split", ["x"], ["y", "z"], axis=2, num_outputs=2, shapes=SPLIT_SHAPES), [
        (lambda: one("Split", ["x"], ["y", "z"], axis=2, num_outputs=2),
         "Split with unknown output shapes")]),
    "Clip": (lambda: one("Clip", ["x", "lo", "hi"], c={"lo": np.float32(0), "hi": np.float32(6)}), [
        (lambda: one("Clip", ["x", "lo"], shapes={"lo": []}), "Clip with non-constant bounds")]),
    "Erf": (_gelu, [(lambda: _gelu(lone=True), "Erf outside a GELU (TFLite has GELU, not Erf)")]),
    "Gather": (lambda: one("Gather", ["x", "i"], c={"i": _i(0, 2)}), [
        (lambda: one("Gather", ["x", "i"], c={"i": _i(0, -1)}),
         "Gather with negative constant indices")]),
    "ReduceSum": (lambda: one("ReduceSum", ["x", "a"], c={"a": _i(2, 3)}), [
        (lambda: one("ReduceSum", ["x", "a"], shapes={"a": [2]}),
         "ReduceSum with non-constant axes or unknown rank")]),
    "LayerNormalization": (lambda: one("LayerNormalization", ["x", "s", "b"],
                                       c={"s": _f(8), "b": _f(8)}), [
        (lambda: one("LayerNormalization", ["x", "s"], shapes={"s": [8]}),
         "LayerNormalization with non-constant scale/bias"),
        (_layernorm_mean_used, "LayerNormalization whose mean/inv-std outputs are used")]),
    "Cast": (lambda: one("Cast", ["x"], to=TensorProto.INT32), [
        (lambda: one("Cast", ["x"], to=TensorProto.DOUBLE),
         "Cast to a type TFLite's CAST does not take")]),
    "ConvTranspose": (lambda: one("ConvTranspose", ["x", "w"], c={"w": _f(3, 4, 3, 3)},
                                  strides=[2, 2], pads=[1, 1, 1, 1]), [
        (lambda: one("ConvTranspose", ["x", "w"], shapes={"w": [3, 4, 3, 3]}),
         "only 2-D transposed convolutions with constant weights"),
        (lambda: one("ConvTranspose", ["x", "w"], c={"w": _f(3, 2, 3, 3)}, group=3),
         "grouped transposed convolution"),
        (lambda: one("ConvTranspose", ["x", "w"], c={"w": _f(3, 4, 3, 3)}, dilations=[2, 2]),
         "dilated transposed convolution"),
        (lambda: one("ConvTranspose", ["x", "w"], c={"w": _f(3, 4, 3, 3)}, output_shape=[9, 9]),
         "ConvTranspose with output_shape (give pads instead)"),
        (lambda: one("ConvTranspose", ["x", "w"], c={"w": _f(3, 4, 3, 3)}, auto_pad="SAME_UPPER"),
         "ConvTranspose with auto_pad SAME_*")]),
    "Elu": (lambda: one("Elu", ["x"]), [
        (lambda: one("Elu", ["x"], alpha=0.5), "ELU with alpha ≠ 1 (TFLite's ELU has alpha 1)")]),
    "BatchNormalization": (lambda: one("BatchNormalization", ["x", "g", "b", "m", "v"],
                                       c={k: _f(3) for k in "gbmv"}), [
        (lambda: one("BatchNormalization", ["x", "g", "b", "m", "v"], c={k: _f(3) for k in "gbm"},
                     shapes={"v": [3]}),
         "BatchNormalization in training mode or with non-constant statistics"),
        (lambda: one("BatchNormalization", ["x", "g", "b", "m", "v"],
                     c={k: _f(3) for k in "gbmv"}, training_mode=1),
         "BatchNormalization in training mode or with non-constant statistics")]),
    "PRelu": (lambda: one("PRelu", ["x", "s"], c={"s": _f(3, 1, 1)}), [
        (lambda: one("PRelu", ["x", "s"], shapes={"s": [3, 1, 1]}),
         "PRelu with a non-constant slope")]),
    "Pad": (lambda: one("Pad", ["x", "p", "v"], c={"p": _i(0, 0, 1, 1, 0, 0, 1, 1),
                                                   "v": np.float32(0.5)}), [
        (lambda: one("Pad", ["x", "p"], c={"p": _i(0, 0, 1, 1, 0, 0, 1, 1)}, mode="edge"),
         "Pad mode 'edge' (TFLite has constant and reflect)"),
        (lambda: one("Pad", ["x", "p"], shapes={"p": [8]}), "Pad with non-constant pads"),
        (lambda: one("Pad", ["x", "p", "v"], c={"p": _i(0, 0, 1, 1, 0, 0, 1, 1)},
                     shapes={"v": []}), "Pad with a non-constant value"),
        (lambda: one("Pad", ["x", "p", "", "a"], c={"p": _i(1, 1), "a": _i(3)}),
         "Pad with axes")]),
    "LSTM": (lambda: _rnn("LSTM", sequence_lens=5), [
        (lambda: _rnn("LSTM", x=["T", 1, 3]),
         "LSTM with an unknown sequence length or input size (give --input-shape)"),
        (lambda: _rnn("LSTM", const_w=False), "LSTM with non-constant weights or biases"),
        (lambda: _rnn("LSTM", activations=["Relu", "Tanh", "Tanh"]),
         "LSTM with activations other than Sigmoid/Tanh/Tanh"),
        (lambda: _rnn("LSTM", clip=1.0),
         "LSTM with clip (TFLite clips the cell state, not the gate inputs)"),
        (lambda: _rnn("LSTM", input_forget=1),
         "LSTM with input_forget (coupled input and forget gates)"),
        (lambda: _rnn("LSTM", sequence_lens=3),
         "LSTM with sequence_lens other than the full sequence length (TFLite's kernels run "
         "every step of every batch item)")]),
    "GRU": (lambda: _rnn("GRU", linear_before_reset=1, direction="bidirectional"), [
        (lambda: _rnn("GRU", sequence_lens=None),
         "GRU with sequence_lens other than the full sequence length (TFLite's kernels run "
         "every step of every batch item)")]),
}


@pytest.mark.parametrize("op", sorted(CASES))
def test_each_check_accepts_one_node_and_refuses_another(op):
    ok, refused = CASES[op]
    assert unsupported_reason(ok()) is None
    for make, why in refused:
        assert unsupported_reason(make()) == why


def test_every_supported_op_has_a_rule_and_the_table_is_generated_from_them():
    from autoglm_compress.targets.tflite.lower import RULES
    from autoglm_compress.targets.tflite.target import TFLiteTarget

    ops = RULES.ops()
    assert {"Conv", "Gemm", "Gelu", "Pad", "Where", "Constant", "Erf"} <= ops
    checked = set()
    for op in ops:
        r = RULES.get(op)
        assert r is not None and op in r.ops and not r.internal
        if r.check is not None:
            assert (r.check.__doc__ or "").strip(), f"{op}: the check says its condition"
            checked.add(r)
    # each rule with a check has a case here (under one of its ops)
    assert {id(r) for r in checked} == {id(RULES.get(op)) for op in CASES}
    table = TFLiteTarget().table
    for prec in TFLiteTarget.precisions:
        assert table.entry(prec)["supported"] == sorted(ops)
    rows = dict(RULES.table())
    assert rows.keys() == ops and rows["Conv"] and rows["MatMul"] == ""


def test_domains_follow_the_rules():
    assert unsupported_reason(one("Gelu", ["x"], domain="com.microsoft")) is None
    assert unsupported_reason(one("Gelu", ["x"])) is None
    assert unsupported_reason(one("Relu", ["x"], domain="com.microsoft")) == \
        "no TFLite lowering for domain 'com.microsoft'"


def test_op_without_a_rule_is_refused(tmp_path, capsys):
    pytest.importorskip("ai_edge_litert")
    from autoglm_compress.cli import main
    from autoglm_compress.errors import UnsupportedOpError
    from autoglm_compress.targets.tflite.target import TFLiteTarget

    node = helper.make_node("Einsum", ["x", "x"], ["y"], name="ein", equation="ij,ij->ij")
    assert unsupported_reason(one("Einsum", ["x", "x"], equation="ij,ij->ij")) == \
        "no TFLite lowering for this op yet"
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F, [2, 3])],
                          [helper.make_tensor_value_info("y", F, [2, 3])])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError) as e:
        TFLiteTarget().check(ir.from_proto(proto), "fp32")
    assert e.value.exit_code == 2 and "'Einsum'" in str(e.value) and "ein" in str(e.value)
    src = tmp_path / "einsum.onnx"
    onnx.save(proto, src)
    rc = main([str(src), "--target", "arm", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "'Einsum'" in err and "ein" in err
    assert not list(tmp_path.rglob("*.tflite"))

"""fold_shapes: symbolic input dims fixed to the data's shapes, shape arithmetic folded to constants
(node counts before/after, IR check, outputs equal in onnxruntime), Expand/GatherND rewrites, and
what stays dynamic refused with the node, the input and why."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from autoglm_compress.errors import UnsupportedOpError
from autoglm_compress.ir_utils import check, from_proto, ort_run, ort_session, to_proto
from autoglm_compress.passes.fold_shapes import DATA_SHAPES, FoldShapesPass, dynamic_refusal

RNG = np.random.default_rng(0)
_SHAPE_OPS = {"Shape", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Range",
              "Equal", "Where", "Expand", "ConstantOfShape", "GatherND", "GatherElements"}


def _model(text: str, inits: dict | None = None, shapes: dict | None = None):
    proto = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>\n' + text)
    for k, a in (inits or {}).items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(a, k))
    m = from_proto(onnx.shape_inference.infer_shapes(proto, data_prop=True))
    if shapes:
        m.metadata_props[DATA_SHAPES] = json.dumps(shapes)
    return m


def _fold(model, feed):
    """Run the pass; check the IR; outputs equal to the model before it (onnxruntime)."""
    before = from_proto(to_proto(model))
    want = ort_run(ort_session(before), feed)
    p = FoldShapesPass()
    p(model)
    check(model)
    got = ort_run(ort_session(model), feed)
    for w, g in zip(want, got):
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)
    return p.stats


# x [N, S, 8] → Reshape to [N, S, 2, 4] with the target computed from Shape; a [S, S] causal mask
# from Range / Unsqueeze / GreaterOrEqual / Where, broadcast with Expand to [N, 1, S, S]
_ATTN = """
g (float[N, S, 8] x, int64[N, S] m) => (float[N, S, 2, 4] y, float[N, 1, S, S] mask) {
    sh = Shape(x)
    i0 = Constant <value = int64[1] {0}> ()
    i1 = Constant <value = int64[1] {1}> ()
    i2 = Constant <value = int64[1] {2}> ()
    n = Slice(sh, i0, i1)
    i1s = Constant <value = int64 {1}> ()
    s = Gather <axis = 0> (sh, i1s)
    su = Unsqueeze(s, i0)
    k = Constant <value = int64[2] {2, 4}> ()
    tgt = Concat <axis = 0> (n, su, k)
    y = Reshape(x, tgt)
    zero = Constant <value = int64 {0}> ()
    one = Constant <value = int64 {1}> ()
    ss = Squeeze(su, i0)
    r = Range(zero, ss, one)
    rr = Unsqueeze(r, i1)
    rc = Unsqueeze(r, i0)
    causal = GreaterOrEqual(rr, rc)
    mf = Cast <to = 1> (m)
    mu = Unsqueeze(mf, i1)
    mu2 = Unsqueeze(mu, i2)
    big = Constant <value = float {-10000}> ()
    fz = Constant <value = float {0}> ()
    cm = Where(causal, fz, big)
    one4 = Constant <value = int64[1] {1}> ()
    eshape = Concat <axis = 0> (n, one4, su, su)
    ce = Expand(cm, eshape)
    pad = Sub(mu2, mu2)
    mask = Add(ce, pad)
}"""


def test_transformer_shape_arithmetic_folds_to_constants():
    m = _model(_ATTN, shapes={"x": [1, 6, 8], "m": [1, 6]})
    n0 = sum(1 for _ in m.graph)
    feed = {"x": RNG.normal(size=(1, 6, 8)).astype(np.float32),
            "m": np.array([[1, 1, 1, 1, 0, 0]], np.int64)}
    stats = _fold(m, feed)
    left = {n.op_type for n in m.graph}
    assert stats["dims_fixed"] == 4
    assert stats["nodes_before"] == n0 and stats["nodes_after"] == sum(1 for _ in m.graph)
    assert stats["folded"] == n0 - stats["nodes_after"] >= 15
    assert not left & {"Shape", "Range", "Concat", "Gather", "Slice", "Squeeze", "Expand", "Where"}
    reshape = next(n for n in m.graph if n.op_type == "Reshape")
    assert reshape.inputs[1].const_value.numpy().tolist() == [1, 6, 2, 4]
    assert [int(d) for d in m.graph.inputs[0].shape] == [1, 6, 8]
    assert stats["dynamic_left"] is None and dynamic_refusal(m) is None


def test_without_data_shapes_nothing_is_fixed_and_the_dim_is_named():
    m = _model(_ATTN)
    p = FoldShapesPass()
    p(m)
    assert p.stats["dims_fixed"] == 0
    node, why = dynamic_refusal(m)
    assert node.op_type == "Shape"
    assert "graph input 'x'" in why and "0 (N), 1 (S)" in why and "--input-shape" in why


def test_expand_read_by_broadcasting_op_is_dropped():
    m = _model("""g (float[N, 4] x, float[N, 3, 4] z) => (float[N, 3, 4] y) {
        s = Shape(z)
        e = Expand(x, s)
        y = Add(z, e) }""", shapes={"x": [1, 4], "z": [1, 3, 4]})
    feed = {"x": RNG.normal(size=(1, 4)).astype(np.float32),
            "z": RNG.normal(size=(1, 3, 4)).astype(np.float32)}
    stats = _fold(m, feed)
    assert stats["expand_removed"] == 1
    assert [n.op_type for n in m.graph] == ["Add"]


@pytest.mark.parametrize("dtype,op", [("float", "Add"), ("bool", "Or")])
def test_expand_to_graph_output_becomes_a_broadcast_with_small_zeros(dtype, op):
    m = _model(f"""g ({dtype}[N, 1, 5] x) => ({dtype}[N, 3, 5] y) {{
        t = Constant <value = int64[3] {{1, 3, 5}}> ()
        y = Expand(x, t) }}""", shapes={"x": [1, 1, 5]})
    x = RNG.normal(size=(1, 1, 5)) > 0 if dtype == "bool" else RNG.normal(size=(1, 1, 5))
    stats = _fold(m, {"x": x.astype(np.bool_ if dtype == "bool" else np.float32)})
    assert stats["expand_broadcast"] == 1
    (node,) = list(m.graph)
    assert node.op_type == op
    assert node.inputs[1].const_value.numpy().shape == (1, 3, 1)  # not the full [1, 3, 5]


def test_gathernd_of_an_in_order_grid_is_a_reshape():
    """The dynamo exporter's padding-mask read: GatherND(mask [B, S], grid of (b, s) indices)."""
    m = _model("""g (bool[B, S] mask) => (bool[B, 1, 1, S] y) {
        sh = Shape(mask)
        z = Constant <value = int64 {0}> ()
        o = Constant <value = int64 {1}> ()
        b = Gather <axis = 0> (sh, z)
        s = Gather <axis = 0> (sh, o)
        rb = Range(z, b, o)
        rs = Range(z, s, o)
        a1 = Constant <value = int64[4] {-1, 1, 1, 1}> ()
        a2 = Constant <value = int64[4] {1, 1, 1, -1}> ()
        ib = Reshape(rb, a1)
        is = Reshape(rs, a2)
        four = Constant <value = int64[1] {4}> ()
        axes = Constant <value = int64[1] {-1}> ()
        ibe = Unsqueeze(ib, axes)
        ise = Unsqueeze(is, axes)
        st = Shape(ise)
        ibb = Expand(ibe, st)
        idx = Concat <axis = -1> (ibb, ise)
        y = GatherND(mask, idx) }""", shapes={"mask": [1, 7]})
    stats = _fold(m, {"mask": RNG.normal(size=(1, 7)) > 0})
    assert stats["gathernd_reshaped"] == 1
    assert [n.op_type for n in m.graph] == ["Reshape"]


def test_gathernd_out_of_order_becomes_reshape_and_gather():
    idx = np.array([[[1, 2], [0, 0]], [[2, 1], [1, 2]]], np.int64)  # [2, 2, 2]: pairs into [3, 3]
    m = _model("""g (float[3, 3, 4] x) => (float[2, 2, 4] y) {
        y = GatherND(x, idx) }""", {"idx": idx}, shapes={"x": [3, 3, 4]})
    stats = _fold(m, {"x": RNG.normal(size=(3, 3, 4)).astype(np.float32)})
    assert stats["gathernd_gathered"] == 1
    assert [n.op_type for n in m.graph] == ["Reshape", "Gather"]


def test_constant_gather_elements_onnx_reference_cannot_evaluate_is_folded_in_ort():
    """onnx's reference GatherElements fails on a [1, 128] table read at [1, 16] indices (the
    token-type buffer of a BERT export without token_type_ids): onnxruntime evaluates it."""
    table = np.zeros((1, 128), np.int64)
    table[0, ::3] = 1
    m = _model("""g (int64[N, S] ids) => (int64[N, S] y) {
        sh = Shape(ids)
        one = Constant <value = int64[1] {1}> ()
        two = Constant <value = int64[1] {2}> ()
        zero = Constant <value = int64[1] {0}> ()
        s = Slice(sh, one, two)
        n = Slice(sh, zero, one)
        pos = Slice(positions, zero, s, one)
        tt = GatherElements <axis = 1> (table, pos)
        t2 = Concat <axis = 0> (n, s)
        te = Expand(tt, t2)
        y = Add(ids, te) }""", {"table": table, "positions": np.arange(128)[None]},
               shapes={"ids": [1, 16]})
    stats = _fold(m, {"ids": RNG.integers(0, 9, (1, 16))})
    assert [n.op_type for n in m.graph] == ["Add"]
    assert stats["folded"] >= 8


_NONZERO = """g (float[1, 8] x) => (float[1, K] y) {
    nz = NonZero(x)
    sh = Shape(nz)
    one = Constant <value = int64[1] {1}> ()
    two = Constant <value = int64[1] {2}> ()
    k = Slice(sh, one, two)
    o = Constant <value = int64[1] {1}> ()
    t = Concat <axis = 0> (o, k)
    c = ConstantOfShape(t)
    y = Add(c, c) }"""


def test_data_dependent_shape_is_named():
    m = _model(_NONZERO, shapes={"x": [1, 8]})
    p = FoldShapesPass()
    p(m)
    check(m)
    node, why = dynamic_refusal(m)
    assert node.op_type == "NonZero" and node.name == p.stats["dynamic_left"].split(" ")[0]
    assert "depends on the values of 'x'" in why


def test_arm_check_refuses_data_dependent_shape_naming_node_input_and_cause():
    from autoglm_compress.targets.tflite.target import TFLiteTarget

    m = _model(_NONZERO.replace("nz = NonZero(x)\n", "nz = NonZero(x)\n    f = Cast <to = 1> (nz)\n"),
               shapes={"x": [1, 8]})
    for n in m.graph:
        n.name = n.name or f"{n.op_type.lower()}_{n.outputs[0].name}"
    with pytest.raises(UnsupportedOpError) as e:
        TFLiteTarget().check(m, "fp32")
    msg = str(e.value)
    assert "'NonZero'" in msg and "depends on the values of 'x'" in msg
    assert "only known at run time" in msg and "--target x86" in msg
    assert "\n" not in msg


def test_shape_input_computed_from_values_is_named():
    """A Reshape whose target is read from a tensor's values: input 1, its source and why."""
    m = _model("""g (float[1, 8] x, int64[2] t) => (float[A, B] y) {
        a = Abs(t)
        y = Reshape(x, a) }""", shapes={"x": [1, 8], "t": [2]})
    FoldShapesPass()(m)
    node, why = dynamic_refusal(m)
    assert node.op_type == "Reshape"
    assert why.startswith("input 1 ('a') is not a constant")
    assert "values of 't' (the graph input)" in why

"""Symbolic dims, shapes from data, dynamic-batch artifacts, opset conversion, Constant weights.

Each test is a failure a new user met on a real model (issue 9), rebuilt as a small ONNX graph.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from autoglm_compress import compress, load
from autoglm_compress.cli import main
from autoglm_compress.errors import CalibrationError

RNG = np.random.default_rng(0)


def _arr(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _cnn(path, batch_dim, opset=13, constants=False):
    """Conv→BN→Relu→Conv→GAP→Flatten; weights as initializers or (paddle2onnx style) Constants."""
    weights = {
        "W": _arr(8, 1, 3, 3),
        "B": _arr(8),
        "scale": np.abs(_arr(8)) + 0.5,
        "bias": _arr(8),
        "mean": _arr(8),
        "var": np.abs(_arr(8)) + 0.5,
        "W2": _arr(4, 8, 3, 3),
    }
    nodes = [
        h.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        h.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"]),
        h.make_node("Relu", ["bn"], ["r"]),
        h.make_node("Conv", ["r", "W2"], ["c2"], pads=[1, 1, 1, 1]),
        h.make_node("GlobalAveragePool", ["c2"], ["p"]),
        h.make_node("Flatten", ["p"], ["y"]),
    ]
    inits = []
    for k, v in weights.items():
        if constants:
            nodes.insert(0, h.make_node("Constant", [], [k], value=nh.from_array(v, k)))
        else:
            inits.append(nh.from_array(v, k))
    x = h.make_tensor_value_info("x", T.FLOAT, [batch_dim, 1, 8, 8])
    y = h.make_tensor_value_info("y", T.FLOAT, [batch_dim, 4])
    g = h.make_graph(nodes, "g", [x], [y], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", opset)]), path)
    return path


def _run(*args):
    return main([str(a) for a in args])


def test_symbolic_batch_and_width_from_data(tmp_path):
    """Dynamic batch and width: inspect prints them, compress takes the shape from the data, the
    artifact keeps both dynamic (runs at batch 1 and 3, other widths)."""
    W, Wg = _arr(8, 4, 3), _arr(8, 5)
    nodes = [
        h.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1]),
        h.make_node("Relu", ["c"], ["r"]),
        h.make_node("ReduceMean", ["r"], ["m"], axes=[2], keepdims=0),
        h.make_node("MatMul", ["m", "Wg"], ["y"]),
    ]
    x = h.make_tensor_value_info("x", T.FLOAT, ["batch", 4, "width"])
    y = h.make_tensor_value_info("y", T.FLOAT, ["batch", 5])
    g = h.make_graph(nodes, "g", [x], [y], [nh.from_array(W, "W"), nh.from_array(Wg, "Wg")])
    path = tmp_path / "textcls.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    np.savez(tmp_path / "calib.npz", x=_arr(24, 4, 37))
    np.savez(tmp_path / "eval.npz", x=_arr(8, 4, 37))

    model = load(path)
    assert [str(d) for d in model.graph.inputs[0].shape] == ["batch", "4", "width"]
    for precision in ("--fp16", "--int8"):
        out = tmp_path / precision.strip("-")
        args = [path, precision, "--calib", tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz"]
        assert _run(*args, "-o", out) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["input_shapes"]["x"] == {
            "model": ["batch", 4, "width"],
            "shape": [1, 4, 37],
            "from": "eval data",
        }
        sess = ort.InferenceSession(str(next(out.glob("*.onnx"))))
        assert [str(d) for d in sess.get_inputs()[0].shape] == ["batch", "4", "width"]
        for b, w in ((1, 37), (3, 37), (3, 11)):
            assert sess.run(None, {"x": _arr(b, 4, w)})[0].shape == (b, 5)


def test_static_shapes_fixes_the_symbolic_dims(tmp_path):
    path = _cnn(tmp_path / "m.onnx", "N")
    np.savez(tmp_path / "calib.npz", x=_arr(8, 1, 8, 8))
    res = compress(
        path, fp16=True, calib=tmp_path / "calib.npz", static_shapes=True, out_dir=tmp_path
    )
    sess = ort.InferenceSession(str(res.artifacts[0].path))
    assert sess.get_inputs()[0].shape == [1, 1, 8, 8]
    assert res.report["static_shapes"] is True


def test_minus_one_batch_is_dynamic_and_input_shape_batch4_int8(tmp_path):
    """paddle2onnx writes the batch as dim_value -1: --input-shape x=4x1x8x8 is accepted, INT8 runs
    with batch-4 samples (bias correction included), and the artifact stays dynamic."""
    path = _cnn(tmp_path / "neg.onnx", -1)
    out = tmp_path / "o"
    rc = _run(path, "--int8", "--calib-random", "--input-shape", "x=4x1x8x8", "-o", out)
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["input_shapes"]["x"]["shape"] == [4, 1, 8, 8]
    assert report["input_shapes"]["x"]["from"] == "--input-shape"
    assert report["artifacts"][0]["fidelity"]["cosine_pooled"] > 0.99
    sess = ort.InferenceSession(str(out / "neg.x86.int8.onnx"))
    for b in (1, 3):
        assert sess.run(None, {"x": _arr(b, 1, 8, 8)})[0].shape == (b, 4)


def test_old_opset_is_converted_before_int8(tmp_path):
    """Per-channel QDQ needs opset 13: an opset-11 model is converted up front, the report says so."""
    path = _cnn(tmp_path / "old.onnx", "N", opset=11)
    np.savez(tmp_path / "calib.npz", x=_arr(16, 1, 8, 8))
    res = compress(path, int8=True, calib=tmp_path / "calib.npz", out_dir=tmp_path)
    assert res.report["opset_conversion"] == {"from": 11, "to": 13, "why": "int8"}
    saved = onnx.load(res.artifacts[0].path)
    assert saved.opset_import[0].version >= 13
    assert res.artifacts[0].fidelity["cosine_pooled"] > 0.99


def test_constant_node_weights_are_lifted_and_bn_folds(tmp_path):
    """Weights held in Constant nodes become initializers on load, so fold_bn folds the BN."""
    path = _cnn(tmp_path / "const.onnx", "N", constants=True)
    model = load(path)
    assert not any(n.op_type == "Constant" for n in model.graph)
    assert {"W", "W2"} <= set(model.graph.initializers)
    np.savez(tmp_path / "calib.npz", x=_arr(8, 1, 8, 8))
    res = compress(path, fp16=True, calib=tmp_path / "calib.npz", out_dir=tmp_path)
    fold = next(p for p in res.report["passes"] if p["name"] == "fold_bn")
    assert fold["stats"]["bn_folded"] == 1
    assert res.artifacts[0].fidelity["cosine_pooled"] > 0.999


def _fixed_batch2(tmp_path):
    """An encoder traced at batch 2 (fixed dims [2, 6]) reading token ids through a Gather."""
    table = _arr(50, 4)
    nodes = [
        h.make_node("Gather", ["table", "ids"], ["e"]),
        h.make_node("ReduceMean", ["e"], ["y"], axes=[1], keepdims=0),
    ]
    ids = h.make_tensor_value_info("ids", T.INT64, [2, 6])
    y = h.make_tensor_value_info("y", T.FLOAT, [2, 4])
    g = h.make_graph(nodes, "g", [ids], [y], [nh.from_array(table, "table")])
    path = tmp_path / "b2.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    return path


def test_fixed_batch_data_regrouped_or_refused(tmp_path):
    from autoglm_compress.inputs import load_npz_feeds, random_feeds

    model = load(_fixed_batch2(tmp_path))
    ids = RNG.integers(0, 50, size=(10, 6))
    np.savez(tmp_path / "rows.npz", ids=ids)  # (N·b, 6): regrouped into 5 samples of 2
    feeds, _ = load_npz_feeds(tmp_path / "rows.npz", model)
    assert len(feeds) == 5 and feeds[0]["ids"].shape == (2, 6)
    np.testing.assert_array_equal(feeds[1]["ids"], ids[2:4])
    np.savez(tmp_path / "batches.npz", ids=ids.reshape(5, 2, 6))  # (N, 2, 6): N batches
    feeds, _ = load_npz_feeds(tmp_path / "batches.npz", model)
    assert len(feeds) == 5 and feeds[4]["ids"].shape == (2, 6)
    np.savez(tmp_path / "bad.npz", ids=ids[:, :5])
    with pytest.raises(CalibrationError, match=r"input 'ids' .*expects .*got \(10, 5\)"):
        load_npz_feeds(tmp_path / "bad.npz", model)
    np.savez(tmp_path / "odd.npz", ids=ids[:9])  # 9 rows cannot form batches of 2
    with pytest.raises(CalibrationError, match=r"N·2"):
        load_npz_feeds(tmp_path / "odd.npz", model)
    # random token ids stay inside the embedding table
    r = random_feeds(model, n=20)
    assert max(f["ids"].max() for f in r) < 50 and max(f["ids"].max() for f in r) > 25


def test_random_masks_are_prefix_ones(tmp_path):
    from autoglm_compress.inputs import random_feeds

    nodes = [h.make_node("Cast", ["attention_mask"], ["y"], to=T.FLOAT)]
    m = h.make_tensor_value_info("attention_mask", T.INT64, [3, 9])
    g = h.make_graph(nodes, "g", [m], [h.make_tensor_value_info("y", T.FLOAT, [3, 9])])
    path = tmp_path / "mask.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    mask = random_feeds(load(path), n=1)[0]["attention_mask"]
    assert set(np.unique(mask)) <= {0, 1} and (mask[:, 0] == 1).all()
    assert (np.diff(mask, axis=1) <= 0).all()  # ones, then zeros

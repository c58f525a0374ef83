"""Target interface v2: a new target is a folder plus a registry entry (tests/fake_target), its
lowering table is checked before any calibration, artifacts have several files, one verifier."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from autoglm_compress import compress
from autoglm_compress.cli import main
from autoglm_compress.errors import UnsupportedOpError
from autoglm_compress.report import validate_report
from autoglm_compress.targets import get_target, register_target, target_names
from autoglm_compress.targets.registry import TARGETS


@pytest.fixture()
def fake():
    register_target("fake", "fake_target")
    from fake_target.target import FakeTarget

    FakeTarget.runs.clear()
    yield FakeTarget
    TARGETS.pop("fake", None)


def _model(path, act="Relu"):
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [6, 3, 3, 3], rng.standard_normal(162) * 0.3)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4),
        helper.make_node(act, ["c"], ["y"], name="act"),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 8])], [w],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_fake_target_is_a_folder_and_a_registry_entry(fake, tmp_path):
    assert "fake" in target_names()
    res = compress(_model(tmp_path / "m.onnx"), targets="fake", fp16=True, out_dir=tmp_path / "o",
                   fake_sidecar_indent=4)
    art = res.artifact("fake")
    assert set(art.files) == {"model", "meta"}
    meta = json.loads(art.files["meta"].read_text())
    assert meta["precision"] == "fp16" and art.files["meta"].read_text().startswith("{\n    ")
    assert art.size_bytes == sum(p.stat().st_size for p in art.files.values())
    assert art.fidelity["cosine_pooled"] > 0.999 and art.latency["measured_on"] == "onnxruntime CPU"
    assert fake.runs == ["check", "prepare", "validate", "emit", "verify"]
    d = res.report["artifacts"][0]
    assert set(d["files"]) == {"model", "meta"} and "fake: prepared" in d["notes"]
    assert [p["name"] for p in res.report["passes"]][-1] == "fp16[fake]"
    validate_report(res.report)


def test_check_refuses_before_calibration(fake, tmp_path, monkeypatch, capsys):
    import autoglm_compress.lowering as lowering

    monkeypatch.setattr(lowering, "calibrate", lambda *a, **k: pytest.fail("calibrated"))
    path = _model(tmp_path / "leaky.onnx", act="LeakyRelu")
    with pytest.raises(UnsupportedOpError) as e:
        compress(path, targets="fake", out_dir=tmp_path / "o")
    msg = str(e.value)
    assert "'LeakyRelu'" in msg and "'act'" in msg and "target fake" in msg and "--target" in msg
    assert not list((tmp_path / "o").glob("*.onnx"))
    # the x86 table has LeakyRelu: the same model passes its check
    assert get_target("x86").check(__import__("autoglm_compress").load(path), "fp32") == []


def test_precision_a_target_lacks_is_a_usage_error(fake, tmp_path, capsys):
    path = _model(tmp_path / "m.onnx")
    rc = main([str(path), "--target", "fake", "--int8", "--calib-random", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "fake has no int8 lowering" in err, err


def test_cuda_composes_and_tables_are_data():
    from autoglm_compress.targets.base import Target
    from autoglm_compress.targets.cuda import CudaTarget
    from autoglm_compress.targets.x86 import X86Target

    assert not issubclass(CudaTarget, X86Target) and issubclass(CudaTarget, Target)
    cuda, x86 = get_target("cuda"), get_target("x86", reduce_range=False)
    assert "Unique" in cuda.table.entry("int8")["unsupported"]  # inherited from fp32
    assert cuda.precision_passes("fp16") == ("fp16",) and x86.precision_passes("fp32") == ()
    assert x86.scheme().weight.reduce_range is False and cuda.scheme().activation.symmetric


def test_cuda_refuses_an_op_tensorrt_lacks(tmp_path):
    from autoglm_compress import load

    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["y"], name="uniq")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    del rng
    path = tmp_path / "u.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    model = load(path)
    with pytest.raises(UnsupportedOpError, match="'Unique'.*'uniq'.*cuda"):
        get_target("cuda").check(model, "fp32")
    assert get_target("x86").check(model, "fp32") == []

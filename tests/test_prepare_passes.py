"""Targets prepare through the pipeline (issue 27, item 3): each target declares its prepare
passes, the run applies them with records and ``--dump-ir-after``, and the emitters do not change
the model they are handed."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

from autoglm_compress import compress, load
from autoglm_compress.errors import ConfigError, UnsupportedOpError
from autoglm_compress.targets.ncnn.lower import lower_to_ncnn
from autoglm_compress.targets.ncnn.prepare_passes import NCNN_PREPARE
from autoglm_compress.targets.ncnn.target import NcnnTarget
from autoglm_compress.targets.tflite.lower import lower_to_tflite
from autoglm_compress.targets.tflite.target import TFLiteTarget
from autoglm_compress.targets.x86.target import X86Target


def test_each_target_declares_its_prepare_passes():
    assert TFLiteTarget().prepare_passes("fp32") == ("fold_shapes", "decompose_lpnorm", "fuse_gelu")
    assert NcnnTarget().prepare_passes("int8") == ("fold_shapes", *NCNN_PREPARE, "decompose_lpnorm", "fuse_gelu")
    assert "fold_reshape_chains" in NCNN_PREPARE and "lift_rows" in NCNN_PREPARE
    assert X86Target().prepare_passes("fp32") == () and X86Target().prepare_passes("int8") == (
        "fuse_gelu",)


def test_prepare_passes_are_recorded_and_dumped(saved, tmp_path):
    src = saved("transformer", "onnx")
    res = compress(src, targets="arm", samples=4, latency_repeats=1, out_dir=tmp_path / "o",
                   dump_ir_after=("fuse_gelu",))
    rec = next(p for p in res.report["passes"] if p["name"] == "fuse_gelu[arm/tflite]")
    assert rec["stats"]["gelu_fused"] >= 2 and rec["modified"]
    dumped = onnx.load(str(tmp_path / "o" / "ir_after_fuse_gelu.onnx"))
    ops = {(n.domain, n.op_type) for n in dumped.graph.node}
    assert ("com.microsoft", "Gelu") in ops and ("", "Erf") not in ops
    assert any("GELU patterns fused into TFLite GELU" in n for n in res.artifact("arm").notes)


def test_dump_after_a_pass_no_target_runs_is_refused_naming_the_prepare_passes(saved, tmp_path):
    with pytest.raises(ConfigError, match="lift_rows") as e:
        compress(saved("mlp", "onnx"), targets="arm", out_dir=tmp_path / "o",
                 dump_ir_after=("lift_rows",))
    assert "fuse_gelu" in str(e.value)  # the arm (TFLite) pipeline's passes are listed


def test_emitters_do_not_change_their_input(saved):
    m = load(saved("transformer", "onnx"))
    before = ir.to_proto(m).SerializeToString()
    with pytest.raises(UnsupportedOpError, match="fuse_gelu"):
        lower_to_tflite(m, "fp32")  # an unfused GELU: refused, not rewritten behind the caller
    assert ir.to_proto(m).SerializeToString() == before
    prepared, stats = TFLiteTarget().prepared(m, "fp32")
    assert stats["fuse_gelu"]["gelu_fused"] >= 2
    assert ir.to_proto(m).SerializeToString() == before  # prepared() works on a copy
    lower_to_tflite(prepared, "fp32")
    d = load(saved("cnn", "onnx"))
    before = ir.to_proto(d).SerializeToString()
    lower_to_ncnn(d, "fp32")
    assert ir.to_proto(d).SerializeToString() == before

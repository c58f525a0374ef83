"""PassContext: passes declare what they need, the pipeline checks it before the first pass runs,
a data-driven pass is one class, shapes are re-inferred after a pass that changes them."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx_ir.passes import PassResult

from autoglm_compress.calibration.data import open_calibration_source
from autoglm_compress.errors import ConfigError
from autoglm_compress.ir_utils import from_proto
from autoglm_compress.passes.base import CompressPass, PassConfig, field, registered
from autoglm_compress.passes.context import PassContext
from autoglm_compress.pipeline import Pipeline, build_passes


def _reshape_model():
    g = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape"),
         helper.make_node("Relu", ["y"], ["z"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [3, 4])],
    )
    import onnx

    from autoglm_compress import frontend  # noqa: F401 - the IR the front end makes

    proto = onnx.shape_inference.infer_shapes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    )
    return from_proto(proto)


@dataclasses.dataclass(frozen=True)
class _MeanConfig(PassConfig):
    samples: int = field(3, help="samples to read")


class InputMeanPass(CompressPass):
    """A data-driven pass in one class: reads ctx.data, records the mean of the first input."""

    name = "input_mean_test"
    config_class = _MeanConfig
    needs = frozenset({"data"})

    def call(self, model):
        feeds = list(self.ctx.data.take(self.config.samples))
        name = model.graph.inputs[0].name
        self.stats["samples"] = len(feeds)
        self.stats["mean"] = float(np.mean([f[name] for f in feeds]))
        return PassResult(model, modified=False)


class TransposeShapePass(CompressPass):
    """Swaps the Reshape target [3, 4] → [4, 3]: value shapes downstream change."""

    name = "swap_reshape_test"
    changes_shapes = True

    def call(self, model):
        shape = model.graph.initializers["shape"]
        shape.const_value = ir.tensor(np.array([4, 3], np.int64), name="shape")
        return PassResult(model, modified=True)


def test_needs_are_checked_before_the_first_pass(monkeypatch):
    from autoglm_compress.passes.fold_bn import FoldBatchNormPass as FoldBNPass

    monkeypatch.setattr(FoldBNPass, "call", lambda self, m: pytest.fail("a pass ran first"))
    pipe = Pipeline(build_passes(["fold_bn", "smoothquant"]), progress=False)
    with pytest.raises(ConfigError, match="pass 'smoothquant' needs calibration data: give --calib"):
        pipe.run(_reshape_model(), PassContext())
    with pytest.raises(ConfigError, match="pass 'qat' needs"):
        Pipeline(build_passes(["qat"]), progress=False).run(_reshape_model(), PassContext())


def test_a_data_driven_pass_reads_the_context(tmp_path):
    model = _reshape_model()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((5, 1, 12)).astype(np.float32) + 2.0)
    ctx = PassContext(data=open_calibration_source(str(tmp_path / "c.npz"), model))
    [rec] = Pipeline([InputMeanPass()], progress=False).run(model, ctx)
    assert rec.stats["samples"] == 3 and 1.5 < rec.stats["mean"] < 2.5
    assert rec.config == {"samples": 3}


def test_shapes_are_reinferred_after_a_shape_changing_pass():
    model = _reshape_model()
    y = next(n for n in model.graph if n.name == "reshape").outputs[0]
    assert list(y.shape) == [3, 4]
    Pipeline([TransposeShapePass()], progress=False).run(model)
    assert list(y.shape) == [4, 3]
    z = model.graph.outputs[0]
    assert list(z.shape) == [4, 3]


def test_builtin_data_passes_declare_their_needs():
    reg = registered()
    assert reg["smoothquant"].needs == {"data"}
    assert reg["bias_correction"].needs == {"stats", "target"}
    assert reg["quantize"].needs == {"stats", "target"}
    assert {"data", "teacher", "stats", "target"} <= reg["qat"].needs
    assert reg["fold_bn"].needs == frozenset()


def test_passes_cli_lists_each_pass_once_with_its_needs(capsys):
    from autoglm_compress.cli import main

    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    heads = [line.split(":")[0] for line in out.splitlines() if not line.startswith(" ")]
    assert len(heads) == len(set(heads)) and "qat" in heads
    assert "cleanup: cleanup" not in out and "(needs data)" in out

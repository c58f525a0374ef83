"""cuda target: TensorRT-ready ONNX — explicit-quantization QDQ INT8, or FP16 — plus the engine command.

TensorRT's rules (formats.md, TensorRT section): zero points 0 (symmetric int8 activations, per-tensor
[-128, 127]); weights symmetric per-channel int8 (Conv axis 0, ConvTranspose axis 1, Gemm transB axis 0,
MatMul weight axis 1); Q/DQ on the inputs of Conv/ConvTranspose/Gemm/MatMul and not on their outputs
(TensorRT fuses BN/ReLU itself and decides output precision); the residual input of a skip Add is
quantized so the Add fuses into the producing conv; biases stay float (TensorRT folds them).
``validate`` checks those rules on the lowered graph (trt_rules.py). Verification on CPU runs the QDQ
ONNX in onnxruntime (said in the report: ``latency.measured_on``). With ``build_engine`` and a GPU with
the ``tensorrt`` package, the engine is built with the TensorRT Python builder and run (engine.py).
Composes the ONNX writer and the onnxruntime runner; it is not an x86 target.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import onnx_ir as ir

from autoglm_compress.errors import UnsupportedOpError
from autoglm_compress.quantization.scheme import QuantScheme, TensorQuant
from autoglm_compress.targets.base import Artifact, Target, VerifyContext, verify_in_runtime
from autoglm_compress.targets.cuda.options import Options
from autoglm_compress.targets.cuda.trt_rules import check_tensorrt_rules
from autoglm_compress.targets.ort_runner import ort_runner
from autoglm_compress.targets.x86.target import emit_onnx

__all__ = ["CudaTarget", "tensorrt_scheme", "trtexec_command", "TARGET"]

logger = logging.getLogger(__name__)

_TRT_INPUT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"})


def tensorrt_scheme() -> QuantScheme:
    return QuantScheme(
        name="tensorrt-s8s8-sym",
        activation=TensorQuant("int8", symmetric=True),
        weight=TensorQuant("int8", symmetric=True, per_channel=True, narrow_range=True),
        input_ops=_TRT_INPUT_OPS,
        output_ops=frozenset(),
        fused_activations=frozenset(),
        shared_scale_ops=frozenset(),
        bias_int32=False,
        residual_add_only=True,
    )


def trtexec_command(onnx_path: Path, precision: str) -> dict:
    """Commands that build the engine: TensorRT 10+/11 (strongly typed from the ONNX types) and 8.x."""
    base = [
        "trtexec",
        f"--onnx={onnx_path.name}",
        f"--saveEngine={onnx_path.with_suffix('.plan').name}",
    ]
    legacy = {"int8": ["--int8", "--fp16"], "fp16": ["--fp16"]}.get(precision, [])
    return {
        "tensorrt>=10": shlex.join([*base, "--stronglyTyped"]),
        "tensorrt8": shlex.join([*base, *legacy]),
    }


class CudaTarget(Target):
    """Emits TensorRT-ready ONNX; verifies it in onnxruntime on CPU (and TensorRT where available)."""

    name = "cuda"
    runtime = "onnxruntime (CPU) — TensorRT engine where a GPU exists"
    precisions = ("fp32", "fp16", "int8")
    options_class = Options
    lowering_file = Path(__file__).with_name("lowering.toml")

    @property
    def build_engine(self) -> bool:
        return self.options.build_engine

    def scheme(self) -> QuantScheme:
        return tensorrt_scheme()

    def validate(self, model: ir.Model, precision: str) -> list[str]:
        """TensorRT's explicit-quantization rules (trt_rules.py); the first violation stops the
        run before anything is written."""
        if precision != "int8":
            return []
        rules = check_tensorrt_rules(model)
        if rules["violations"]:
            node, _, what = rules["violations"][0].partition(": ")
            raise UnsupportedOpError(
                "QDQ", node, "cuda target", f"TensorRT rule: {what}; quantize with --target cuda"
            )
        if rules["float_input_layers"]:
            names = ", ".join(rules["float_input_layers"][:5])
            return [f"TensorRT runs these weighted layers in float (input not quantized): {names}"]
        return []

    def emit(self, model: ir.Model, precision: str, out_dir: Path, stem: str) -> Artifact:
        art = emit_onnx(model, self, precision, out_dir, stem)
        art.extra["trtexec"] = trtexec_command(art.path, precision)
        if precision == "int8":
            art.extra["tensorrt_rules"] = check_tensorrt_rules(model)
        return art

    def verify(self, artifact: Artifact, ctx: VerifyContext) -> None:
        # QDQ simulated (no fused CPU int8 kernels): TensorRT's integer maths, not AVX2's
        # saturating int16 pair sums
        sim = artifact.precision == "int8"
        verify_in_runtime(
            ort_runner(artifact.path, simulate=sim), artifact, ctx,
            "onnxruntime CPU, QDQ run as written (not TensorRT)" if sim
            else "onnxruntime CPU (not TensorRT)",
        )
        artifact.notes.append("latency above is onnxruntime on CPU, not TensorRT" + (
            " (the QDQ graph unfused: its float maths, not an int8 speed)" if sim else ""))
        if self.build_engine:
            from autoglm_compress.targets.cuda.engine import build_and_compare

            artifact.extra["tensorrt"] = build_and_compare(artifact, ctx)


TARGET = CudaTarget

"""x86 target: an ONNX file for ONNX Runtime's CPU execution provider (FP32 / FP16).

Verification runs the artifact in onnxruntime on the sample feeds, compares with the executor's FP32
reference outputs, and times the FP32 reference model and the artifact side by side in onnxruntime.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx_ir as ir

from autoglm_compress.errors import VerificationError
from autoglm_compress.ir_utils import ort_run, ort_session, save_atomic, to_proto
from autoglm_compress.metrics import compare_latency, fidelity
from autoglm_compress.targets.base import Artifact, Target, VerifyContext

__all__ = ["X86Target"]

logger = logging.getLogger(__name__)


class X86Target(Target):
    name = "x86"
    runtime = "onnxruntime (CPUExecutionProvider)"
    precisions = ("fp32", "fp16")

    def emit(self, model: ir.Model, precision: str, out_dir: Path, stem: str) -> Artifact:
        path = out_dir / f"{stem}.{self.name}.{precision}.onnx"
        save_atomic(model, path)
        return Artifact(self.name, precision, path, runtime=self.runtime).finalize()

    def verify(self, artifact: Artifact, ctx: VerifyContext) -> None:
        try:
            sess = ort_session(str(artifact.path))
            got = [ort_run(sess, f) for f in ctx.feeds]
        except Exception as e:  # noqa: BLE001
            raise VerificationError(f"{artifact.path}: onnxruntime cannot run the artifact: "
                                    f"{str(e).splitlines()[0]}") from None
        artifact.fidelity = fidelity(ctx.reference_outputs, got, ctx.output_names, ctx.labels)
        ref_sess = ort_session(to_proto(ctx.reference_model).SerializeToString())
        feed = ctx.feeds[0]
        artifact.latency = compare_latency(
            {"fp32": lambda: ort_run(ref_sess, feed), artifact.precision: lambda: ort_run(sess, feed)},
            repeats=ctx.latency_repeats)
        base = artifact.latency["fp32"]["median_ms"]
        artifact.latency["speedup_vs_fp32"] = round(base / max(artifact.latency[artifact.precision]["median_ms"], 1e-9), 3)

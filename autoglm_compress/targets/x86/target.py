"""x86 target: an ONNX file for ONNX Runtime's CPU execution provider (FP32 / FP16 / INT8 QDQ).

INT8 scheme (formats.md, ONNX Runtime section): activations uint8 asymmetric per-tensor (fused into
QLinear* kernels whatever the fan-out; signed activations are fused only with a single consumer),
weights int8 symmetric per-channel, int32 biases. Q/DQ on the inputs and outputs of the ops ORT has
quantized kernels for; Relu/Clip before a Q are absorbed; reshape-like ops and MaxPool share their
input's scale so that ORT drops the Q/DQ around them.

Weights: onnxruntime's u8·s8 kernels on AVX2 without VNNI add pairs of products into int16 with
saturation (VPMADDUBSW). On such a CPU (``--cpu avx2``, or ``auto`` on a host without VNNI flags)
each Conv/Gemm/MatMul whose pair sums can saturate over its calibrated input range, and whose
output that saturation, simulated on a few held-out samples, changes more than its 8-bit weight
rounding does, keeps its 8-bit weights stored as uint8 (zero point 128): onnxruntime's U8U8 kernel
adds int16 products in int32 (:mod:`autoglm_compress.quantization.saturation`). The others, and
every layer on a VNNI CPU, are int8 (the fast U8S8 kernel). ``--reduce-range`` / ``--full-range``
force 7-bit / 8-bit int8 weights for every layer.

Verification runs the artifact in onnxruntime on the sample feeds (the shared verifier), and for
INT8 reads onnxruntime's optimized graph to count what really runs in int8.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx_ir as ir

from autoglm_compress.ir_utils import save_atomic
from autoglm_compress.quantization.saturation import host_cpu
from autoglm_compress.quantization.scheme import QuantScheme, TensorQuant
from autoglm_compress.targets.base import Artifact, Target, VerifyContext, verify_in_runtime
from autoglm_compress.targets.ort_runner import ort_runner
from autoglm_compress.targets.x86.fusion import fusion_report
from autoglm_compress.targets.x86.options import Options

__all__ = ["X86Target", "x86_scheme", "emit_onnx", "TARGET"]

logger = logging.getLogger(__name__)

_QOPS = frozenset(
    {"Conv", "Gemm", "MatMul", "Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool"}
)
_SHARED = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"})


def x86_cpu(cpu: str = "auto") -> str:
    """``avx2`` or ``vnni``: ``auto`` reads this machine's flags (a non-x86 host counts as vnni:
    its int8 dot products do not saturate)."""
    if cpu != "auto":
        return cpu
    return "avx2" if host_cpu() == "avx2" else "vnni"


def x86_scheme(
    reduce_range: bool | None = None, activation_dtype: str = "uint8", cpu: str = "auto"
) -> QuantScheme:
    """``reduce_range`` None: per layer on an AVX2 CPU with uint8 activations (the saturation
    rule), 7-bit everywhere on AVX2 with int8 activations, 8-bit on VNNI."""
    guard = False
    if reduce_range is None:
        avx2 = x86_cpu(cpu) == "avx2"
        guard = avx2 and activation_dtype == "uint8"
        reduce_range = avx2 and not guard
    tag = "-sat" if guard else "-rr" if reduce_range else ""
    return QuantScheme(
        name=f"x86-{'u8' if activation_dtype == 'uint8' else 's8'}s8{tag}",
        activation=TensorQuant(activation_dtype, symmetric=activation_dtype == "int8"),
        weight=TensorQuant(
            "int8", symmetric=True, per_channel=True, narrow_range=True, reduce_range=reduce_range
        ),
        input_ops=_QOPS,
        output_ops=_QOPS,
        shared_scale_ops=_SHARED,
        quantize_embeddings=True,
        saturation_guard=guard,
    )


def emit_onnx(model: ir.Model, target: Target, precision: str, out_dir: Path, stem: str) -> Artifact:
    """One ONNX file, written atomically: ``<stem>.<target>.<precision>.onnx``."""
    path = out_dir / f"{stem}.{target.name}.{precision}.onnx"
    save_atomic(model, path)
    return Artifact(target.name, precision, {"model": path}, runtime=target.runtime).finalize()


class X86Target(Target):
    name = "x86"
    runtime = "onnxruntime (CPUExecutionProvider)"
    precisions = ("fp32", "fp16", "int8")
    options_class = Options
    lowering_file = Path(__file__).with_name("lowering.toml")
    def int8_strategies(self) -> tuple[type, ...]:
        """The defaults, then the latency guard: the host's onnxruntime is this artifact's own
        runtime, so it can time the QDQ graph against FP32."""
        from autoglm_compress.int8_strategies import DEFAULT_STRATEGIES, LatencyGuard

        return (*DEFAULT_STRATEGIES, LatencyGuard)

    def record_config(self) -> dict:
        return {"cpu": self.cpu_rule}

    @property
    def reduce_range(self) -> bool:
        return self.scheme().weight.reduce_range

    @property
    def cpu_rule(self) -> str:
        """For the report: which CPU the weight widths were chosen for, and why."""
        cpu = self.options.cpu
        got = x86_cpu(cpu)
        how = "--cpu" if cpu != "auto" else (
            "auto: this host has no VNNI" if got == "avx2" else "auto: this host's int8 dot products do not saturate")
        if self.options.reduce_range is not None:
            how += f"; every layer {'7' if self.options.reduce_range else '8'}-bit (forced)"
        return f"{got} ({how})"

    @property
    def int8_runs_here(self) -> bool:
        """The artifact is for this host's kind of CPU (``--cpu auto`` or naming it): its int8
        kernels are the ones to judge it by, saturation included."""
        return x86_cpu(self.options.cpu) == x86_cpu("auto")

    def weights_only_config(self) -> dict:
        """Dynamic int8 MatMul/Gemm (DynamicQuantizeMatMul), weight widths for this CPU."""
        return {"form": "dynamic", "cpu": x86_cpu(self.options.cpu)}

    def scheme(self) -> QuantScheme:
        o = self.options
        return x86_scheme(o.reduce_range, o.activation_dtype, o.cpu)

    def prepare_passes(self, precision: str) -> tuple[str, ...]:
        """INT8: GELU written out with Erf → onnxruntime's fused contrib Gelu, which runs float
        between one DequantizeLinear and one QuantizeLinear (instead of a float Div/Erf/Add and
        an int8 Mul with a Q/DQ pair of its own). FP32/FP16: onnxruntime fuses it itself."""
        return ("fuse_gelu",) if precision == "int8" else ()

    def prepare(self, model: ir.Model, precision: str, stats: dict[str, dict]) -> list[str]:
        n = stats.get("fuse_gelu", {}).get("gelu_fused", 0)
        return [f"{n} GELU patterns fused into onnxruntime's Gelu"] if n else []

    def emit(self, model: ir.Model, precision: str, out_dir: Path, stem: str) -> Artifact:
        return emit_onnx(model, self, precision, out_dir, stem)

    def verify(self, artifact: Artifact, ctx: VerifyContext) -> None:
        verify_in_runtime(ort_runner(artifact.path), artifact, ctx, "onnxruntime CPU")
        if artifact.precision != "int8":
            return
        if not self.int8_runs_here:
            made, here = x86_cpu(self.options.cpu), x86_cpu("auto")
            artifact.notes.append(
                f"made for {made.upper()} CPUs (--cpu {made}) but verified in this host's "
                f"{here.upper()} int8 kernels"
                + (", whose int16 pair sums saturate where VNNI's int32 sums do not: expect "
                   "these figures or better on the CPU it is for" if here == "avx2" else
                   ", which do not saturate where AVX2's VPMADDUBSW does: the CPU it is for "
                   "may show less than these figures")
            )
        fusion = fusion_report(str(artifact.path))
        artifact.extra["ort_fusion"] = fusion
        if fusion["float_compute_nodes"]:
            artifact.notes.append(
                f"{fusion['float_compute_nodes']} compute nodes still run in float "
                f"in onnxruntime ({fusion['int8_compute_nodes']} in int8)"
            )
        if artifact.latency["speedup_vs_fp32"] < 1.0:
            artifact.notes.append(
                f"INT8 runs slower than FP32 here ({artifact.latency['speedup_vs_fp32']}x)"
            )


TARGET = X86Target

"""arm target, TFLite: a ``.tflite`` flatbuffer written by our own emitter (lower.py, builder.py),
verified in LiteRT (``ai_edge_litert``) with XNNPACK (the default delegate) and with the reference
kernels, which fail differently (formats.md). FP32, FP16 (float16 weights + DEQUANTIZE) and INT8.

INT8 scheme (TFLite quantization spec, formats.md): activations int8 asymmetric per-tensor, weights
int8 symmetric per-channel in [-127, 127], int32 biases with scale = input scale × weight scale;
equal scales in and out of pooling, concat, reshape, transpose, resize. The QDQ IR written under
this scheme is lowered to int8 kernels (lower_int8.py); ops without an int8 kernel here run float
between DEQUANTIZE/QUANTIZE. Verification also compares the .tflite with the QDQ IR run in
onnxruntime (our own INT8 simulation), which separates lowering bugs from quantization error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx_ir as ir

from autoglm_compress.errors import ConfigError
from autoglm_compress.ir_utils import write_bytes_atomic
from autoglm_compress.metrics import fidelity, merge_worst
from autoglm_compress.targets.base import (
    Artifact,
    Target,
    VerifyContext,
    time_precisions,
    verify_in_runtime,
)
from autoglm_compress.targets.tflite.census import MAX_FLOAT_MAC_SHARE, census
from autoglm_compress.targets.tflite.litert_run import interpreter, litert_runner
from autoglm_compress.targets.tflite.lower import RULES, lower_to_tflite, unsupported_reason
from autoglm_compress.targets.tflite.lower_int8 import INT8_OPS as _QOPS
from autoglm_compress.targets.tflite.options import Options

__all__ = ["TFLiteTarget", "litert_runner", "TARGET"]

logger = logging.getLogger(__name__)


# Kernels with a fixed output scale / zero point (formats.md: LOGISTIC, SOFTMAX 1/256 and −128,
# TANH 1/128 and 0).
_FIXED = {"Sigmoid": (1.0 / 256.0, -128), "Softmax": (1.0 / 256.0, -128),
          "Tanh": (1.0 / 128.0, 0)}
# Below this cosine between the .tflite and the QDQ model it was lowered from, the report warns.
MIN_VS_QDQ = 0.99
# The artifact's error (1 − cosine vs the simulation) up to this many times onnxruntime's int8
# kernels' own is integer rounding, not the lowering (compare_with_qdq_simulation).
ROUNDING_SPREAD = 2.0
_CPU = {"vnni": "x86 VNNI", "avx2": "x86 AVX2 (no VNNI: its int16 pair sums can saturate)",
        "other": "non-x86"}
_SHARED = frozenset({"MaxPool", "AveragePool", "Concat", "Reshape", "Flatten", "Transpose",
                     "Resize", "Squeeze", "Unsqueeze", "Pad", "GlobalMaxPool", "ReduceMax",
                     "Split", "Slice"})


def tflite_scheme():
    from autoglm_compress.quantization.scheme import QuantScheme, TensorQuant

    return QuantScheme(
        name="tflite-s8s8",
        activation=TensorQuant("int8", symmetric=False),
        weight=TensorQuant("int8", symmetric=True, per_channel=True, narrow_range=True),
        input_ops=_QOPS,
        output_ops=_QOPS,
        shared_scale_ops=_SHARED,
        quantize_graph_outputs=True,
        fixed_output=_FIXED,
    )


class TFLiteTarget(Target):
    name = "arm"
    tag = "arm/tflite"
    runtime = "LiteRT (ai_edge_litert, XNNPACK)"
    precisions = ("fp32", "fp16", "int8")
    options_class = Options
    lowering_file = Path(__file__).with_name("lowering.toml")
    rules = RULES  # the table's supported ops are the emitter's rules (rules.py)
    alternatives = "--target x86"

    def check(self, model: ir.Model, precision: str) -> list[str]:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
            import flatbuffers  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                f"--target arm writes and verifies TFLite with LiteRT, but {e.name} is not "
                "installed: pip install 'autoglm-compress[runtimes]'"
            ) from None
        prepared, _ = self.prepared(model, precision)  # what will be lowered, on a copy
        self.refuse_dynamic(prepared, precision)
        super().check(prepared, precision)
        self.refuse_unsupported(prepared, precision, unsupported_reason)
        return []

    def scheme(self):
        return tflite_scheme()

    def int8_strategies(self) -> tuple[type, ...]:
        """The defaults, then ``--latency-guard``'s arm mode: op types kept int8 only where
        aarch64 LiteRT runs them in fewer guest instructions (qemu-aarch64)."""
        from autoglm_compress.int8_strategies import DEFAULT_STRATEGIES, ArmLatencyGuard

        return (*DEFAULT_STRATEGIES, ArmLatencyGuard)

    def weights_only_config(self) -> dict:
        """DQ(int8 W) → op, which ``emit`` turns into TFLite dynamic-range ops."""
        return {"form": "weights"}

    def prepare_passes(self, precision: str) -> tuple[str, ...]:
        """Shapes fixed to the data's and folded (fold_shapes.py: the .tflite is static), then
        LpNormalization written out (decompose_lpnorm.py), GELU written out with Erf → one Gelu
        node (TFLite's GELU kernel; one int8 op)."""
        return ("fold_shapes", "decompose_lpnorm", "fuse_gelu")

    def prepare(self, model: ir.Model, precision: str, stats: dict[str, dict]) -> list[str]:
        n = stats.get("fuse_gelu", {}).get("gelu_fused", 0)
        return [f"{n} GELU patterns fused into TFLite GELU"] if n else []

    def emit(self, model: ir.Model, precision: str, out_dir: Path, stem: str) -> Artifact:
        extra = {}
        weights_only = precision == "int8" and not any(
            n.op_type == "QuantizeLinear" for n in model.graph)
        if weights_only:  # --weights-only: TFLite dynamic-range ops
            data = lower_to_tflite(model, "fp32", hybrid=True)
            extra["weights_only"] = "TFLite dynamic-range: int8 weights, float activations"
        elif precision == "int8":
            from autoglm_compress.targets.tflite.lower_int8 import lower_qdq_to_tflite

            data, split = lower_qdq_to_tflite(model, self.options.io)
            extra["tflite_ops"] = census(data, split["reasons"])
        else:
            data = lower_to_tflite(model, precision)
        path = out_dir / f"{stem}.arm.{precision}.tflite"
        write_bytes_atomic(path, data)
        art = Artifact(self.name, precision, {"model": path}, runtime=self.runtime).finalize()
        art.extra["format"] = "tflite"
        art.extra.update(extra)
        if "tflite_ops" in extra:
            art.notes += _census_notes(extra["tflite_ops"])
        return art

    def describe_io(self, artifact: Artifact, model: ir.Model) -> dict:
        """Inputs/outputs as LiteRT sees the file (full-integer IO shows int8/uint8 + scales)."""
        it = interpreter(artifact.path)

        def one(d):
            s, z = d["quantization"]
            quant = {"scale": float(s), "zero_point": int(z), "dtype": np.dtype(d["dtype"]).name}
            return {"name": d["name"], "shape": [int(x) for x in d["shape"]],
                    "dtype": np.dtype(d["dtype"]).name, "quant": quant if s else None}

        return {"inputs": [one(d) for d in it.get_input_details()],
                "outputs": [one(d) for d in it.get_output_details()]}

    def verify(self, artifact: Artifact, ctx: VerifyContext) -> None:
        threads = self.options.threads
        verify_in_runtime(litert_runner(artifact.path, threads), artifact, ctx,
                          f"LiteRT XNNPACK, {threads} threads")
        ref = litert_runner(artifact.path, threads, reference_kernels=True)()
        got = [ref(f) for f in ctx.feeds]
        fid = fidelity(ctx.reference_outputs, got, ctx.output_names, ctx.labels, ctx.batch)
        artifact.extra["reference_kernels"] = {k: fid[k] for k in ("cosine_min", "cosine_pooled")}
        if fid["cosine_pooled"] < artifact.fidelity["cosine_pooled"] - 1e-3:
            artifact.notes.append("LiteRT reference kernels disagree with XNNPACK (cosine "
                                  f"{fid['cosine_pooled']:.5f})")
        merge_worst(artifact.fidelity, fid, "LiteRT reference kernels")  # the gate sees both
        artifact.latency["litert"] = self._litert_side_by_side(artifact, ctx)
        qdq = ctx.lowered_model
        if artifact.precision == "int8" and qdq is not None and "tflite_ops" in artifact.extra:
            run = litert_runner(artifact.path, threads)()
            extra, note = compare_with_qdq_simulation(qdq, ctx.feeds, ctx.output_names,
                                                      [run(f) for f in ctx.feeds], ".tflite")
            artifact.extra.update(extra)
            if note:
                artifact.notes.append(note)

    def _litert_side_by_side(self, artifact: Artifact, ctx: VerifyContext) -> dict:
        """FP32, FP16 and (for an INT8 artifact) INT8 .tflite of the same model timed interleaved
        in LiteRT (XNNPACK, the target's threads): what moving precision buys in the runtime the
        artifact ships to. The FP32/FP16 files are lowered from the FP32 IR into a temporary
        folder and not kept."""
        import tempfile

        threads = self.options.threads
        paths = {artifact.precision: artifact.path}
        with tempfile.TemporaryDirectory(prefix="agc_litert_") as tmp:
            for prec in ("fp32", "fp16"):
                if prec not in paths:
                    p = Path(tmp) / f"side.{prec}.tflite"
                    p.write_bytes(lower_to_tflite(ctx.fp32_for_target(), prec))
                    paths[prec] = p
            runners = {prec: litert_runner(paths[prec], threads)()
                       for prec in ("fp32", "fp16", "int8") if prec in paths}
            return time_precisions(runners, ctx.feeds[0], ctx.latency_repeats, threads)


def compare_with_qdq_simulation(qdq: ir.Model, feeds: list[dict], names: list[str],
                                got: list[list[np.ndarray]], what: str) -> tuple[dict, str | None]:
    """The artifact's outputs ``got`` against the QDQ model run as written (onnxruntime, graph
    optimizations off: float maths with exact Q/DQ, the same on every CPU): ``extra`` entries
    (``vs_qdq_simulation``; below MIN_VS_QDQ also ``vs_qdq_simulation_ort_int8``) and a WARNING
    or None.

    Below MIN_VS_QDQ the same QDQ model also runs in onnxruntime's own integer kernels (graph
    optimizations on: QLinearConv / QLinearMatMul ... fused) on the same samples and is scored
    against the same simulation the same way (cosine, worst sample): what a second, independent
    int8 runtime departs by through integer rounding alone (requantization, fused activations,
    int32 bias). Some models amplify that rounding (PP-OCR's recognizer: 0.93 in onnxruntime's
    kernels); there a low figure does not mean the lowering is wrong. The warning blames the
    lowering only when the artifact's error (1 − cosine) exceeds ROUNDING_SPREAD × onnxruntime's:
    two correct integer runtimes differ from the simulation by different roundings, so their
    errors differ by a small factor (PP-OCR rec, 16 samples: .tflite 0.099, onnxruntime 0.066,
    1.5×; LiteRT's reference kernels vs XNNPACK 0.035), while a lowering bug (a wrong scale, zero
    point or layout) costs far more than the model's rounding. A ratio, not an absolute margin:
    where onnxruntime's kernels agree with the simulation (0.9999) an artifact at 0.98 is the
    lowering's doing, which ``≥ ort − 0.02`` would excuse.
    onnxruntime's kernels depend on this CPU (AVX2 without VNNI saturates int16 pair sums,
    quantization/saturation.py), so the record says which CPU kind measured it."""
    from autoglm_compress.ir_utils import ort_run, ort_session

    sess = ort_session(qdq, simulate=True)
    sim = [ort_run(sess, f) for f in feeds]
    vs = fidelity(sim, got, names)
    extra: dict = {"vs_qdq_simulation": {k: vs[k] for k in ("cosine_min", "cosine_pooled")}}
    if vs["cosine_min"] >= MIN_VS_QDQ:
        return extra, None
    head = (f"WARNING: the {what} departs from the QDQ model it was lowered from (cosine "
            f"{vs['cosine_min']:.4f} < {MIN_VS_QDQ})")
    ref = ort_int8_vs_simulation(qdq, feeds, names, sim)
    extra["vs_qdq_simulation_ort_int8"] = ref
    if "cosine_min" not in ref:
        return extra, f"{head}: the lowering adds error beyond quantization"
    o = ref["cosine_min"]
    kernels = f"onnxruntime's int8 kernels give {o:.4f} on this {_CPU[ref['host_cpu']]} CPU"
    if 1.0 - vs["cosine_min"] <= ROUNDING_SPREAD * max(1.0 - o, 0.0):
        return extra, (f"{head}: the model is sensitive to integer rounding, not to this "
                       f"lowering: any int8 runtime shows it ({kernels})")
    return extra, f"{head}: the lowering adds error beyond integer rounding ({kernels})"


def ort_int8_vs_simulation(qdq: ir.Model, feeds: list[dict], names: list[str],
                           sim: list[list[np.ndarray]]) -> dict:
    """The QDQ model in onnxruntime's fused integer kernels (ORT_ENABLE_ALL) against its own
    simulation ``sim``: cosine (worst sample and pooled), what it is, on which CPU kind."""
    from autoglm_compress.ir_utils import ort_run, ort_session
    from autoglm_compress.quantization.saturation import host_cpu

    rec = {"what": "the QDQ model in onnxruntime's fused int8 kernels vs its simulation",
           "host_cpu": host_cpu()}
    try:
        sess = ort_session(qdq)  # graph optimizations on: QLinear* kernels
        got = [ort_run(sess, f) for f in feeds]
    except Exception as e:  # noqa: BLE001 - a reference figure only: say why it is missing
        rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return rec
    fid = fidelity(sim, got, names)
    rec.update({k: fid[k] for k in ("cosine_min", "cosine_pooled")})
    return rec


def _census_notes(ops: dict) -> list[str]:
    """Notes on an INT8 .tflite's census: which ops run float and why; a warning when float ops
    carry more than MAX_FLOAT_MAC_SHARE of the MACs."""
    notes = []
    if ops["float"]:
        why: dict[str, list[str]] = {}
        for f in ops["float_ops"]:
            why.setdefault(f["reason"], []).append(f["node"] or f["op"])
        parts = "; ".join(f"{', '.join(dict.fromkeys(n))}: {r}" for r, n in why.items())
        notes.append(f"{ops['float']} of {ops['total']} TFLite ops run float ({parts})")
    if ops["float_mac_share"] > MAX_FLOAT_MAC_SHARE:
        notes.append(f"WARNING: {ops['float_mac_share']:.0%} of the MACs run in float ops of "
                     "this INT8 .tflite")
    return notes


TARGET = TFLiteTarget


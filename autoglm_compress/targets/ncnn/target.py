"""arm target, ncnn format (``--target arm --format ncnn|all``): ``<stem>.arm.<p>.ncnn.param`` +
``.ncnn.bin`` written by our own emitter (lower.py, param.py), verified in the ``ncnn`` Python
runtime. FP32 runs with fp16 storage off (exact to float rounding); FP16 = ncnn's fp16 weight tag,
run with fp16 storage on; INT8 = int8 convolution / inner-product weights with per-channel scales and
a per-layer input scale in ncnn's own int8 format, run with ``use_int8_inference``.

INT8 scheme (ncnn's, as ncnn2table/ncnn2int8 make it): symmetric int8 activations (scale only),
symmetric per-output-channel weights, fp32 biases; only the inputs of Conv / Gemm / MatMul are
quantized — ncnn runs those layers int8 and everything else float.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx_ir as ir

from autoglm_compress.errors import ConfigError, VerificationError
from autoglm_compress.ir_utils import write_bytes_atomic
from autoglm_compress.targets.base import (
    Artifact,
    Target,
    VerifyContext,
    time_precisions,
    verify_in_runtime,
)
from autoglm_compress.targets.ncnn.batch_input import refuse_batch
from autoglm_compress.targets.ncnn.lower import RULES, lower_to_ncnn, unsupported_reason
from autoglm_compress.targets.ncnn.ncnn_run import ncnn_runner
from autoglm_compress.targets.ncnn.options import Options
from autoglm_compress.targets.ncnn.preflight import int8_failure, kept_float, preflight
from autoglm_compress.targets.ncnn.prepare_passes import NCNN_PREPARE
from autoglm_compress.targets.ncnn.scheme import ncnn_scheme

__all__ = ["NcnnTarget", "ncnn_runner", "ncnn_scheme", "TARGET"]

logger = logging.getLogger(__name__)


class NcnnTarget(Target):
    name = "arm"
    runtime = "ncnn"
    precisions = ("fp32", "fp16", "int8")
    options_class = Options
    lowering_file = Path(__file__).with_name("lowering.toml")
    rules = RULES
    label = "target arm, format ncnn"
    tag = "arm/ncnn"
    alternatives = "--format tflite, or --target x86"

    def check(self, model: ir.Model, precision: str) -> list[str]:
        try:
            import ncnn  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--format ncnn verifies in the ncnn runtime, but ncnn is not installed: "
                "pip install 'autoglm-compress[runtimes]'"
            ) from None
        prepared, _ = self.prepared(model, precision)  # what will be lowered, on a copy
        self.refuse_dynamic(prepared, precision)
        super().check(prepared, precision)
        refuse_batch(model, prepared, f"{self.label} ({precision})", self.alternatives)
        self.refuse_unsupported(prepared, precision, unsupported_reason)
        preflight(prepared, precision, self.label, self.alternatives, self.options.threads,
                  self.keep_fp32)
        return []

    def scheme(self):
        return ncnn_scheme()

    def prepare_passes(self, precision: str) -> tuple[str, ...]:
        """Shapes fixed to the data's and folded (fold_shapes.py), the IR fitted to ncnn's
        batch-less blobs (prepare_passes.py), LpNormalization written out, then GELU → one layer."""
        return ("fold_shapes", *NCNN_PREPARE, "decompose_lpnorm", "fuse_gelu")

    def prepare(self, model: ir.Model, precision: str, stats: dict[str, dict]) -> list[str]:
        lifted = stats.get("lift_rows", {}).get("lifted", 0)
        folded = stats.get("fold_reshape_chains", {}).get("folded", 0) + \
            stats.get("unpack_qkv", {}).get("unpacked", 0)
        notes = [f"{lifted} flattened-batch row regions (Reshape [1, S, H] → [S, H] … back) lifted "
                 "to [1, S, ·] for ncnn's batch-less blobs"] if lifted else []
        if folded:
            notes.append(f"{folded} index-only Gathers / chained Reshapes / packed Q·K·V parts "
                         "rewritten as 4-D Reshapes and Slices for ncnn's batch-less blobs")
        rnn = sum(n.op_type in ("LSTM", "GRU", "RNN") for n in model.graph)
        if rnn and precision == "int8":
            notes.append(f"{rnn} LSTM/GRU/RNN layers run int8 in ncnn: int8 weights with one "
                         "scale per gate row; ncnn quantizes their input and hidden state per "
                         "timestep at run time (absmax), so they read no calibrated scale")
        if any(n.op_type == "IsNaN" for n in model.graph):
            notes.append("Where(IsNaN(softmax), 0, softmax) runs as the softmax: ncnn has no NaN "
                         "test; -inf mask constants become -FLT_MAX so scores stay finite")
        return notes

    def _measured_int8(self, model: ir.Model) -> tuple[tuple, dict]:
        """INT8 with each conv / FC whose int8 kernel times slower here kept float."""
        from autoglm_compress.targets.ncnn.layer_timing import time_int8_layers

        threads, keep = self.options.threads, kept_float(model, self.keep_fp32)
        q = lower_to_ncnn(model, "int8", keep_float=keep, graph=True)
        f = lower_to_ncnn(model, "fp32", graph=True)
        times = time_int8_layers(q[2], f[2], threads)
        slow = frozenset(k for k, t in times.items() if t["int8_ms"] > t["fp32_ms"])
        chosen = sum(min(t["int8_ms"], t["fp32_ms"]) for t in times.values())
        record = {"layers_timed": len(times), "kept_float": sorted(slow),
                  "sum_fp32_ms": round(sum(t["fp32_ms"] for t in times.values()), 3),
                  "sum_int8_ms": round(sum(t["int8_ms"] for t in times.values()), 3),
                  "sum_chosen_ms": round(chosen, 3), "threads": threads}
        return (lower_to_ncnn(model, "int8", keep_float=slow | keep) if slow else q), record

    def _measured_arm_int8(self, model: ir.Model) -> tuple[tuple, dict, str]:
        """INT8 with each conv / FC whose int8 form costs more aarch64 guest instructions (alone,
        in aarch64 ncnn under qemu-aarch64 -cpu <first --arm-cpu>) kept float; the x86
        ``measured`` mode, with a note, when the emulation cannot be used here."""
        from autoglm_compress.targets.arm_emulation.environment import Unavailable, setup
        from autoglm_compress.targets.arm_emulation.runner import GuestError
        from autoglm_compress.targets.ncnn.layer_timing import count_int8_layers

        cpu, keep = self.options.cpus[0], kept_float(model, self.keep_fp32)
        q = lower_to_ncnn(model, "int8", keep_float=keep, graph=True)
        f = lower_to_ncnn(model, "fp32", graph=True)
        try:
            counts = count_int8_layers(q[2], f[2], cpu, env=setup())
        except (Unavailable, GuestError) as e:
            why = ("aarch64 emulation not available" if isinstance(e, Unavailable) else
                   "the aarch64 one-layer runs failed")
            lowered, record = self._measured_int8(model)
            record["fallback"] = f"{why}: {e}"
            return lowered, record, (
                f"--ncnn-int8-layers measured-arm: {why} ({e}); fell "
                "back to measured (x86 timings in this machine's ncnn): "
                f"{len(record['kept_float'])} of {record['layers_timed']} conv/FC layers kept "
                "float")
        for c in counts.values():
            c["int8"] = c["int8_insns"] < c["fp32_insns"]
        slow = frozenset(k for k, c in counts.items() if not c["int8"])
        tot = {k: sum(c[f"{k}_insns"] for c in counts.values()) for k in ("fp32", "int8")}
        chosen = sum(min(c["int8_insns"], c["fp32_insns"]) for c in counts.values())
        record = {"measured_on": f"aarch64 ncnn, 1 thread, qemu-aarch64 -cpu {cpu}",
                  "unit": "guest instructions per inference of the layer alone (a count, "
                          "not a time)",
                  "cpu": cpu, "layers_timed": len(counts), "kept_float": sorted(slow),
                  "layers": counts, "sum_fp32_insns": tot["fp32"],
                  "sum_int8_insns": tot["int8"], "sum_chosen_insns": chosen}
        note = (f"--ncnn-int8-layers measured-arm: {len(slow)} of {len(counts)} conv/FC layers "
                f"kept float (their int8 form costs more guest instructions in aarch64 ncnn on "
                f"{cpu}, emulated); these layers: int8 {tot['int8'] / max(tot['fp32'], 1):.2f}× "
                f"FP32 instructions, chosen mix {chosen / max(tot['fp32'], 1):.2f}×")
        return (lower_to_ncnn(model, "int8", keep_float=slow | keep) if slow else q), record, note

    def emit(self, model: ir.Model, precision: str, out_dir: Path, stem: str) -> Artifact:
        measured = note = None
        mode = self.options.ncnn_int8_layers
        if precision == "int8" and mode == "measured":
            (param, data, io), measured = self._measured_int8(model)
            note = (f"--ncnn-int8-layers measured: {len(measured['kept_float'])} of "
                    f"{measured['layers_timed']} conv/FC layers kept float (their int8 kernel "
                    "timed slower in this machine's ncnn); on ARM use all or measured-arm")
        elif precision == "int8" and mode == "measured-arm":
            (param, data, io), measured, note = self._measured_arm_int8(model)
        else:
            param, data, io = lower_to_ncnn(model, precision,
                                            keep_float=kept_float(model, self.keep_fp32))
        io.pop("graph", None)
        io.pop("int8_inputs", None)
        io["output_shapes"] = {v.name: [int(d) for d in v.shape] for v in model.graph.outputs}
        p = out_dir / f"{stem}.arm.{precision}.ncnn.param"
        b = out_dir / f"{stem}.arm.{precision}.ncnn.bin"
        write_bytes_atomic(b, data)
        write_bytes_atomic(p, param.encode())
        art = Artifact(self.name, precision, {"param": p, "bin": b},
                       runtime=self.runtime).finalize()
        art.extra["format"] = "ncnn"
        art.extra["ncnn_io"] = io
        layers = [ln.split()[0] for ln in param.splitlines()[2:]]
        art.extra["ncnn_layers"] = {"count": len(layers),
                                    "types": {t: layers.count(t) for t in sorted(set(layers))}}
        if precision == "int8":
            art.extra["ncnn_int8"] = {"int8": len(io["int8"]), "float": len(io["float"]),
                                      "float_layers": io["float"][:20],
                                      "requantized": io["requantized"],
                                      "recentred": io["recentred"],
                                      "int8_edges": io["int8_edges"]}
            if measured is not None:
                art.extra["ncnn_int8"]["measured"] = measured
                art.notes.append(note)
        return art

    def describe_io(self, artifact: Artifact, model: ir.Model) -> dict:
        from autoglm_compress.artifact_info import artifact_io

        return artifact_io(model)

    def verify(self, artifact: Artifact, ctx: VerifyContext) -> None:
        io = artifact.extra.pop("ncnn_io")
        threads = self.options.threads
        try:
            verify_in_runtime(ncnn_runner(artifact.files["param"], artifact.files["bin"], io,
                                          artifact.precision, threads),
                              artifact, ctx, f"ncnn CPU, {threads} threads")
        except VerificationError:
            if artifact.precision != "int8" or ctx.lowered_model is None:
                raise
            # the calibrated INT8 fails where the placeholder-scale pre-flight ran: a refusal
            # naming the int8 layer (exit 2; the run's staging folder goes, nothing is written)
            low = ctx.lowered_model
            found = int8_failure(low, kept_float(low, self.keep_fp32), ctx.feeds, threads,
                                 self.label, self.alternatives, "found after calibration, with "
                                 "the calibrated scales")
            if found is None:
                raise
            raise found from None
        artifact.extra["blobs"] = {"inputs": io["inputs"], "outputs": io["outputs"],
                                   "int32_inputs": io["int32_inputs"]}
        if io.get("recentred_blobs"):  # intermediate blobs holding c − y (recentre.py)
            artifact.extra["blobs"]["recentred"] = {
                b: round(float(c), 6) for b, c in io["recentred_blobs"].items()}
        artifact.latency["ncnn"] = self._side_by_side(artifact, ctx, io)

    def _side_by_side(self, artifact: Artifact, ctx: VerifyContext, io: dict) -> dict:
        """FP32, FP16 and (for INT8) INT8 ncnn models of the same graph timed interleaved."""
        import tempfile

        threads = self.options.threads
        files = {artifact.precision: (artifact.files["param"], artifact.files["bin"], io)}
        src = ctx.fp32_for_target()
        with tempfile.TemporaryDirectory(prefix="agc_ncnn_") as tmp:
            for prec in ("fp32", "fp16"):
                if prec in files:
                    continue
                param, data, pio = lower_to_ncnn(src, prec)
                pio["output_shapes"] = io["output_shapes"]
                pp, pb = Path(tmp) / f"s.{prec}.param", Path(tmp) / f"s.{prec}.bin"
                pp.write_text(param)
                pb.write_bytes(data)
                files[prec] = (pp, pb, pio)
            runners = {prec: ncnn_runner(*files[prec], prec, threads)()
                       for prec in ("fp32", "fp16", "int8") if prec in files}
            return time_precisions(runners, ctx.feeds[0], ctx.latency_repeats, threads)


TARGET = NcnnTarget

"""``--verify-arm``: the arm target's artifacts also run on ARM code (aarch64 LiteRT / ncnn under
qemu-aarch64), after the x86 verification.

- ``fidelity.aarch64``: the aarch64 outputs vs the FP32 reference (``metrics.fidelity``, at most
  8 samples), the CPU model and runtime, and ``vs_x86_cosine_min`` (aarch64 vs x86 outputs of the
  same artifact); a note when that is below float rounding (:data:`ROUNDING`). With
  ``--verify-arm emulated`` also LiteRT's reference kernels (2 samples: scalar loops, slow
  under emulation) in ``fidelity.aarch64.reference_kernels``.
- ``latency.arm_insns``: guest instructions per inference of the FP32, FP16 and (for an INT8
  artifact) INT8 files of the same model — the other precisions lowered side by side, as the
  x86 latency does — per CPU in ``--arm-cpu``, and a note "INT8 = 0.42× FP32 instructions on
  cortex-a76 (emulated; an instruction count, not a time)".

The x86 figures (``fidelity.cosine_min``, the quality gate) are unchanged. A runner that cannot be
set up here is a note, never a failure.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from autoglm_compress.metrics import fidelity
from autoglm_compress.targets.arm_emulation.environment import Unavailable, setup
from autoglm_compress.targets.arm_emulation.runner import GuestError, Job, run_jobs

__all__ = ["MAX_SAMPLES", "ROUNDING", "available", "ncnn_io", "verify_arm"]

logger = logging.getLogger(__name__)

MAX_SAMPLES = 8  # aarch64 verification samples (emulation is ~10-50× slower than native)
INSNS_SAMPLES = 2  # inferences counted per side-by-side precision
# cosine(aarch64 outputs, x86 outputs) below this: a runtime / lowering discrepancy, not rounding
# auto emulates models up to this many MACs per inference (digits ~0.3 M: seconds; an
# EfficientNet-Lite1 at 240² ~600 M: ~20 s per emulated inference, ~7 min per precision)
AUTO_MAX_MACS = 60_000_000
# the test suite sets it to 0 so that only tests/test_arm_emulation.py pays for emulation
AUTO_MAX_MACS_ENV = "AUTOGLM_ARM_AUTO_MAX_MACS"
ROUNDING = {"fp32": 0.9999, "fp16": 0.9999, "int8": 0.999}
UNIT = "guest instructions per inference (qemu-aarch64 TCG count, one thread): a count, not a time"


def available() -> tuple[bool, str]:
    """``(True, "")`` when the ARM runner is set up (building it on first use), else ``(False,
    one line saying what to install)``."""
    try:
        setup()
        return True, ""
    except Unavailable as e:
        return False, str(e)


def _macs(ctx) -> float | None:
    """MACs per inference of the FP32 model the artifact was lowered from (None: unknown)."""
    from autoglm_compress.stats import model_stats

    try:
        shapes = {k: list(v.shape) for k, v in ctx.feeds[0].items()}
        return model_stats(ctx.fp32_for_target(), shapes).macs
    except Exception:  # noqa: BLE001 - an estimate only: emulate when it cannot be made
        return None


def ncnn_io(artifact, output_shapes: dict[str, list[int]]) -> dict:
    """What ``ncnn_runner`` needs of a verified ncnn artifact: its blob names (``blobs``, as the
    x86 verification left them) and the output shapes."""
    return {**artifact.extra["blobs"], "output_shapes": output_shapes}


def _x86_outputs(artifact, io, feeds) -> list:
    """The same artifact's outputs in this machine's (x86) runtime, one thread."""
    if artifact.extra.get("format") == "ncnn":
        from autoglm_compress.targets.ncnn.ncnn_run import ncnn_runner

        run = ncnn_runner(artifact.files["param"], artifact.files["bin"], io,
                          artifact.precision, 1)()
    else:
        from autoglm_compress.targets.tflite.target import litert_runner

        run = litert_runner(artifact.path, 1)()
    return [run(f) for f in feeds]


def _side_jobs(artifact, ctx, io, tmp: Path) -> dict[str, Job]:
    """Per precision, the job whose instructions are counted: the artifact itself at its precision,
    the FP32 / FP16 files of the same model lowered into ``tmp`` (as the x86 side-by-side latency
    does)."""
    fmt = artifact.extra.get("format", "tflite")
    jobs = {artifact.precision: Job(dict(artifact.files), fmt, artifact.precision, io,
                                    n=INSNS_SAMPLES)}
    src = ctx.fp32_for_target()
    for prec in ("fp32", "fp16"):
        if prec in jobs:
            continue
        if fmt == "ncnn":
            from autoglm_compress.targets.ncnn.lower import lower_to_ncnn

            param, data, _ = lower_to_ncnn(src, prec)
            files = {"param": tmp / f"side.{prec}.param", "bin": tmp / f"side.{prec}.bin"}
            files["param"].write_text(param)
            files["bin"].write_bytes(data)
        else:
            from autoglm_compress.targets.tflite.lower import lower_to_tflite

            files = {"model": tmp / f"side.{prec}.tflite"}
            files["model"].write_bytes(lower_to_tflite(src, prec))
        jobs[prec] = Job(files, fmt, prec, io, n=INSNS_SAMPLES)
    return {p: jobs[p] for p in ("fp32", "fp16", "int8") if p in jobs}


def verify_arm(target, artifact, ctx) -> None:
    """Run ``artifact`` (an arm target's .tflite or ncnn files, already verified on x86) in
    aarch64 LiteRT / ncnn: fill ``fidelity.aarch64`` and ``latency.arm_insns``, add notes."""
    opts = target.options
    mode = getattr(opts, "verify_arm", "off")
    if mode == "off" or artifact.target != "arm":
        return
    if mode == "auto":
        macs, limit = _macs(ctx), float(os.environ.get(AUTO_MAX_MACS_ENV, AUTO_MAX_MACS))
        if macs is not None and macs > limit:
            artifact.notes.append(
                f"not run on aarch64 by default: {macs / 1e6:.0f} M MACs per inference (auto "
                f"emulates models up to {limit / 1e6:.0f} M; minutes per precision "
                "beyond): --verify-arm emulated to run it")
            return
    try:
        env = setup(retry_failed=mode != "auto")
    except Unavailable as e:
        artifact.notes.append(f"not verified on aarch64 (--verify-arm {mode}): {e}")
        return
    fmt = artifact.extra.get("format", "tflite")
    shapes = {n: list(o.shape) for n, o in zip(ctx.output_names, ctx.reference_outputs[0],
                                               strict=True)}
    io = ncnn_io(artifact, shapes) if fmt == "ncnn" else None
    feeds = ctx.feeds[:MAX_SAMPLES]
    cpus = opts.cpus
    runtime = {"ncnn": "ncnn aarch64", "tflite": "LiteRT aarch64 (XNNPACK)"}[fmt]
    with tempfile.TemporaryDirectory(prefix="agc_arm_side_") as tmp:
        side = _side_jobs(artifact, ctx, io, Path(tmp))
        verify = [Job(dict(artifact.files), fmt, artifact.precision, io)]
        if fmt == "tflite" and mode == "emulated":  # auto: XNNPACK only (cheap)
            verify.append(Job(dict(artifact.files), fmt, artifact.precision, kernels="reference",
                              n=INSNS_SAMPLES))  # scalar loops: slow under emulation
        insns: dict[str, dict] = {}
        try:
            for i, cpu in enumerate(cpus):
                got = run_jobs((verify if i == 0 else []) + list(side.values()), feeds,
                               cpu=cpu, env=env)
                if i == 0:
                    outs, ref_outs = got[0][0], got[1][0] if len(verify) > 1 else None
                    got = got[len(verify):]
                insns[cpu] = {p: int(round(n)) for p, (_, n) in zip(side, got, strict=True)}
        except GuestError as e:
            artifact.notes.append(f"not verified on aarch64: {e}")
            return
    _fidelity(artifact, ctx, feeds, outs, ref_outs, io, cpus[0], runtime)
    _insns(artifact, insns, runtime)


def _fidelity(artifact, ctx, feeds, outs, ref_outs, io, cpu, runtime) -> None:
    n = len(feeds)
    labels = None if ctx.labels is None else ctx.labels[: n * ctx.batch]
    fid = fidelity(ctx.reference_outputs[:n], outs, ctx.output_names, labels, ctx.batch)
    x86 = _x86_outputs(artifact, io, feeds)
    vs = fidelity(x86, outs, ctx.output_names)["cosine_min"]
    fid.update(cpu=cpu, runtime=f"{runtime}, 1 thread, qemu-aarch64 -cpu {cpu}",
               vs_x86_cosine_min=vs)
    if ref_outs is not None:
        m = len(ref_outs)
        rk = fidelity(ctx.reference_outputs[:m], ref_outs, ctx.output_names)
        fid["reference_kernels"] = {"samples": m, "cosine_min": rk["cosine_min"],
                                    "cosine_pooled": rk["cosine_pooled"]}
    artifact.fidelity["aarch64"] = fid
    bound = ROUNDING.get(artifact.precision, 0.999)
    if vs < bound:
        artifact.notes.append(
            f"aarch64 and x86 outputs differ beyond float rounding: cosine {vs:.5f} < {bound} "
            f"({runtime} on {cpu} vs this machine's build) — a runtime or lowering discrepancy")


def _insns(artifact, insns: dict[str, dict], runtime: str) -> None:
    for per in insns.values():
        per["vs_fp32"] = {p: round(n / max(per["fp32"], 1), 3) for p, n in per.items()
                          if p != "fp32"}
    artifact.latency["arm_insns"] = {**insns, "unit": UNIT, "runtime": runtime}
    prec = artifact.precision if artifact.precision != "fp32" else "fp16"
    cells = [f"{per['vs_fp32'][prec]:.2f}× FP32 instructions on {cpu}"
             for cpu, per in insns.items() if prec in per["vs_fp32"]]
    if cells:
        artifact.notes.append(f"{prec.upper()} = {', '.join(cells)} (emulated; an instruction "
                              "count, not a time)")

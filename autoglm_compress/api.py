"""``compress(...)``: the Python API the CLI mirrors. Load → passes → per-target emit + verify → report."""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

from autoglm_compress import frontend
from autoglm_compress.errors import ConfigError, QualityGateError
from autoglm_compress.inputs import InputSpec, load_npz_feeds, parse_input_shape, random_feeds
from autoglm_compress.ir_utils import from_proto, to_proto
from autoglm_compress.labels import check_eval_labels
from autoglm_compress.pipeline import Pipeline, build_passes
from autoglm_compress.report import write_report
from autoglm_compress.stats import model_stats
from autoglm_compress.targets import Artifact, VerifyContext, get_target

__all__ = ["compress", "CompressResult"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CompressResult:
    artifacts: list[Artifact]
    report: dict
    report_path: Path

    def artifact(self, target: str) -> Artifact:
        return next(a for a in self.artifacts if a.target == target)


def _check_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(
            f"output folder {str(out_dir)!r} is not writable ({e.strerror}); choose another with -o"
        ) from None


def _copy(model: ir.Model) -> ir.Model:
    return from_proto(to_proto(model))


def _sample_feeds(model, eval_data, calib, samples):
    """Verification feeds: eval data (with labels), else calibration data, else random (flagged)."""
    if eval_data:
        feeds, labels = load_npz_feeds(eval_data, model, limit=samples)
        return feeds, labels, "eval"
    if calib:
        from autoglm_compress.calibration.data import open_calibration_source

        return list(open_calibration_source(calib, model).take(samples)), None, "calibration"
    return random_feeds(model, n=min(samples, 8)), None, "random"


def _reference(model: ir.Model, feeds):
    """FP32 reference outputs: onnxruntime on the FP32 IR when it runs it, else the torch executor
    (the executor's own results then are what artifacts are compared with). Returns the outputs,
    output names, which runtime, and the onnxruntime session (reused for latency) or None."""
    from autoglm_compress.ir_utils import ort_run, ort_session

    names = [v.name for v in model.graph.outputs]
    try:
        sess = ort_session(model)
        return [ort_run(sess, f) for f in feeds], names, "onnxruntime on the FP32 IR", sess
    except Exception as e:  # noqa: BLE001 - whatever onnxruntime refuses, the executor runs
        logger.info("FP32 reference in the torch executor (onnxruntime: %s)", e)
    from autoglm_compress.runtime import TorchExecutor

    ex = TorchExecutor(model)
    outs = [ex.run(f) for f in feeds]
    outs = [[o[n].detach().cpu().numpy() for n in names] for o in outs]
    return outs, names, "torch executor on the FP32 IR", None


def compress(
    model_path: str | Path,
    *,
    targets: tuple[str, ...] = ("x86",),
    fp16: bool = False,
    int8: bool = False,
    passes: tuple[str, ...] | None = None,
    out_dir: str | Path = "out",
    input_shapes: tuple[str | InputSpec, ...] = (),
    trust_pickle: bool = False,
    calib: str | Path | None = None,
    calib_method: str = "minmax",
    calib_samples: int = 128,
    calib_random: bool = False,
    keep_fp32: tuple[str, ...] = (),
    per_tensor: bool = False,
    bias_correction: bool = True,
    smoothquant: float | None = None,
    equalize: bool = False,
    latency_guard: bool = False,
    qat_steps: int = 0,
    qat_lr: float = 1e-4,
    qat_batch: int = 16,
    eval_data: str | Path | None = None,
    samples: int = 64,
    dump_ir_after: tuple[str, ...] = (),
    min_cosine: float | None = None,
    max_drop: float | None = None,
    latency_repeats: int = 30,
    build_engine: bool = False,
    reduce_range: bool = True,
    static_shapes: bool = False,
    progress: bool = False,
) -> CompressResult:
    """Compress ``model_path`` for each target; verified artifacts and report.json go in ``out_dir``."""
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    if fp16 and int8:
        raise ConfigError("--fp16 and --int8 are exclusive; choose one precision per run")
    specs = [s if isinstance(s, InputSpec) else parse_input_shape(s) for s in input_shapes]
    qat = _qat_config(int8, qat_steps, qat_lr, qat_batch, calib_samples)
    options = {"cuda": {"build_engine": build_engine}, "x86": {"reduce_range": reduce_range}}
    target_objs = [get_target(t, **options.get(t, {})) for t in dict.fromkeys(targets)]
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    pass_names = list(passes) if passes is not None else ["cleanup", "fold_bn"]
    if equalize and "equalize" not in pass_names:
        pass_names.append("equalize")
    if fp16 and "fp16" not in pass_names:
        pass_names.append("fp16")
    pipeline = Pipeline(
        build_passes(pass_names),
        dump_ir_after=tuple(dump_ir_after),
        dump_dir=out_dir,
        progress=progress,
    )

    model = frontend.load(model_path, specs, trust_pickle=trust_pickle)
    model, opset_note = _ensure_opset(model, target_objs, precision)
    feeds, labels, source = _sample_feeds(model, eval_data, calib, samples)
    shapes = _shape_record(model, feeds, source)
    if static_shapes:
        model = frontend.make_static(model, {k: v["shape"] for k, v in shapes.items()})
    stats0 = model_stats(model, {k: v["shape"] for k, v in shapes.items()})
    reference = _copy(model)
    ref_outs, out_names, ref_runtime, ref_sess = _reference(reference, feeds)
    if int8:
        ref_sess = None  # not held through calibration's peak; verification makes it again
    batch = _feed_batch(feeds, ref_outs)
    check_eval_labels(labels, ref_outs, out_names, str(eval_data), max_drop is not None, batch)
    _check_reference(ref_outs, out_names, min_cosine)
    records = pipeline.run(model)
    calib_stats = None
    if int8:
        from autoglm_compress.quantization.flow import calibrate

        calib_stats, calib_info = calibrate(
            model, calib, calib_method, calib_samples, calib_random, progress, smoothquant
        )

    ctx = VerifyContext(
        reference, feeds, ref_outs, out_names, labels, latency_repeats, batch, ref_sess
    )
    artifacts = []
    for tgt in target_objs:
        lowered = _copy(model)
        notes = []
        if int8:
            from autoglm_compress.quantization.flow import quantize_for_target

            lowered, rec = quantize_for_target(
                lowered, tgt, calib_stats, keep_fp32, per_tensor, min_cosine, bias_correction
            )
            records.append(rec)
            src, bc = model, bias_correction
            if qat is not None:
                lowered, src, qrec = _qat(
                    model, lowered, tgt, calib_stats, rec, qat, per_tensor, bc
                )
                records.append(qrec)
                bc = bc and not qrec.modified  # trained biases need no correction
            if latency_guard and tgt.name == "x86":
                lowered = _guard(
                    src,
                    lowered,
                    tgt,
                    calib_stats,
                    rec,
                    feeds[0],
                    notes,
                    (tuple(keep_fp32), per_tensor, bc),
                )
        notes += tgt.legalize(lowered, precision)
        art = tgt.emit(lowered, precision, out_dir, Path(model_path).stem)
        art.notes.extend(notes)
        tgt.verify(art, ctx)
        artifacts.append(art)
        logger.info("%s: %s cosine %.5f", tgt.name, art.path.name, art.fidelity["cosine_min"])

    report = {
        "tool": "autoglm-compress",
        "version": _version(),
        "model": {
            "path": str(model_path),
            "format": model.metadata_props.get("autoglm.source_format"),
            "size_bytes": Path(model_path).stat().st_size,
            "stats": stats0.as_dict(),
        },
        "passes": [dataclasses.asdict(r) for r in records],
        "input_shapes": shapes,
        "static_shapes": static_shapes,
        "opset_conversion": opset_note,
        "verification": {
            "samples": len(feeds),
            "source": source,
            "reference": ref_runtime,
            "warning": "random inputs: fidelity on real data may differ"
            if source == "random"
            else None,
        },
        "calibration": calib_info if int8 else None,
        "artifacts": [a.as_dict() for a in artifacts],
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    gate = _quality_gate(artifacts, min_cosine, max_drop)
    report["quality_gate"] = gate
    report_path = write_report(report, out_dir / "report.json")
    if gate and not gate["passed"]:
        raise QualityGateError(gate["message"])
    return CompressResult(artifacts, report, report_path)


def _feed_batch(feeds, ref_outs) -> int:
    """Rows per sample, for per-row top-1 and labels: the leading dim that every input and every
    output of a sample share (a model traced at a fixed batch b > 1), else 1."""
    firsts = {a.shape[0] for a in feeds[0].values() if getattr(a, "ndim", 0) >= 1}
    firsts |= {np.shape(o)[0] if np.ndim(o) else -1 for o in ref_outs[0]}
    return firsts.pop() if len(firsts) == 1 else 1


def _check_reference(ref_outs, names, min_cosine) -> None:
    """A degenerate FP32 reference (all-zero, constant, non-finite) cannot pass --min-cosine:
    say so before any calibration rather than after."""
    from autoglm_compress.metrics import reference_flags

    flags = reference_flags(ref_outs, names)
    if flags:
        text = "; ".join(f"output {k!r}: {', '.join(v)}" for k, v in flags.items())
        if min_cosine is not None:
            raise QualityGateError(
                f"the FP32 model's own outputs are degenerate on the verification data ({text}): "
                "every artifact fails --min-cosine; check the model and its inputs"
            )
        logger.warning("the FP32 reference itself is degenerate: %s", text)


def _ensure_opset(model: ir.Model, targets, precision: str):
    """Raise the model's opset up front when a target's artifact needs more (int8 per-channel Q/DQ
    needs 13): converted before any calibration, and said in the report."""
    need = max(t.min_opset(precision) for t in targets)
    have = model.graph.opset_imports.get("", 0)
    if have >= need:
        return model, None
    logger.info("converting opset %d → %d (%s needs it)", have, need, precision)
    return frontend.upgrade_opset(model, need), {"from": have, "to": need, "why": precision}


def _shape_record(model: ir.Model, feeds, source: str) -> dict:
    """Per input: the IR's (maybe symbolic) shape, the concrete shape verification and calibration
    use, and where that shape came from."""
    from autoglm_compress.inputs import model_inputs, shape_hints

    hints, out = shape_hints(model), {}
    for s in model_inputs(model):
        concrete = list(feeds[0][s.name].shape)
        if all(isinstance(d, int) for d in s.shape):
            origin = "model"
        elif source == "random":
            origin = "--input-shape" if s.name in hints else "model, symbolic batch = 1"
        else:
            origin = f"{source} data"
        out[s.name] = {"model": list(s.shape), "shape": concrete, "from": origin}
    return out


def _qat_config(int8: bool, steps: int, lr: float, batch: int, samples: int):
    if not steps:
        return None
    if not int8:
        raise ConfigError("--qat-steps fine-tunes INT8 weights: add --int8")
    from autoglm_compress.quantization.qat import QATConfig

    cfg = QATConfig(steps=steps, lr=lr, batch=batch, samples=samples)
    cfg.validate()
    return cfg


def _qat(fp32, ptq, tgt, stats, rec, cfg, per_tensor, bc):
    """QAT by distillation on the layers PTQ quantized (fallen-back layers stay float)."""
    from autoglm_compress.quantization.qat import finetune_for_target

    keep = tuple(rec.config["keep_fp32"]) + tuple(rec.stats.get("fell_back", ()))
    return finetune_for_target(fp32, ptq, tgt, stats, keep, per_tensor, bc, cfg)


def _guard(fp32, quantized, tgt, stats, rec, feed, notes, opts):
    """--latency-guard: leave op types in float where onnxruntime runs them slower in int8."""
    from autoglm_compress.quantization.flow import _quantize
    from autoglm_compress.quantization.latency_guard import latency_guard

    keep, per_tensor, bc = opts
    keep = keep + tuple(rec.stats.get("fell_back", ()))

    def requantize(extra):
        return _quantize(fp32, tgt, stats, keep + tuple(extra), per_tensor, bc)[0]

    quantized, record = latency_guard(fp32, quantized, requantize, feed)
    rec.stats["latency_guard"] = record
    if record["kept_float_for_speed"]:
        notes.append(
            f"left in float for speed: {', '.join(record['kept_float_for_speed'])} "
            f"(int8 {record['int8_ms_before'] / record['fp32_ms']:.2f}x → "
            f"{record['int8_vs_fp32_after']:.2f}x of FP32 in onnxruntime)"
        )
    return quantized


def _quality_gate(
    artifacts: list[Artifact], min_cosine: float | None, max_drop: float | None
) -> dict | None:
    """CI thresholds: worst cosine vs FP32 (flagged outputs fail it), and the accuracy drop."""
    from autoglm_compress.metrics import accuracy_output, flag_messages

    flagged = [m for a in artifacts for m in flag_messages(a.fidelity, a.path.name)]
    for m in flagged:
        logger.warning("verification: %s", m)
    if min_cosine is None and max_drop is None:
        return None
    failures, gate = [], {"min_cosine": min_cosine, "max_drop": max_drop}
    if min_cosine is not None:
        worst = min(artifacts, key=lambda a: a.fidelity["cosine_min"])
        cos = worst.fidelity["cosine_min"]
        gate["worst_cosine"] = cos
        if not (np.isfinite(cos) and cos >= min_cosine):
            failures.append(f"{worst.path.name} cosine {cos:.5f} < --min-cosine {min_cosine}")
        failures += [f"{m} fails --min-cosine" for m in flagged]
    if max_drop is not None:
        for a in artifacts:
            scored = accuracy_output(a.fidelity)
            if scored is None:  # check_eval_labels refuses this before any work; kept as a guard
                why = a.fidelity.get("labels_ignored", "no labels")
                failures.append(f"{a.path.name} has no accuracy for --max-drop ({why})")
                continue
            drop = scored[1]["accuracy_ref"] - scored[1]["accuracy"]
            gate.setdefault("accuracy_drop", {})[a.path.name] = round(drop, 6)
            if drop > max_drop:
                failures.append(f"{a.path.name} accuracy drop {drop:.4f} > --max-drop {max_drop}")
    gate["passed"] = not failures
    gate["message"] = (
        ("quality gate: " + "; ".join(failures) + " (report: report.json)")
        if failures
        else "passed"
    )
    return gate


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("autoglm-compress")
    except Exception:  # noqa: BLE001
        return "dev"

"""Per-target precision lowering: the public INT8 / FP16 API the compress flow (and users) call.

- :func:`calibrate`: one pass of statistics over the context's calibration data (every target
  turns them into its own scheme).
- :func:`quantize`: FP32 IR → the target's QDQ IR: the ``bias_correction`` and ``quantize``
  passes, and, under a cosine target, automatic fallback: layers ranked by isolated sensitivity on
  held-out calibration samples (never the eval data) go back to FP32 worst-first until it is met,
  then each fallen layer but the last is re-tried in int8 and stays there if the target still holds
  (fewer float layers); the ranking (cosine with that layer alone in int8) is in the record.
- :func:`lower_for_target`: FP32 → the precision, for one target: fp16 by the target's precision
  passes (its lowering table), int8 by ``quantize`` → ``qat`` pass → latency guard (x86).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import time

import onnx_ir as ir

from autoglm_compress.config import CompressConfig, Int8Config
from autoglm_compress.errors import ConfigError, PassError
from autoglm_compress.ir_utils import check, from_proto, to_proto
from autoglm_compress.pipeline import PassRecord, Pipeline, build_passes
from autoglm_compress.quantization.collect import CalibrationStats, collect_stats
from autoglm_compress.quantization.qdq_read import int8_split
from autoglm_compress.quantization.sensitivity import (
    holdout_cosine,
    isolated_sensitivity,
    layer_sqnr,
)

__all__ = ["Lowered", "calibrate", "quantizer", "quantize", "lower_for_target", "FALLBACK_SAMPLES"]

logger = logging.getLogger(__name__)
FALLBACK_SAMPLES = 16


@dataclasses.dataclass
class Lowered:
    model: ir.Model
    records: list[PassRecord]
    notes: list[str]


def _copy(model: ir.Model) -> ir.Model:
    return from_proto(to_proto(model))


def _estimators(stats: CalibrationStats) -> dict[str, int]:
    """``auto``: how many tensors got each range estimator (report)."""
    from autoglm_compress.calibration.observers import MSEObserver

    counts: dict[str, int] = {}
    for obs in stats.observers.values():
        kind = "mse (clipped)" if isinstance(obs, MSEObserver) else "minmax"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def calibrate(model: ir.Model, ctx, method: str, samples: int) -> tuple[CalibrationStats, dict]:
    """Observe every tensor over ``samples`` feeds of ``ctx.data``; the first
    ``FALLBACK_SAMPLES`` are kept as the hold-out for fallback and QAT decisions."""
    source, kept = ctx.data, []

    def feeds():
        for f in source.take(samples):
            if len(kept) < FALLBACK_SAMPLES:
                kept.append(f)
            yield f

    stats = collect_stats(model, feeds(), method, limit=samples, progress=ctx.progress)
    stats.holdout, stats.source = kept, source
    info = {
        "source": source.name,
        "kind": source.kind,
        "method": method,
        "samples": stats.samples,
        "tensors": len(stats.observers),
        **({"estimators": _estimators(stats)} if method == "auto" else {}),
        "seconds": stats.seconds,
        "backend": stats.backend,
        "left_float_infinite": stats.infinite,
        "peak_rss_mb": stats.peak_rss_mb,
    }
    if source.is_random:
        info["source"] = "random"
        info["warning"] = "calibrated on random data: scales may not fit real inputs"
    return stats, info


def _matches(node: ir.Node, patterns) -> bool:
    return any(
        fnmatch.fnmatchcase(node.name or "", p) or fnmatch.fnmatchcase(node.op_type, p)
        for p in patterns
    )


def quantizer(target, ctx, int8: Int8Config):
    """``quantizer(fp32, keep=(), fake_weights=False, bias_correction=None) -> (model, stats)``:
    the target's INT8 pipeline (bias correction, QDQ) on a copy of ``fp32``."""

    def run(fp32: ir.Model, keep=(), fake_weights: bool = False, bias_correction=None,
            ranges=None, check_ir: bool = True):
        keep = tuple(int8.keep_fp32) + tuple(keep)
        bc = int8.bias_correction if bias_correction is None else bias_correction
        rec = bool(int8.reconstruct)
        passes = []
        if bc:
            passes += build_passes(
                ["bias_correction"],
                {"bias_correction": {"keep_fp32": keep, "per_tensor": int8.per_tensor,
                                     "reconstruct": rec}},
            )
        passes += build_passes(
            ["quantize"],
            {"quantize": {"keep_fp32": keep, "per_tensor": int8.per_tensor,
                          "fake_weights": fake_weights, "reconstruct": rec,
                          "range_search": int8.range_search, "range_overrides": ranges}},
        )
        model, records = Pipeline(passes, progress=False, check_ir=check_ir).apply(_copy(fp32), ctx)
        stats = dict(records[-1].stats)
        if bc:
            stats.update(records[0].stats)
        return model, stats

    return run


MINIMISE_TRIES = 8  # fallen layers re-tried in int8 once the cosine target is met


def quantize(
    model: ir.Model, target, ctx, int8: Int8Config, min_cosine: float | None = None
) -> tuple[ir.Model, PassRecord]:
    """A quantized copy of ``model`` for ``target`` (``ctx.stats`` calibrated); the record."""
    t0 = time.perf_counter()
    ctx.target = target
    holdout = getattr(ctx.stats, "holdout", [])
    int8, rec_choice, built = _choose_reconstruct(model, target, ctx, int8, holdout)
    qrun = quantizer(target, ctx, int8)
    unmatched = [p for p in int8.keep_fp32 if not any(_matches(n, [p]) for n in model.graph)]
    for p in unmatched:
        logger.warning("--keep-fp32 %r matches no node or op type: nothing kept for it", p)
    q, qstats = built if built is not None else qrun(model)
    if rec_choice:
        qstats["reconstruct"] = rec_choice
    fallen: list[str] = []
    int8_nodes = set(int8_split(q).int8)  # float islands have nothing to fall back
    candidates = [n.name for n in model.graph if n.name in int8_nodes
                  and n.op_type in target.scheme().input_ops]
    if min_cosine is not None and holdout:
        cosine = holdout_cosine(model, holdout, simulate=not target.int8_runs_here)
        cos = cosine(q)
        if cos < min_cosine:
            # trial quantizations skip the per-pass IR check (the kept result is checked once
            # below): on EfficientNet-Lite1 the checks were 17 % of a fallback search's time
            ranking = isolated_sensitivity(
                model, lambda k: qrun(model, k, check_ir=False)[0], cosine, candidates)
            for name, _ in ranking:
                fallen.append(name)
                q, qstats = qrun(model, fallen, check_ir=False)
                cos = cosine(q)
                logger.info("fallback %s to fp32: cosine %.5f", name, cos)
                if cos >= min_cosine:
                    break
            back: list[str] = []
            if cos >= min_cosine:  # fewest: a layer that fell early may not be needed now
                for name in fallen[-2::-1][:MINIMISE_TRIES]:
                    trial = [f for f in fallen if f != name]
                    q2, st2 = qrun(model, trial, check_ir=False)
                    c2 = cosine(q2)
                    if c2 >= min_cosine:
                        fallen, q, qstats, cos = trial, q2, st2, c2
                        back.append(name)
            isolated = dict(ranking)
            qstats["fallback"] = {
                "target": min_cosine, "reached": round(cos, 6), "returned_to_int8": back,
                "ranking": [{"node": n, "isolated_cosine": round(c, 6)} for n, c in ranking[:12]],
            }
            for layer in qstats.get("layers", []):
                if layer.get("node") in isolated:
                    layer["isolated_cosine"] = round(isolated[layer["node"]], 6)
            if fallen:  # the kept trial: the IR check its quantization skipped
                try:
                    check(q)
                except Exception as e:  # noqa: BLE001 - as the pipeline reports a bad IR
                    raise PassError("quantize", ["bias_correction"] * bool(int8.bias_correction),
                                    str(e).splitlines()[0]) from e
        qstats["calibration_cosine"] = round(cos, 6)
    sq = layer_sqnr(model, q, holdout[:8]) if holdout else {}
    for layer in qstats.get("layers", []):
        layer["sqnr_db"] = sq.get(layer["node"])
    qstats["fell_back"] = fallen
    qstats["layers_fp32"] = [
        {"node": n, "reason": "fallback" if n in fallen else "--keep-fp32"}
        for n in list(int8.keep_fp32) + fallen
    ]
    if unmatched:
        qstats["keep_fp32_unmatched"] = unmatched
    if fallen and not int8_split(q).int8:  # judged on the artifact: float islands never fall
        qstats["all_fell_back"] = True
        logger.warning(
            "%s: fallback returned every quantizable layer to FP32: the int8 artifact has no "
            "int8 compute", target.name,
        )
    ctx.quantized_from = model
    rec = PassRecord(
        f"quantize[{target.name}]",
        qstats,
        round(time.perf_counter() - t0, 4),
        True,
        {
            "scheme": target.scheme().name,
            **target.record_config(),
            "keep_fp32": list(int8.keep_fp32),
            "per_tensor": int8.per_tensor,
            "method": ctx.stats.method,
            "min_cosine": min_cosine,
            "bias_correction": int8.bias_correction,
            "reconstruct": int8.reconstruct,
        },
    )
    return q, rec


def _choose_reconstruct(model, target, ctx, int8: Int8Config, holdout):
    """Resolve ``--reconstruct`` auto (None): quantize with and without reconstructed rounding and
    keep what brings the held-out calibration samples closer to FP32.
    (int8 config, record, the chosen (model, stats) already built or None)."""
    if int8.reconstruct is not None or not holdout or getattr(ctx.stats, "source", None) is None:
        used = bool(int8.reconstruct)
        return dataclasses.replace(int8, reconstruct=used), ({"used": used} if used else None), None
    t0 = time.perf_counter()
    cosine = holdout_cosine(model, holdout, simulate=not target.int8_runs_here)
    cos, built = {}, {}
    built[False] = quantizer(target, ctx, dataclasses.replace(int8, reconstruct=False))(model)
    cos[False] = cosine(built[False][0])
    # Reconstruction only changes how weights round: when rounding the weights alone (activations
    # float) costs little of the int8 error, it cannot pay for its Hessians — skip it.
    share = _weight_error_share(model, target, ctx, int8, cosine, cos[False])
    if share is not None and share < RECONSTRUCT_MIN_SHARE:
        return dataclasses.replace(int8, reconstruct=False), {
            "used": False, "skipped": f"weight rounding is {share:.0%} of the int8 error "
            f"on the held-out samples (< {RECONSTRUCT_MIN_SHARE:.0%})",
            "holdout_cosine_plain": round(cos[False], 6),
            "seconds": round(time.perf_counter() - t0, 2)}, built[False]
    built[True] = quantizer(target, ctx, dataclasses.replace(int8, reconstruct=True))(model)
    cos[True] = cosine(built[True][0])
    used = cos[True] > cos[False]
    return dataclasses.replace(int8, reconstruct=used), {
        "used": used, "holdout_cosine_plain": round(cos[False], 6),
        "holdout_cosine_reconstructed": round(cos[True], 6),
        "seconds": round(time.perf_counter() - t0, 2)}, built[used]


RECONSTRUCT_MIN_SHARE = 0.3


def _weight_error_share(model, target, ctx, int8: Int8Config, cosine, cos_int8: float):
    """(1 − cosine) of the FP32 model with only its weights rounded (plain, the target's widths)
    over (1 − cosine) of the int8 model; None when the int8 model is exact."""
    from autoglm_compress.ir_ops import weight_value
    from autoglm_compress.quantization.qdq import rounded_weight, weight_quant_axis
    from autoglm_compress.quantization.saturation import weight_quant_for, widths_for

    if cos_int8 >= 1.0:
        return None
    scheme = target.scheme()
    widths = widths_for(model, scheme, ctx.stats)
    m = _copy(model)
    for n in m.graph:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        v = weight_value(n)
        w = v.const_value.numpy() if v is not None and v.const_value is not None else None
        if w is None or w.dtype.kind != "f" or w.ndim < 2:
            continue
        tq = weight_quant_for(scheme.weight, widths, n.name)
        if int8.per_tensor:
            tq = dataclasses.replace(tq, per_channel=False)
        rw = rounded_weight(w, weight_quant_axis(n, w, tq), tq)
        v.const_value = ir.tensor(rw.astype(w.dtype), name=v.name)
    return (1.0 - cosine(m)) / (1.0 - cos_int8)


def lower_for_target(
    model: ir.Model, target, precision: str, ctx, cfg: CompressConfig
) -> Lowered:
    """``model`` (FP32, not modified) lowered to ``precision`` for ``target``."""
    ctx.target, ctx.teacher = target, model
    if precision == "int8" and cfg.int8.weights_only:
        wo = target.weights_only_config()
        if wo is None:  # check_combinations refuses these before loading
            raise ConfigError(f"--weights-only: target {target.name} has no weight-only form")
        passes = build_passes(["quantize_dynamic"], {"quantize_dynamic": {
            **wo, "keep_fp32": tuple(cfg.int8.keep_fp32)}})
        lowered, records = Pipeline(passes, progress=False).apply(_copy(model), ctx)
        records[0].name = f"quantize_dynamic[{target.name}]"
        records[0].config["keep_fp32"] = list(cfg.int8.keep_fp32)
        records[0].config.update(target.record_config())
        return Lowered(lowered, records, [])
    if precision == "int8":
        return _lower_int8(model, target, ctx, cfg)
    names = list(target.precision_passes(precision))
    lowered = _copy(model)
    if not names:
        return Lowered(lowered, [], [])
    lowered, records = Pipeline(build_passes(names), progress=False).apply(lowered, ctx)
    for r in records:
        r.name = f"{r.name}[{target.name}]"
    return Lowered(lowered, records, [])


def _lower_int8(model: ir.Model, target, ctx, cfg: CompressConfig) -> Lowered:
    q, rec = quantize(model, target, ctx, cfg.int8, cfg.gates.min_cosine)
    records, notes = [rec], []
    keep = tuple(rec.stats.get("fell_back", ()))
    used = bool((rec.stats.get("reconstruct") or {}).get("used"))
    qrun = quantizer(target, ctx, dataclasses.replace(cfg.int8, reconstruct=used))
    bc = cfg.int8.bias_correction

    def requantize(fp32, fake_weights=False, bias_correction=None, ranges=None):
        return qrun(fp32, keep, fake_weights, bias_correction, ranges)[0]

    ctx.quantizer = requantize
    if cfg.qat.steps:
        from autoglm_compress.pass_options import pass_kwargs

        qcfg = pass_kwargs(cfg, "qat")
        q, qrecs = Pipeline(build_passes(["qat"], {"qat": qcfg}), progress=False).apply(q, ctx)
        qrecs[0].name = f"qat[{target.name}]"
        records += qrecs
        bc = bc and not qrecs[0].modified  # trained biases need no correction
    if cfg.int8.latency_guard and target.latency_guard_here:
        q = _guard(q, target, ctx, rec, keep, bc, qrun, notes)
    ctx.quantizer = None
    return Lowered(q, records, notes)


def _guard(q, target, ctx, rec, keep, bc, qrun, notes):
    """--latency-guard: leave op types in float where onnxruntime runs them slower in int8."""
    from autoglm_compress.quantization.latency_guard import latency_guard

    src = ctx.quantized_from

    def requantize(extra):
        return qrun(src, keep + tuple(extra), False, bc)[0]

    feed = ctx.stats.holdout[0] if ctx.stats.holdout else next(iter(ctx.data.take(1)))
    q, record = latency_guard(src, q, requantize, feed)
    rec.stats["latency_guard"] = record
    if record["kept_float_for_speed"]:
        notes.append(
            f"left in float for speed: {', '.join(record['kept_float_for_speed'])} "
            f"(int8 {record['int8_ms_before'] / record['fp32_ms']:.2f}x → "
            f"{record['int8_vs_fp32_after']:.2f}x of FP32 in onnxruntime)"
        )
    return q

"""Per-target precision lowering: the public INT8 / FP16 API the compress flow (and users) call.

- :func:`calibrate`: one pass of statistics over the context's calibration data (every target
  turns them into its own scheme).
- :func:`quantize`: FP32 IR → the target's QDQ IR: the ``bias_correction`` and ``quantize``
  passes, and, under a cosine target, automatic fallback: layers ranked by isolated sensitivity on
  held-out calibration samples (never the eval data) go back to FP32 worst-first until it is met,
  then each fallen layer but the last is re-tried in int8 and stays there if the target still holds
  (fewer float layers); the ranking (cosine with that layer alone in int8) is in the record.
- :func:`lower_for_target`: FP32 → the precision, for one target: fp16 by the target's precision
  passes (its lowering table), int8 by the target's INT8 strategies (int8_strategies.py: the
  reconstruction choice and the fallback make the quantize record, then QAT, the latency guard).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import time

import onnx_ir as ir

from autoglm_compress.config import CompressConfig, Int8Config
from autoglm_compress.errors import ConfigError
from autoglm_compress.int8_strategies import Int8Plan, quantizer
from autoglm_compress.ir_utils import from_proto, to_proto
from autoglm_compress.pipeline import PassRecord, Pipeline, build_passes
from autoglm_compress.quantization.collect import CalibrationStats, collect_stats
from autoglm_compress.quantization.qdq_read import int8_split
from autoglm_compress.quantization.sensitivity import layer_sqnr

__all__ = ["Lowered", "calibrate", "quantizer", "quantize", "lower_for_target", "FALLBACK_SAMPLES"]
# quantizer: re-exported from int8_strategies (the public name callers and tests use)

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

    # a source that knows its count (an image folder) sets the bar's real total: 20 photos, not 128
    limit = min(samples, source.size) if source.size else samples
    stats = collect_stats(model, feeds(), method, limit=limit, progress=ctx.progress)
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


def quantize(
    model: ir.Model, target, ctx, int8: Int8Config, min_cosine: float | None = None
) -> tuple[ir.Model, PassRecord]:
    """A quantized copy of ``model`` for ``target`` (``ctx.stats`` calibrated); the record."""
    plan = Int8Plan(model, target, ctx, int8, min_cosine)
    q, rec = _quantize(plan)
    return q, rec


def _strategies(target, phase: str):
    return [cls() for cls in target.int8_strategies() if cls.phase == phase]


def _quantize(plan: Int8Plan) -> tuple[ir.Model, PassRecord]:
    """The ``quantize`` phase of ``plan``: its strategies, then the record."""
    t0 = time.perf_counter()
    model, target, ctx, int8 = plan.model, plan.target, plan.ctx, plan.int8
    ctx.target = target
    unmatched = [p for p in int8.keep_fp32 if not any(_matches(n, [p]) for n in model.graph)]
    for p in unmatched:
        logger.warning("--keep-fp32 %r matches no node or op type: nothing kept for it", p)
    for s in _strategies(target, "quantize"):
        s.run(plan)
    plan.ensure_quantized()
    q, qstats, fallen, holdout = plan.q, plan.stats, plan.keep, plan.holdout
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
        f"quantize[{target.tag}]",
        qstats,
        round(time.perf_counter() - t0, 4),
        True,
        {
            "scheme": target.scheme().name,
            **target.record_config(),
            "keep_fp32": list(int8.keep_fp32),
            "per_tensor": int8.per_tensor,
            "method": ctx.stats.method,
            "min_cosine": plan.min_cosine,
            "bias_correction": int8.bias_correction,
            "reconstruct": plan.int8.reconstruct,  # as the strategies resolved it
        },
    )
    return q, rec


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
        records[0].name = f"quantize_dynamic[{target.tag}]"
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
        r.name = f"{r.name}[{target.tag}]"
    return Lowered(lowered, records, [])


def _lower_int8(model: ir.Model, target, ctx, cfg: CompressConfig) -> Lowered:
    """The target's INT8 strategies: the quantize phase (one record), then the after phase
    (QAT, the latency guard, …) on the same plan."""
    plan = Int8Plan(model, target, ctx, cfg.int8, cfg.gates.min_cosine,
                    min_cosine_of=cfg.gates.min_cosine_of, qat=cfg.qat,
                    calib_samples=cfg.calibration.samples)
    q, rec = _quantize(plan)
    plan.stats = rec.stats  # after-phase strategies add to the quantize record

    def requantize(fp32, fake_weights=False, bias_correction=None, ranges=None):
        run = quantizer(target, ctx, plan.int8)
        bc = plan.bias_correction if bias_correction is None else bias_correction
        return run(fp32, tuple(plan.keep), fake_weights, bc, ranges)[0]

    ctx.quantizer = requantize
    try:
        for s in _strategies(target, "after"):
            s.run(plan)
    finally:
        ctx.quantizer = None
    return Lowered(plan.q, [rec, *plan.records], plan.notes)

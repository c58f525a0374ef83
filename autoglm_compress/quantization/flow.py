"""INT8 flow glue: one calibration run, then per-target QDQ insertion under the target's scheme,
with the per-layer error table and, when a cosine target is set, automatic FP32 fallback.

Fallback decisions use a slice of the *calibration* samples (never the eval data the report scores).
"""

from __future__ import annotations

import logging
import time

import onnx_ir as ir

from autoglm_compress.errors import ConfigError
from autoglm_compress.ir_utils import check, from_proto, ort_run, ort_session, to_proto
from autoglm_compress.metrics import fidelity
from autoglm_compress.pipeline import PassRecord
from autoglm_compress.quantization.collect import CalibrationStats, collect_stats
from autoglm_compress.quantization.sensitivity import isolated_sensitivity, layer_sqnr

__all__ = ["calibrate", "quantize_for_target", "FALLBACK_SAMPLES"]

logger = logging.getLogger(__name__)
FALLBACK_SAMPLES = 16


def calibrate(
    model: ir.Model,
    calib,
    method: str,
    samples: int,
    allow_random: bool,
    progress: bool,
    smoothquant: float | None = None,
) -> tuple[CalibrationStats, dict]:
    """Observe every tensor over ``samples`` calibration feeds (after SmoothQuant, if asked, which
    rewrites ``model`` in place — exact in FP32 — from a short per-channel max|x| pre-pass)."""
    from autoglm_compress.calibration.data import open_calibration_source

    if calib is None and not allow_random:
        raise ConfigError(
            "--int8 needs calibration data: --calib DATA (.npz/.npy, image folder, "
            "module:function), or --calib-random to accept random data"
        )
    source = open_calibration_source(calib, model, random=allow_random and calib is None)
    sq_stats = _smoothquant(model, source, smoothquant) if smoothquant is not None else None
    kept: list = []

    def feeds():
        for f in source.take(samples):
            if len(kept) < FALLBACK_SAMPLES:
                kept.append(f)
            yield f

    stats = collect_stats(model, feeds(), method, limit=samples, progress=progress)
    stats.holdout, stats.source = kept, source
    info = {
        "source": str(calib) if calib else "random",
        "kind": source.kind,
        "method": method,
        "samples": stats.samples,
        "tensors": len(stats.observers),
        "seconds": stats.seconds,
        "backend": stats.backend,
        "left_float_infinite": stats.infinite,
        "peak_rss_mb": stats.peak_rss_mb,
    }
    if sq_stats is not None:
        info["smoothquant"] = {"alpha": smoothquant, **sq_stats}
    if source.skipped:
        info["skipped_files"] = {"count": len(source.skipped), "first": source.skipped[:5]}
    if source.is_random:
        info["warning"] = "calibrated on random data: scales may not fit real inputs"
    return stats, info


def _smoothquant(model: ir.Model, source, alpha: float, pre_samples: int = 32) -> dict:
    from autoglm_compress.passes.smoothquant import SmoothQuantConfig, SmoothQuantPass

    pre = collect_stats(model, source.take(pre_samples), "minmax", limit=pre_samples)
    p = SmoothQuantPass(SmoothQuantConfig(alpha=alpha, act_absmax=pre.channel_absmax))
    p(model)
    check(model)
    return dict(p.stats)


def _copy(model: ir.Model) -> ir.Model:
    return from_proto(to_proto(model))


def _quantize(
    fp32: ir.Model,
    target,
    stats: CalibrationStats,
    keep,
    per_tensor,
    bias_correction: bool = True,
    fake_weights: bool = False,
):
    import dataclasses
    import fnmatch

    from autoglm_compress.passes.quantize import QuantizeConfig, QuantizePass
    from autoglm_compress.quantization.bias_correction import correct_biases

    model = _copy(fp32)
    scheme = target.scheme()
    bc = None
    if bias_correction and stats.channel_means:
        wq = (
            scheme.weight
            if not per_tensor
            else dataclasses.replace(scheme.weight, per_channel=False)
        )
        skip = {
            n.name
            for n in model.graph
            if any(
                fnmatch.fnmatchcase(n.name or "", p) or fnmatch.fnmatchcase(n.op_type, p)
                for p in keep
            )
        }
        bc = correct_biases(model, stats.channel_means, wq, skip)

    def ranges(names):
        return stats.ranges(symmetric=scheme.activation.symmetric, names=names)

    cfg = QuantizeConfig(
        scheme=scheme,
        ranges=ranges,
        keep_fp32=tuple(keep),
        per_tensor=per_tensor,
        fake_weights=fake_weights,
    )
    p = QuantizePass(cfg)
    p(model)
    check(model)
    if bc is not None:
        p.stats.update(bc)
    return model, p.stats, cfg


def _cosine_fn(fp32: ir.Model, feeds):
    ref_sess = ort_session(fp32)
    ref = [ort_run(ref_sess, f) for f in feeds]
    names = [v.name for v in fp32.graph.outputs]

    def cosine(model: ir.Model) -> float:
        sess = ort_session(model)
        return fidelity(ref, [ort_run(sess, f) for f in feeds], names)["cosine_min"]

    return cosine


def _fallback_candidates(model: ir.Model, scheme) -> list[str]:
    """Nodes the fallback may return to float: every named node the scheme puts Q/DQ on, weighted
    or not (an activation-only Add/Mul/Concat can be the sensitive spot)."""
    return [n.name for n in model.graph if n.name and n.op_type in scheme.input_ops]


def quantize_for_target(
    model: ir.Model,
    target,
    stats: CalibrationStats,
    keep_fp32=(),
    per_tensor: bool = False,
    min_cosine: float | None = None,
    bias_correction: bool = True,
) -> tuple[ir.Model, PassRecord]:
    """Quantize a copy of ``model`` for ``target``; returns it and the pass record for the report."""
    t0 = time.perf_counter()
    keep = list(keep_fp32)
    q, qstats, cfg = _quantize(model, target, stats, keep, per_tensor, bias_correction)
    fallen: list[str] = []
    holdout = getattr(stats, "holdout", [])
    if min_cosine is not None and holdout:
        cosine = _cosine_fn(model, holdout)
        cos = cosine(q)
        if cos < min_cosine:
            ranking = isolated_sensitivity(
                model,
                lambda k: _quantize(
                    model, target, stats, keep + list(k), per_tensor, bias_correction
                )[0],
                cosine,
                _fallback_candidates(model, target.scheme()),
            )
            for name, _ in ranking:
                fallen.append(name)
                q, qstats, cfg = _quantize(
                    model, target, stats, keep + fallen, per_tensor, bias_correction
                )
                cos = cosine(q)
                logger.info("fallback %s to fp32: cosine %.5f", name, cos)
                if cos >= min_cosine:
                    break
        qstats["calibration_cosine"] = round(cos, 6)
    sq = layer_sqnr(model, q, holdout[:8]) if holdout else {}
    for layer in qstats.get("layers", []):
        layer["sqnr_db"] = sq.get(layer["node"])
    qstats["fell_back"] = fallen
    qstats["layers_fp32"] = [
        {"node": n, "reason": "fallback" if n in fallen else "--keep-fp32"} for n in keep + fallen
    ]
    rec = PassRecord(
        f"quantize[{target.name}]",
        qstats,
        round(time.perf_counter() - t0, 4),
        True,
        {
            "scheme": cfg.scheme.name,
            "keep_fp32": list(keep_fp32),
            "per_tensor": per_tensor,
            "method": stats.method,
            "min_cosine": min_cosine,
            "bias_correction": bias_correction,
        },
    )
    return q, rec

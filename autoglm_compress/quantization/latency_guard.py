"""Latency guard: an INT8 artifact slower than FP32 in its own runtime is a defect.

Measures the FP32 model and the QDQ model side by side (interleaved, median); while INT8 is slower,
tries leaving each quantized op type in float (activation-only MatMuls of attention first, then
elementwise and pooling ops, convolutions last), keeps a change only when it makes the model faster,
and reports which op types it left in float and the measured ratios.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from autoglm_compress.ir_utils import ort_run, ort_session
from autoglm_compress.metrics import compare_latency

__all__ = ["latency_guard", "CANDIDATE_ORDER"]

logger = logging.getLogger(__name__)
CANDIDATE_ORDER = (
    "MatMul",
    "Mul",
    "Add",
    "Concat",
    "AveragePool",
    "GlobalAveragePool",
    "Gemm",
    "Conv",
)


def _ms(fp32_sess, model: ir.Model, feed, repeats: int) -> tuple[float, float]:
    sess = ort_session(model)
    lat = compare_latency(
        {"fp32": lambda: ort_run(fp32_sess, feed), "q": lambda: ort_run(sess, feed)},
        repeats=repeats,
        warmup=5,
    )
    return lat["fp32"]["median_ms"], lat["q"]["median_ms"]


def latency_guard(
    fp32: ir.Model,
    quantized: ir.Model,
    requantize,
    feed,
    *,
    repeats: int = 60,
    min_gain: float = 0.03,
) -> tuple[ir.Model, dict]:
    """``requantize(extra_keep: tuple[str, ...]) -> ir.Model``; returns the chosen model and a record."""
    fp32_sess = ort_session(fp32)
    base, best = _ms(fp32_sess, quantized, feed, repeats)
    record = {"mode": "x86", "fp32_ms": base, "int8_ms_before": best, "kept_float_for_speed": [],
              "tried": []}
    present = {n.op_type for n in quantized.graph}
    keep: list[str] = []
    for op in CANDIDATE_ORDER:
        if best < base or op not in present:
            continue
        trial = requantize(tuple(keep + [op]))
        f, t = _ms(fp32_sess, trial, feed, repeats)
        ratio = t / f  # re-measured against FP32 in the same run
        record["tried"].append({"op": op, "int8_vs_fp32": round(ratio, 3)})
        if ratio < best / base * (1 - min_gain):
            keep.append(op)
            quantized, base, best = trial, f, t
            logger.info("latency guard: %s left in float (%.2fx of FP32)", op, ratio)
    record["kept_float_for_speed"] = keep
    record["int8_vs_fp32_after"] = round(best / base, 3)
    return quantized, record

"""Latency guard, arm mode: which op types of a TFLite INT8 artifact stay int8, decided on ARM code.

``--latency-guard`` with ``--target arm`` (TFLite): the host's onnxruntime is not the artifact's
runtime, so instead of x86 timings the guard counts guest instructions of aarch64 LiteRT (XNNPACK,
one thread) under ``qemu-aarch64 -cpu <first --arm-cpu>`` (targets/arm_emulation), one inference
after a warm-up on one held-out calibration sample:

1. the FP32 .tflite, the INT8 .tflite as quantized, and for each candidate op type (every op
   type with int8 compute in the QDQ model, reshapes excepted) the INT8 .tflite with that op
   type alone left float — all in one guest process (one start-up per ``MAX_JOBS`` files), the
   INT8 file counted again last. A trial whose .tflite is the INT8 file byte for byte (an op the
   lowering fuses anyway, a Relu into its conv) is recorded as unchanged and not counted;
2. an op type is left float when its trial costs fewer instructions than the INT8 file by more
   than :data:`MIN_GAIN` and twice the two INT8 counts' spread (the Python-side call varies by
   ~1 k instructions between inferences: most of it on a model as small as the digits CNN);
3. two or more chosen: the file with all of them float is counted too, and kept only when it
   beats the best single trial (else that trial is kept).

The record lists every candidate's counts and decision; an instruction count is not a time
(bench/RESULTS.md: it orders work on the named core). Where the emulation cannot be set up, or
its runs fail, the model is returned unchanged with the reason.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import onnx_ir as ir

from autoglm_compress.quantization.latency_guard import CANDIDATE_ORDER
from autoglm_compress.quantization.qdq_read import int8_split

__all__ = ["arm_latency_guard", "candidates", "MIN_GAIN"]

logger = logging.getLogger(__name__)

# a trial must cost this share fewer instructions than the INT8 file (counts of one file vary
# < 0.1 % between inferences)
MIN_GAIN = 0.002
# int8 ops that move no data in TFLite (a reshape of the same buffer): never cheaper float
_FREE = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
UNIT = "guest instructions per inference (qemu-aarch64 TCG count, one thread): a count, not a time"


def candidates(quantized: ir.Model) -> dict[str, list[str]]:
    """{op type: names of its nodes running int8} of ``quantized``, in the x86 guard's order
    (attention MatMuls, elementwise, pooling, convolutions), other op types after, by name."""
    kinds = {n.name: n.op_type for n in quantized.graph}
    by_op: dict[str, list[str]] = {}
    for name in int8_split(quantized).int8:
        op = kinds.get(name)
        if op is not None and op not in _FREE:
            by_op.setdefault(op, []).append(name)
    rank = {op: i for i, op in enumerate(CANDIDATE_ORDER)}
    return {op: by_op[op] for op in sorted(by_op, key=lambda o: (rank.get(o, len(rank)), o))}


def _float_ops(data: bytes) -> dict[str, int]:
    """{TFLite op: how many run float} in the .tflite ``data`` (census.py): leaving one op type
    float can take neighbours with it (a conv whose output is quantized only after a float pool)."""
    from autoglm_compress.targets.tflite.census import census

    ops = [f["op"] for f in census(data)["float_ops"]]
    return {op: ops.count(op) for op in sorted(set(ops))}


def _count(files: list[bytes], feed: dict, cpu: str, env) -> list[float]:
    """Guest instructions of one inference of each .tflite in ``files`` (one guest process)."""
    from autoglm_compress.targets.arm_emulation.runner import Job, run_jobs

    with tempfile.TemporaryDirectory(prefix="agc_arm_guard_") as tmp:
        jobs = []
        for i, data in enumerate(files):
            path = Path(tmp) / f"trial{i}.tflite"
            path.write_bytes(data)
            jobs.append(Job({"model": path}, "tflite", "int8" if i else "fp32"))
        return [insns for _, insns in run_jobs(jobs, [feed], cpu=cpu, env=env)]


def arm_latency_guard(
    fp32_tflite: bytes,
    quantized: ir.Model,
    requantize,
    lower,
    feed: dict,
    *,
    cpu: str,
    env=None,
    min_gain: float = MIN_GAIN,
) -> tuple[ir.Model, dict]:
    """``requantize(extra_keep: tuple[str, ...]) -> ir.Model`` (QDQ, those op types float),
    ``lower(qdq) -> bytes`` (the INT8 .tflite); returns the chosen QDQ model and the record.
    Raises the runner's ``Unavailable`` / ``GuestError``."""
    t0 = time.perf_counter()
    cands = candidates(quantized)
    base = lower(quantized)
    trials = {op: requantize((op,)) for op in cands}
    files = {op: lower(m) for op, m in trials.items()}
    counted = [op for op in cands if files[op] != base]
    got = _count([fp32_tflite, base, *(files[op] for op in counted), base], feed, cpu, env)
    fp32, before = got[0], (got[1] + got[-1]) / 2
    spread = abs(got[1] - got[-1]) / before
    bar = before * (1 - max(min_gain, 2 * spread))
    insns = dict(zip(counted, got[2:-1], strict=True))
    rows, chosen = [], []
    for op, nodes in cands.items():
        row = {"op": op, "nodes": nodes, "int8_insns": int(round(before))}
        if op not in insns:
            row.update(float_insns=None, float=False,
                       unchanged="the .tflite with it float is the INT8 file (fused or kept int8)")
        else:
            row.update(float_insns=int(round(insns[op])),
                       float_vs_int8=round(insns[op] / before, 4), float=insns[op] < bar,
                       float_ops=_float_ops(files[op]))
        rows.append(row)
        if row["float"]:
            chosen.append((insns[op], op))
    record = {"mode": "arm", "measured_on": f"aarch64 LiteRT (XNNPACK), 1 thread, qemu-aarch64 "
                                            f"-cpu {cpu}",
              "unit": UNIT, "cpu": cpu, "fp32_insns": int(round(fp32)),
              "int8_insns_before": int(round(before)),
              "int8_insns_spread": round(spread, 4), "float_ops_before": _float_ops(base),
              "candidates": rows}
    after, keep, model, data = before, [], quantized, base
    if chosen:
        best_insns, best_op = min(chosen)
        after, keep, model, data = best_insns, [best_op], trials[best_op], files[best_op]
        if len(chosen) > 1:
            names = {op for _, op in chosen}
            ops = tuple(op for op in cands if op in names)
            both = requantize(ops)
            both_data = lower(both)
            (n,) = _count([both_data], feed, cpu, env)
            record["combined"] = {"ops": list(ops), "insns": int(round(n)),
                                  "float_ops": _float_ops(both_data), "kept": n < best_insns}
            if n < best_insns:
                after, keep, model, data = n, list(ops), both, both_data
    for op in keep:
        logger.info("latency guard (arm): %s left in float (%s)", op, cpu)
    record["kept_float_for_speed"] = keep
    record["int8_insns_after"] = int(round(after))
    record["float_ops_after"] = _float_ops(data)
    record["int8_vs_fp32_before"] = round(before / fp32, 3)
    record["int8_vs_fp32_after"] = round(after / fp32, 3)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return model, record

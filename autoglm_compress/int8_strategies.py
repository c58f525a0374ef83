"""INT8 lowering as a plan and the strategies a target registers.

:class:`Int8Plan` holds what one target's INT8 lowering works on — the FP32 model, the target, the
calibrated context, the INT8 options, the layers kept float so far, the current QDQ model and its
statistics, notes and extra records. A :class:`Strategy` changes the plan through one method,
``run(plan)``; the target says which run and in what order (``Target.int8_strategies``):

- ``quantize`` phase (its result is the ``quantize[target]`` record): :class:`ReconstructChoice`
  (``--reconstruct`` auto: with or without reconstructed rounding, judged on held-out samples),
  :class:`CosineFallback` (``--min-cosine``: layers back to FP32, worst first, then the fewest);
- ``after`` phase: :class:`QATStage` (``--qat-steps``), :class:`LatencyGuard` (``--latency-guard``,
  where the host's onnxruntime is the artifact's runtime: x86), :class:`ArmLatencyGuard`
  (``--latency-guard`` for the arm target's TFLite: aarch64 instruction counts under emulation).
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import time
from typing import ClassVar

import onnx_ir as ir

from autoglm_compress.config import Int8Config
from autoglm_compress.errors import PassError
from autoglm_compress.ir_utils import check, from_proto, to_proto
from autoglm_compress.pipeline import PassRecord, Pipeline, build_passes
from autoglm_compress.quantization.qdq_read import int8_split
from autoglm_compress.quantization.sensitivity import holdout_cosine, isolated_sensitivity

__all__ = ["Int8Plan", "Strategy", "ReconstructChoice", "CosineFallback", "QATStage",
           "LatencyGuard", "ArmLatencyGuard", "quantizer", "DEFAULT_STRATEGIES", "MINIMISE_TRIES",
           "RECONSTRUCT_MIN_SHARE"]

logger = logging.getLogger(__name__)

MINIMISE_TRIES = 8  # fallen layers re-tried in int8 once the cosine target is met
RECONSTRUCT_MIN_SHARE = 0.3


def _copy(model: ir.Model) -> ir.Model:
    return from_proto(to_proto(model))


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


@dataclasses.dataclass
class Int8Plan:
    """One target's INT8 lowering in progress (see the module doc)."""

    model: ir.Model  # FP32, never modified
    target: object
    ctx: object
    int8: Int8Config
    min_cosine: float | None = None
    min_cosine_of: str = "min"  # the per-sample statistic --min-cosine gates (the fallback's aim)
    qat: object = None  # config.QATOptions (the after phase)
    calib_samples: int = 128
    keep: list[str] = dataclasses.field(default_factory=list)  # layers fallen back to FP32
    q: ir.Model | None = None
    stats: dict = dataclasses.field(default_factory=dict)
    bias_correction: bool | None = None  # None: the INT8 options'
    notes: list[str] = dataclasses.field(default_factory=list)
    records: list[PassRecord] = dataclasses.field(default_factory=list)
    _cosine: object = None

    @property
    def holdout(self) -> list:
        return getattr(self.ctx.stats, "holdout", [])

    def quantize(self, keep=(), **kw):
        """(QDQ model, stats) of the FP32 model with ``self.keep`` + ``keep`` left float."""
        run = quantizer(self.target, self.ctx, self.int8)
        kw.setdefault("bias_correction", self.bias_correction)
        return run(self.model, tuple(self.keep) + tuple(keep), **kw)

    def ensure_quantized(self) -> None:
        """The plain quantization, when no strategy has made one yet."""
        if self.q is None:
            self.q, first = self.quantize()
            self.stats = {**first, **self.stats}

    def cosine(self, model: ir.Model, of: str = "pooled") -> float:
        """Output cosine of ``model`` vs FP32 on the held-out calibration samples, in the QDQ
        maths as written unless this host's kernels are the target's; ``of``: pooled over the
        samples, or their ``min`` / ``mean``."""
        if self._cosine is None:
            self._cosine = holdout_cosine(self.model, self.holdout,
                                          simulate=not self.target.int8_runs_here)
        return self._cosine(model, of)

    def gate_cosine(self, model: ir.Model) -> float:
        """The statistic ``--min-cosine`` gates (``min_cosine_of``), on the held-out samples."""
        return self.cosine(model, self.min_cosine_of)


class Strategy(abc.ABC):
    """One decision of the INT8 lowering: ``run(plan)`` reads and changes the plan."""

    name: ClassVar[str] = ""
    phase: ClassVar[str] = "quantize"  # "quantize" (the quantize record) or "after"

    @abc.abstractmethod
    def run(self, plan: Int8Plan) -> None:
        """Read and change ``plan`` (its model, kept-float layers, stats, notes, records)."""


class ReconstructChoice(Strategy):
    """``--reconstruct`` auto (None): quantize with and without reconstructed rounding and keep
    what brings the held-out calibration samples closer to FP32 (skipped when rounding the weights
    alone is a small share of the int8 error)."""

    name = "reconstruct"

    def run(self, plan: Int8Plan) -> None:
        int8 = plan.int8
        if int8.reconstruct is not None or not plan.holdout \
                or getattr(plan.ctx.stats, "source", None) is None:
            used = bool(int8.reconstruct)
            plan.int8 = dataclasses.replace(int8, reconstruct=used)
            if used:
                plan.stats["reconstruct"] = {"used": True}
            return
        t0 = time.perf_counter()
        cos, built = {}, {}
        plan.int8 = dataclasses.replace(int8, reconstruct=False)
        built[False] = plan.quantize()
        cos[False] = plan.cosine(built[False][0])
        share = _weight_error_share(plan, cos[False])
        if share is not None and share < RECONSTRUCT_MIN_SHARE:
            plan.q, plan.stats = built[False][0], {**built[False][1], "reconstruct": {
                "used": False, "skipped": f"weight rounding is {share:.0%} of the int8 error "
                f"on the held-out samples (< {RECONSTRUCT_MIN_SHARE:.0%})",
                "holdout_cosine_plain": round(cos[False], 6),
                "seconds": round(time.perf_counter() - t0, 2)}}
            return
        plan.int8 = dataclasses.replace(int8, reconstruct=True)
        built[True] = plan.quantize()
        cos[True] = plan.cosine(built[True][0])
        used = cos[True] > cos[False]
        plan.int8 = dataclasses.replace(int8, reconstruct=used)
        plan.q, plan.stats = built[used][0], {**built[used][1], "reconstruct": {
            "used": used, "holdout_cosine_plain": round(cos[False], 6),
            "holdout_cosine_reconstructed": round(cos[True], 6),
            "seconds": round(time.perf_counter() - t0, 2)}}


def _weight_error_share(plan: Int8Plan, cos_int8: float) -> float | None:
    """(1 − cosine) of the FP32 model with only its weights rounded (plain, the target's widths)
    over (1 − cosine) of the int8 model; None when the int8 model is exact."""
    from autoglm_compress.ir_ops import weight_value
    from autoglm_compress.quantization.qdq import rounded_weight, weight_quant_axis
    from autoglm_compress.quantization.saturation import weight_quant_for, widths_for

    if cos_int8 >= 1.0:
        return None
    scheme = plan.target.scheme()
    widths = widths_for(plan.model, scheme, plan.ctx.stats)
    m = _copy(plan.model)
    for n in m.graph:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        v = weight_value(n)
        w = v.const_value.numpy() if v is not None and v.const_value is not None else None
        if w is None or w.dtype.kind != "f" or w.ndim < 2:
            continue
        tq = weight_quant_for(scheme.weight, widths, n.name)
        if plan.int8.per_tensor:
            tq = dataclasses.replace(tq, per_channel=False)
        rw = rounded_weight(w, weight_quant_axis(n, w, tq), tq)
        v.const_value = ir.tensor(rw.astype(w.dtype), name=v.name)
    return (1.0 - plan.cosine(m)) / (1.0 - cos_int8)


class CosineFallback(Strategy):
    """``--min-cosine``: layers ranked by isolated sensitivity on held-out calibration samples
    (never the eval data) go back to FP32 worst-first until the target is met; then each fallen
    layer but the last is re-tried in int8 and stays there if the target still holds. The target
    is the statistic the gate reads (``--min-cosine-of``: the worst sample, or the mean)."""

    name = "fallback"

    def run(self, plan: Int8Plan) -> None:
        if plan.min_cosine is None or not plan.holdout:
            return
        plan.ensure_quantized()
        target, floor = plan.target, plan.min_cosine
        int8_nodes = set(int8_split(plan.q).int8)  # float islands have nothing to fall back
        candidates = [n.name for n in plan.model.graph if n.name in int8_nodes
                      and n.op_type in target.scheme().input_ops]
        cos = plan.gate_cosine(plan.q)
        if cos < floor:
            # trial quantizations skip the per-pass IR check (the kept result is checked once
            # below): on EfficientNet-Lite1 the checks were 17 % of a fallback search's time
            ranking = isolated_sensitivity(
                plan.model, lambda k: plan.quantize(k, check_ir=False)[0], plan.gate_cosine,
                candidates)
            q, stats, fallen = plan.q, plan.stats, []
            for name, _ in ranking:
                fallen.append(name)
                q, stats = plan.quantize(fallen, check_ir=False)
                cos = plan.gate_cosine(q)
                logger.info("fallback %s to fp32: cosine %.5f", name, cos)
                if cos >= floor:
                    break
            back: list[str] = []
            if cos >= floor:  # fewest: a layer that fell early may not be needed now
                for name in fallen[-2::-1][:MINIMISE_TRIES]:
                    trial = [f for f in fallen if f != name]
                    q2, st2 = plan.quantize(trial, check_ir=False)
                    c2 = plan.gate_cosine(q2)
                    if c2 >= floor:
                        fallen, q, stats, cos = trial, q2, st2, c2
                        back.append(name)
            stats = {**stats, **({"reconstruct": plan.stats["reconstruct"]}
                                 if "reconstruct" in plan.stats else {})}
            isolated = dict(ranking)
            stats["fallback"] = {
                "target": floor, "of": plan.min_cosine_of, "reached": round(cos, 6),
                "returned_to_int8": back,
                "ranking": [{"node": n, "isolated_cosine": round(c, 6)} for n, c in ranking[:12]],
            }
            for layer in stats.get("layers", []):
                if layer.get("node") in isolated:
                    layer["isolated_cosine"] = round(isolated[layer["node"]], 6)
            if fallen:  # the kept trial: the IR check its quantization skipped
                try:
                    check(q)
                except Exception as e:  # noqa: BLE001 - as the pipeline reports a bad IR
                    raise PassError("quantize", ["bias_correction"] * bool(
                        plan.int8.bias_correction), str(e).splitlines()[0]) from e
            plan.q, plan.stats, plan.keep = q, stats, list(fallen)
        plan.stats["calibration_cosine"] = round(cos, 6)


class QATStage(Strategy):
    """``--qat-steps``: the qat pass fine-tunes the quantized model (its own record)."""

    name = "qat"
    phase = "after"

    def run(self, plan: Int8Plan) -> None:
        if plan.qat is None or not plan.qat.steps:
            return
        from autoglm_compress.pass_options import PASS_OPTIONS

        qcfg = {k: getattr(plan.qat, path.split(".", 1)[1]) for k, path in
                PASS_OPTIONS["qat"].items() if path.startswith("qat.")}
        qcfg["samples"] = plan.calib_samples
        q, recs = Pipeline(build_passes(["qat"], {"qat": qcfg}), progress=False).apply(
            plan.q, plan.ctx)
        recs[0].name = f"qat[{plan.target.tag}]"
        plan.records += recs
        plan.q = q
        if recs[0].modified:  # trained biases need no correction
            plan.bias_correction = False


def _guard_inputs(plan: Int8Plan):
    """What a latency guard works from: the FP32 model quantized from, ``requantize(extra op
    types) -> QDQ model`` (the plan's kept layers and bias correction) and one held-out feed."""
    ctx = plan.ctx
    src = ctx.quantized_from
    run = quantizer(plan.target, ctx, plan.int8)
    bc = plan.int8.bias_correction if plan.bias_correction is None else plan.bias_correction

    def requantize(extra):
        return run(src, tuple(plan.keep) + tuple(extra), False, bc)[0]

    feed = ctx.stats.holdout[0] if ctx.stats.holdout else next(iter(ctx.data.take(1)))
    return src, requantize, feed


class LatencyGuard(Strategy):
    """``--latency-guard``: leave op types in float where the host's onnxruntime — the artifact's
    own runtime — runs them slower in int8 than FP32."""

    name = "latency_guard"
    phase = "after"

    def run(self, plan: Int8Plan) -> None:
        if not plan.int8.latency_guard:
            return
        from autoglm_compress.quantization.latency_guard import latency_guard

        src, requantize, feed = _guard_inputs(plan)
        plan.q, record = latency_guard(src, plan.q, requantize, feed)
        plan.stats["latency_guard"] = record
        if record["kept_float_for_speed"]:
            plan.notes.append(
                f"left in float for speed: {', '.join(record['kept_float_for_speed'])} "
                f"(int8 {record['int8_ms_before'] / record['fp32_ms']:.2f}x → "
                f"{record['int8_vs_fp32_after']:.2f}x of FP32 in onnxruntime)"
            )


class ArmLatencyGuard(Strategy):
    """``--latency-guard`` for a TFLite artifact: leave op types in float where their int8 form
    costs more aarch64 guest instructions in LiteRT under ``qemu-aarch64 -cpu <first --arm-cpu>``
    (targets/tflite/latency_guard.py); without the emulation a one-line note, no change."""

    name = "latency_guard_arm"
    phase = "after"

    def run(self, plan: Int8Plan) -> None:
        if not plan.int8.latency_guard:
            return
        from autoglm_compress.targets.arm_emulation.environment import Unavailable, setup
        from autoglm_compress.targets.arm_emulation.runner import GuestError
        from autoglm_compress.targets.tflite.latency_guard import arm_latency_guard
        from autoglm_compress.targets.tflite.lower import lower_to_tflite
        from autoglm_compress.targets.tflite.lower_int8 import lower_qdq_to_tflite

        target = plan.target
        src, requantize, feed = _guard_inputs(plan)
        cpu = target.options.cpus[0]

        def lower(qdq):
            return lower_qdq_to_tflite(qdq, target.options.io)[0]

        try:
            plan.q, record = arm_latency_guard(lower_to_tflite(src, "fp32"), plan.q, requantize,
                                               lower, feed, cpu=cpu, env=setup())
        except (Unavailable, GuestError) as e:
            why = ("aarch64 emulation not available" if isinstance(e, Unavailable) else
                   "its aarch64 runs failed")
            plan.stats["latency_guard"] = {"mode": "arm", "cpu": cpu, "skipped": f"{why}: {e}",
                                           "kept_float_for_speed": []}
            plan.notes.append(f"--latency-guard (arm): {why} ({e}); INT8 op types unchanged")
            return
        plan.stats["latency_guard"] = record
        kept = record["kept_float_for_speed"]
        plan.notes.append(
            f"--latency-guard (arm): {', '.join(kept) if kept else 'no op type'} left in float of "
            f"{len(record['candidates'])} candidates (int8 {record['int8_vs_fp32_before']:.2f}x → "
            f"{record['int8_vs_fp32_after']:.2f}x FP32 guest instructions in aarch64 LiteRT on "
            f"{cpu}, emulated; a count, not a time)")


DEFAULT_STRATEGIES = (ReconstructChoice, CosineFallback, QATStage)

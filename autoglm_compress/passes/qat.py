"""qat: quantization-aware fine-tuning of an INT8 model by distillation from its FP32 teacher.

1. The training graph is the target's QDQ graph with float weights behind QuantizeLinear
   (``ctx.quantizer(fp32, fake_weights=True)``), activation scales starting at the calibrated ones.
2. The quantized layers' weights and biases train in the torch executor (fake-quant, straight-through
   rounding) to reproduce the FP32 outputs on calibration samples (``runtime.train_loop.distill``);
   after every step each weight scale is recomputed as max|W_c| / q_max — the export's own rule.
   The activation scales train too (LSQ, Esser et al. 2020: the straight-through fake-quant gives
   d/ds directly), each at a learning rate proportional to its own size (``learn_scales``).
3. The trained weights go into a copy of the FP32 model, quantized again under the same scheme
   without bias correction (the biases were trained) and with the learned activation ranges.
4. Whichever of PTQ (the input) and QAT has the higher worst-case cosine on held-out calibration
   samples (never the eval data the report scores) is the output.
Not in place: the output is a new model (the PTQ input is kept when QAT does not help).
"""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.calibration.qparams import MIN_SCALE
from autoglm_compress.errors import ConfigError
from autoglm_compress.ir_utils import check, from_proto, to_proto
from autoglm_compress.passes.base import CompressPass, PassConfig, field, register
from autoglm_compress.quantization import qat as qn
from autoglm_compress.quantization.sensitivity import holdout_cosine

__all__ = ["QATPass", "QATPassConfig"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class QATPassConfig(PassConfig):
    steps: int = field(0, help="optimizer steps; 0 = off")
    lr: float = field(1e-4, help="Adam learning rate")
    batch: int = field(16, help="samples per step")
    samples: int = field(128, help="calibration samples to train on (held-out ones excluded)")
    device: str | None = field(None, help="None: CUDA when present, else CPU")
    learn_scales: bool = field(True, help="train the activation scales too (LSQ)")
    scale_lr: float = field(1e-3, help="activation scale step, relative to the scale (× lr/1e-4)")


@register
class QATPass(CompressPass):
    name = "qat"
    config_class = QATPassConfig
    needs = frozenset({"data", "teacher", "stats", "target", "quantizer"})

    @property
    def in_place(self) -> bool:
        return False

    @property
    def changes_input(self) -> bool:
        return False

    def call(self, model: ir.Model) -> PassResult:
        from autoglm_compress.runtime import TorchExecutor
        from autoglm_compress.runtime.train_loop import distill

        cfg, ctx = self.config, self.ctx
        if cfg.steps < 1 or cfg.batch < 1 or cfg.samples < 1 or not cfg.lr > 0:
            raise ConfigError(
                f"QAT needs steps ≥ 1, batch ≥ 1, samples ≥ 1 and lr > 0; got steps={cfg.steps} "
                f"batch={cfg.batch} samples={cfg.samples} lr={cfg.lr}"
            )
        fp32 = ctx.quantized_from or ctx.teacher
        holdout = list(getattr(ctx.stats, "holdout", []))
        feeds = qn.training_feeds(ctx.data, len(holdout), cfg.samples)
        train = ctx.quantizer(fp32, fake_weights=True)
        student = TorchExecutor(train, device=cfg.device)
        teacher = TorchExecutor(fp32, device=student.device)
        for p in (*student.parameters().values(), *teacher.parameters().values()):
            p.requires_grad_(False)
        quantizers = qn.weight_quantizers(train.graph)
        trained = [w for w, _, _ in quantizers] + qn.trained_biases(train.graph)
        params = student.parameters()
        for name in trained:
            params[name].requires_grad_(True)
        qmax = qn.weight_qmax(params, quantizers)  # per layer: the x86 rule may mix 8/7 bits
        acts = qn.activation_quantizers(train.graph) if cfg.learn_scales else []
        scales = [params[s] for _, s, _ in acts]
        for p in scales:
            p.requires_grad_(True)
        refresh = qn.scale_refresher(params, quantizers, qmax)

        def after_step():
            refresh()
            for p in scales:
                p.clamp_(min=MIN_SCALE)

        res = distill(
            student, teacher, feeds, [params[n] for n in trained] + scales, steps=cfg.steps,
            lr=cfg.lr, batch=cfg.batch, after_step=after_step, progress=ctx.progress,
            param_lr={id(p): min(cfg.scale_lr * cfg.lr / 1e-4, 0.01) * float(p.detach())
                      for p in scales},  # Adam moves a scale by at most ~1 % a step
        )
        tuned = qn.transfer(train.graph, params, set(trained), _copy(fp32))
        check(tuned)
        learned = qn.learned_ranges(params, acts, train.graph) if acts else None
        qat = ctx.quantizer(tuned, bias_correction=False, ranges=learned)
        self.stats.update({**res.as_dict(), "lr": cfg.lr, "tensors_trained": len(trained),
                           "activation_scales_trained": len(scales)})
        self.stats["kept"], chosen = "qat", (qat, tuned)
        if holdout:
            cosine = holdout_cosine(fp32, holdout, simulate=not ctx.target.int8_runs_here)
            self.stats["holdout_cosine_ptq"] = round(cosine(model), 6)
            self.stats["holdout_cosine_qat"] = round(cosine(qat), 6)
            if self.stats["holdout_cosine_qat"] < self.stats["holdout_cosine_ptq"]:
                self.stats["kept"], chosen = "ptq", (_copy(model), fp32)
        ctx.quantized_from = chosen[1]
        logger.info("qat[%s]: %s", ctx.target.name, self.stats)
        return PassResult(chosen[0], modified=self.stats["kept"] == "qat")


def _copy(model: ir.Model) -> ir.Model:
    return from_proto(to_proto(model))

"""distill: train the FP32 IR (e.g. after prune) to reproduce the model as loaded, in the executor.

The student is the current IR, the teacher the model before any pass; data: ``--train-data``, else
the calibration data.

Loss (runtime/train_loop.py, the loop QAT uses): ``mse`` (default) the label-free normalised MSE of
every float output, Σ mean((y_s − y_t)²) / var(y_t); ``kl`` T²·KL(softmax(y_t/T) ‖ softmax(y_s/T))
on class-score outputs ([1, C]; MSE on the others). Training data with labels (an .npz ``labels``
array) adds cross-entropy: w·CE + (1 − w)·distillation loss. Every float weight and bias with at least one dimension
is trained (Adam, cosine-decayed learning rate, fixed seed); the trained tensors are written back
into the IR. A weight that is already sparse (> 10 % zeros: the sparsify pass ran first) keeps its
zeros — masked after every step (sparse fine-tuning). Each weight tensor's learning rate is
``lr`` × its RMS (biases: × the median weight RMS): BN folding leaves layers at very different
scales, and Adam's absolute steps then move small layers far and large ones hardly (digits, prune
0.5, 3000 steps: 0.976 → 0.992 accuracy, torch-pruning + the same recipe 0.992); a transformer's
weights (RMS ≈ 0.02) need ten times smaller steps than a CNN's (≈ 0.2) — an absolute 1e-2
diverged on BERT. Runs before precision lowering, so INT8 (and QAT) start from the distilled weights.
Under torchrun the steps run with DistributedDataParallel (runtime/distributed.py).
``feature_weight`` > 0 adds the normalised MSE of matched intermediate features: the input of every
weighted layer (Conv/Gemm/MatMul with a constant weight) that the teacher also has, compared whole
when its shape is unchanged, on the kept channels when prune removed some (the prune pass leaves
value → kept indices in the context).
Every eighth sample (with ≥ 16 samples) is held out: the weights are checked on them ten times
during training and the best checkpoint is kept — the untrained weights when no check beat them
(a well-compensated pruned model can start closer than a few hundred steps on a small set leave
it: transformers BERT in tests/real, prune 0.5: cosine 0.99994 → 0.99924). When the first check
is worse than the start, training restarts from the start at a 10× smaller lr (twice at most):
EfficientNet-Lite1 pruned to half its MACs diverged at 0.05 (training loss 0.70 → 0.85 in 300
steps) and went 0.69 → 0.10 in 100 steps at 0.005.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.errors import ConfigError
from autoglm_compress.passes.base import CompressPass, PassConfig, field, register

__all__ = ["DistillPass", "DistillConfig"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistillConfig(PassConfig):
    steps: int = field(300, "Optimizer steps.")
    epochs: float | None = field(
        None, "Passes over the training samples (held-out ones aside); replaces ``steps``: "
        "⌈epochs × samples / batch⌉.")
    lr: float = field(0.05, "Adam learning rate, relative: per tensor × its RMS (1-D: × the "
                      "median weight RMS).")
    batch: int = field(16, "Samples per step.")
    samples: int = field(2048, "Training samples to use (the run passes --calib-samples when it trains on the calibration data).")
    device: str | None = field(None, "None: CUDA when present, else CPU.")
    loss: str = field("mse", "mse | mse-channel (per axis-1 channel variance) | kl (softened "
                      "class scores)")
    temperature: float = field(4.0, "KL temperature")
    label_weight: float = field(0.5, "cross-entropy weight when the data has labels")
    scaled_lr: bool = field(True, "per-tensor learning rates proportional to the tensor's RMS")
    feature_weight: float = field(
        0.0, "weight of the intermediate-feature MSE (inputs of weighted layers; pruned ones "
        "compared on their kept channels)")


def feature_pairs(student: ir.Model, teacher: ir.Model, kept: dict) -> dict:
    """name → None (same shape in both) or (axis, kept indices): the inputs of the student's
    weighted layers that the teacher computes too."""
    from autoglm_compress.ir_ops import const_array

    theirs = {v.name: v for n in teacher.graph for v in n.outputs if v is not None}
    out = {}
    for node in student.graph:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(
                node.inputs) < 2 or const_array(node.inputs[1]) is None:
            continue
        x = node.inputs[0]
        t = theirs.get(x.name)
        if x.producer() is None or t is None or x.dtype is None or not x.dtype.is_floating_point():
            continue
        if x.name in kept:
            out[x.name] = kept[x.name]
        elif x.shape is not None and t.shape is not None and list(x.shape) == list(t.shape):
            out[x.name] = None
    return out


HOLDOUT_EVERY = 8  # every 8th sample is held out (with at least 2 × this many samples)
CHECKS = 10  # held-out checks during training
BACKOFFS = 2  # restarts with a 10× smaller lr when the first check is worse than the start


class _Diverged(Exception):
    """The first held-out check came out worse than the untrained weights."""


class _Checkpoints:
    """The trained tensors at the step with the lowest held-out loss (step 0: untrained)."""

    def __init__(self, student, teacher, feeds: list[dict], params: dict, steps: int,
                 per_channel: bool = False):
        import torch

        from autoglm_compress.runtime.train_loop import output_variance

        self.student, self.feeds, self.params = student, feeds, params
        self.names = [v.name for v in student.graph.outputs
                      if v.dtype is None or v.dtype.is_floating_point()]
        with torch.no_grad():
            outs = [teacher.run(f) for f in feeds]
        self.targets = [torch.stack([o[n].detach() for o in outs]) for n in self.names]
        self.denom = [output_variance(t, per_channel) for t in self.targets]  # as the training's
        self.every, self.step, self.abort = max(steps // CHECKS, 1), 0, True
        self.first = self.best = self.loss()
        self.best_step, self.saved = 0, self._copy()
        self.curve = [(0, self.first)]  # [step, held-out loss] of the last attempt

    def _copy(self) -> dict:
        return {n: p.detach().clone() for n, p in self.params.items()}

    def loss(self) -> float:
        import torch

        with torch.no_grad():
            outs = [self.student.run(f) for f in self.feeds]
            got = [torch.stack([o[n] for o in outs]) for n in self.names]
        return float(sum((((g.to(t.device) - t) ** 2) / d).mean()
                         for g, t, d in zip(got, self.targets, self.denom)))

    def after_step(self) -> None:
        self.step += 1
        if self.step % self.every == 0:
            cur = self.loss()
            if self.step == self.every:  # an attempt's first check (a rerun at a lower lr too)
                self.curve = [(0, self.first)]
            self.curve.append((self.step, cur))
            if self.abort and self.step == self.every and cur > self.first:
                raise _Diverged
            if cur < self.best:
                self.best, self.best_step, self.saved = cur, self.step, self._copy()

    def restore(self) -> None:
        for n, p in self.params.items():
            p.data.copy_(self.saved[n])
        self.step = 0

    def stats(self) -> dict:
        return {"heldout_samples": len(self.feeds), "heldout_loss_before": round(self.first, 6),
                "heldout_loss_after": round(self.best, 6), "kept_step": self.best_step,
                "heldout_curve": [[s, round(x, 6)] for s, x in self.curve]}


@register
class DistillPass(CompressPass):
    name = "distill"
    config_class = DistillConfig
    needs = frozenset({"data", "teacher"})

    def call(self, model: ir.Model) -> PassResult:
        from autoglm_compress.runtime import TorchExecutor
        from autoglm_compress.runtime.train_loop import distill

        cfg, ctx = self.config, self.ctx
        if (cfg.steps < 1 and not cfg.epochs) or cfg.batch < 1 or cfg.samples < 1 \
                or not cfg.lr > 0 or (cfg.epochs is not None and not cfg.epochs > 0):
            raise ConfigError(
                f"distill needs steps ≥ 1 (or epochs > 0), batch ≥ 1, samples ≥ 1 and lr > 0; "
                f"got steps={cfg.steps} epochs={cfg.epochs} batch={cfg.batch} "
                f"samples={cfg.samples} lr={cfg.lr}"
            )
        source = ctx.train_data or ctx.data
        feeds = list(source.take(cfg.samples))
        labels = source.labels(len(feeds)) if getattr(source, "labels", None) else None
        student = TorchExecutor(model, device=cfg.device)
        teacher = TorchExecutor(ctx.teacher, device=student.device)
        for p in teacher.parameters().values():
            p.requires_grad_(False)
        params = student.parameters()
        trained = [n for n, p in params.items() if p.is_floating_point() and p.dim() >= 1]
        for n, p in params.items():
            p.requires_grad_(n in trained)
        # weights made sparse before (the sparsify pass) keep their zeros: masked after each step
        masks = {n: params[n] != 0 for n in trained
                 if params[n].dim() >= 2 and (params[n] == 0).float().mean() > 0.1}

        checks, held = None, None
        if len(feeds) >= 2 * HOLDOUT_EVERY:
            held = feeds[HOLDOUT_EVERY - 1::HOLDOUT_EVERY]
            keep = [i for i in range(len(feeds)) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
            feeds = [feeds[i] for i in keep]
            labels = labels[keep] if labels is not None else None
        steps = cfg.steps
        if cfg.epochs:
            steps = max(1, math.ceil(cfg.epochs * len(feeds) / min(cfg.batch, len(feeds))))
            self.stats["epochs"] = cfg.epochs
        if held is not None:
            checks = _Checkpoints(student, teacher, held, {n: params[n] for n in trained},
                                  steps, cfg.loss == "mse-channel")

        def after_step():
            for n, m in masks.items():
                params[n].mul_(m)
            if checks is not None:
                checks.after_step()

        lr, tried = cfg.lr, []
        while True:
            tried.append(lr)
            if checks is not None:
                checks.abort = len(tried) <= BACKOFFS
            try:
                res = distill(
                    student, teacher, feeds, [params[n] for n in trained], steps=steps,
                    lr=lr, batch=cfg.batch, progress=ctx.progress,
                    after_step=after_step if masks or checks else None, distributed=True,
                    loss=cfg.loss, temperature=cfg.temperature, labels=labels,
                    label_weight=cfg.label_weight, scaled_lr=cfg.scaled_lr,
                    features=feature_pairs(model, ctx.teacher, ctx.kept_channels or {}),
                    feature_weight=cfg.feature_weight)
                break
            except _Diverged:
                checks.restore()
                logger.info("distill: held-out loss rose at lr %g; restarting at %g", lr, lr / 10)
                lr /= 10
        if checks is not None:
            checks.restore()
            self.stats.update(checks.stats())
        student.sync_to_model()  # the executor runs on model.graph itself
        self.stats.update({**res.as_dict(), "lr": lr, "lr_tried": tried,
                           "tensors_trained": len(trained),
                           "sparse_masked": len(masks)})
        if res.world_size > 1:
            self.stats["distributed"] = (f"DistributedDataParallel over {res.world_size} "
                                         "torchrun processes")
        logger.info("distill: %s", self.stats)
        return PassResult(model, modified=checks.best_step > 0 if checks else
                          res.loss_after < res.loss_before)

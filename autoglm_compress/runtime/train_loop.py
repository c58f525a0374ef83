"""Distillation loop over the IR: a student executor learns to reproduce a teacher's outputs.

loss = Σ_outputs mean((y_student − y_teacher)²) / var(y_teacher)   (normalised MSE, label-free)

The teacher's outputs are computed once (no grad). The student runs in batches through
``torch.func.vmap`` over the batch-1 graph when that reproduces per-sample execution (checked on the
first batch, forward and gradient), else sample by sample. Adam with a
cosine-decayed learning rate; tensors live on the executors' device (CUDA when present).

``distributed=True`` under torchrun (``WORLD_SIZE`` > 1): the trained tensors are wrapped in a
DistributedDataParallel module; every rank draws the same batches (same seed) and runs its share
``idx[rank::world]``; DDP averages the gradients, so a step equals the one-process step on the whole
batch up to float summation order (when the batch divides evenly).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Callable

import numpy as np
import torch

__all__ = ["DistillResult", "distill", "normalised_mse"]

logger = logging.getLogger(__name__)

CURVE_POINTS = 50  # the training-loss curve of the report (report.html draws it)
ESTIMATE_AFTER = 3  # steps timed before the whole run's duration is estimated (progress_lines.estimate)


@dataclasses.dataclass
class DistillResult:
    steps: int
    samples: int
    batch: int
    batched: bool  # vmap used
    device: str
    seconds: float
    loss_before: float  # over all training samples, before the first step
    loss_after: float  # the same, after the last
    world_size: int = 1  # processes that trained (torchrun + DDP)
    loss: str = "normalised mse"  # what the steps minimised (loss_before/after: normalised MSE)
    # [step, this step's batch loss] at ≤ CURVE_POINTS evenly spaced steps (rank 0's share)
    loss_curve: list = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else
                    [[s, round(x, 6)] for s, x in v] if k == "loss_curve" else v)
                for k, v in vars(self).items()}


def normalised_mse(student: list[torch.Tensor], teacher: list[torch.Tensor], denom) -> torch.Tensor:
    """Σ mean((s − t)² / d): ``d`` the teacher's variance, one scalar per output or (``mse-channel``)
    one per index of axis 1, shaped to broadcast."""
    return sum((((s - t) ** 2) / d).mean() for s, t, d in zip(student, teacher, denom))


def output_variance(t: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """The normaliser of ``t`` (an output stacked over the samples: [samples, batch, C, …]): its
    variance, or with ``per_channel`` each channel's own (the model's axis 1 — a detector's
    [1, 4 + classes, anchors] output has box rows in pixels and score rows in 0…1: one variance
    lets the boxes drown the scores)."""
    if not per_channel or t.dim() < 3:
        return t.var().clamp_min(1e-12)
    dims = [0, 1, *range(3, t.dim())]
    return t.var(dim=dims, keepdim=True).clamp_min(1e-12)


def _stack(feeds: list[dict], idx, keys, device) -> list[torch.Tensor]:
    return [torch.from_numpy(np.stack([feeds[i][k] for i in idx])).to(device) for k in keys]


class Student:
    """Student forward over a batch of samples: vmap when it is exact, else a per-sample loop."""

    def __init__(self, ex, feeds: list[dict], out_names: list[str], extra: tuple[str, ...] = ()):
        self.ex, self.feeds, self.names, self.extra = ex, feeds, [*out_names, *extra], extra
        self.keys = list(feeds[0])
        self.batched = False

    def _vmapped(self, idx) -> list[torch.Tensor]:
        grad = torch.is_grad_enabled()

        def one(*xs):
            out = self.ex.run(dict(zip(self.keys, xs)), keep_grad=grad, extra=self.extra)
            return tuple(out[n] for n in self.names)

        return list(torch.func.vmap(one)(*_stack(self.feeds, idx, self.keys, self.ex.device)))

    def _looped(self, idx) -> list[torch.Tensor]:
        grad = torch.is_grad_enabled()
        outs = [self.ex.run(self.feeds[i], keep_grad=grad, extra=self.extra) for i in idx]
        return [torch.stack([o[n] for o in outs]) for n in self.names]

    def __call__(self, idx) -> list[torch.Tensor]:
        return self._vmapped(idx) if self.batched else self._looped(idx)

    def try_batching(self, idx, params) -> None:
        """Use vmap only if outputs and gradients match the per-sample loop on ``idx``."""
        if len(idx) < 2:
            return
        try:
            a = self._vmapped(idx)
            ga = torch.autograd.grad(sum(t.sum() for t in a), params, allow_unused=True)
            b = self._looped(idx)
            gb = torch.autograd.grad(sum(t.sum() for t in b), params, allow_unused=True)
        except Exception as e:  # noqa: BLE001 - an op vmap cannot batch: stay per sample
            logger.info("batched training unavailable (%s); per-sample loop", type(e).__name__)
            return
        # Norm-wise closeness: float re-association may flip an odd fake-quant rounding, a wrong
        # batching rule changes everything.
        same = all(_close(x, y, 1e-3) for x, y in zip(a, b))
        same = same and all((x is None and y is None) or _close(x, y, 1e-2) for x, y in zip(ga, gb))
        self.batched = same


def _close(x: torch.Tensor, y: torch.Tensor, rel: float) -> bool:
    x, y = x.detach().double(), y.detach().double()
    return bool(torch.linalg.norm(x - y) <= rel * torch.linalg.norm(y) + 1e-9)


def _groups(params, lr: float, scaled: bool, param_lr: dict | None = None):
    """Adam parameter groups. ``scaled``: ``lr`` is a relative step — each weight tensor (≥ 2-D)
    steps at ``lr`` × its own RMS, 1-D tensors (biases, norm scales) at ``lr`` × the median weight
    RMS — so a layer whose folded BatchNorm made its weights large or small moves by the same
    relative amount, and a transformer (weights ~0.02) as much as a CNN (~0.2) does (Adam's steps
    are otherwise absolute)."""
    params = list(params)
    if param_lr:
        own = [p for p in params if id(p) in param_lr]
        rest = [p for p in params if id(p) not in param_lr]
        return _groups(rest, lr, scaled) + [{"params": [p], "lr": param_lr[id(p)]} for p in own]
    if not scaled:
        return [{"params": params}]
    rms = {id(p): float(p.detach().double().pow(2).mean().sqrt()) for p in params if p.dim() >= 2}
    if not rms:
        return [{"params": params}]
    med = float(np.median(list(rms.values()))) or 1.0
    return [{"params": [p], "lr": lr * max(rms.get(id(p), med), 1e-12)} for p in params]


def _is_scores(t: torch.Tensor) -> bool:
    """Stacked teacher output [N, 1, C] / [N, C] of class scores (C ≥ 2)."""
    per = t.shape[1:]
    return len(per) >= 1 and per[-1] >= 2 and int(np.prod(per)) == per[-1]


def objective(targets, denom, kind, temperature, labels, label_weight, device):
    """``f(student outputs, idx) -> loss`` of one step, and its ``name``."""
    import torch.nn.functional as F  # noqa: N812

    kl = [kind == "kl" and _is_scores(t) for t in targets]
    y = None
    if labels is not None:
        cls = next((i for i, t in enumerate(targets) if _is_scores(t)), None)
        lab = np.asarray(labels).reshape(-1)
        if cls is not None and len(lab) >= len(targets[cls]):
            y = torch.as_tensor(lab[: len(targets[cls])].astype(np.int64), device=device)
    T = temperature  # noqa: N806

    def f(outs, idx):
        terms = []
        for s, t, d, k in zip(outs, targets, denom, kl):
            t = t[idx]
            if k:
                n = len(s)
                terms.append(F.kl_div(F.log_softmax(s.reshape(n, -1) / T, -1),
                                      F.log_softmax(t.reshape(n, -1) / T, -1),
                                      reduction="batchmean", log_target=True) * T * T)
            else:
                terms.append(normalised_mse([s], [t], [d]))
        kd = sum(terms)
        if y is None:
            return kd
        logits = outs[cls].reshape(len(idx), -1)
        return label_weight * F.cross_entropy(logits, y[idx]) + (1 - label_weight) * kd

    name = ("kl (T=%g) on class scores" % T if any(kl) else
            "normalised mse per channel" if kind == "mse-channel" else "normalised mse")
    if y is not None:
        name += f" + {label_weight:g}·cross-entropy on labels"
    f.name = name
    return f


def _with_features(inner, n_out: int, targets, denom, weight: float):
    """``inner`` on the first ``n_out`` outputs + ``weight`` × the mean normalised MSE of the
    matched features (the rest)."""

    def f(outs, idx):
        feats = sum(((s - t[idx]) ** 2).mean() / d for s, t, d in zip(outs[n_out:], targets,
                                                                        denom))
        return inner(outs[:n_out], idx) + weight * feats / len(targets)

    f.name = f"{inner.name} + {weight:g}·feature mse ({len(targets)} features)"
    return f


class _Wrapped(torch.nn.Module):
    """The trained tensors as one module (what DDP hooks), its forward the student's."""

    def __init__(self, params, fwd):
        super().__init__()
        self.trained = torch.nn.ParameterList(params)
        self._fwd = [fwd]  # not a submodule

    def forward(self, idx):
        return self._fwd[0](idx)


def _ddp(params, fwd, device):
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index or 0] if device.type == "cuda" else None
    return DistributedDataParallel(_Wrapped(params, fwd), device_ids=ids,
                                   find_unused_parameters=True)


def _full_loss(fwd: Student, targets, denom, batch: int) -> float:
    """Loss over every training sample (no grad), the number the report compares."""
    n = len(fwd.feeds)
    with torch.no_grad():
        outs = [fwd(list(range(i, min(i + batch, n)))) for i in range(0, n, batch)]
    cat = [torch.cat([o[k] for o in outs]) for k in range(len(targets))]
    return float(normalised_mse(cat, targets, denom))


def _teacher_outputs(teacher, feeds, names, extra=()) -> list[torch.Tensor]:
    with torch.no_grad():
        outs = [teacher.run(f, extra=tuple(extra)) for f in feeds]
    return [torch.stack([o[n].detach() for o in outs]) for n in [*names, *extra]]


def feature_targets(teacher, feeds, features: dict, device) -> list[torch.Tensor]:
    """The teacher's values at ``features`` (name → None, or (axis, kept indices) where the
    student lost channels), stacked over the samples, reduced to the student's channels."""
    out = []
    for t, sel in zip(_teacher_outputs(teacher, feeds, [], list(features)), features.values()):
        if sel is not None:
            axis, keep = sel
            t = t.index_select(axis + 1, torch.as_tensor(np.asarray(keep), dtype=torch.long))
        out.append(t.to(device))
    return out


def distill(
    student,
    teacher,
    feeds: list[dict[str, np.ndarray]],
    params: list[torch.nn.Parameter],
    *,
    steps: int,
    lr: float = 1e-4,
    batch: int = 16,
    seed: int = 0,
    after_step: Callable[[], None] | None = None,
    progress: bool = False,
    distributed: bool = False,
    loss: str = "mse",
    temperature: float = 4.0,
    labels: np.ndarray | None = None,
    label_weight: float = 0.5,
    scaled_lr: bool = False,
    param_lr: dict | None = None,
    features: dict | None = None,
    feature_weight: float = 0.0,
) -> DistillResult:
    """Train ``params`` (tensors of ``student``) for ``steps`` optimizer steps on ``feeds``.
    ``features``: intermediate values matched too (name → None when the student's equals the
    teacher's shape, or (axis, kept channel indices)), their mean normalised MSE weighted by
    ``feature_weight`` and added to the loss."""
    from autoglm_compress.runtime import distributed as dist_rt

    t0 = time.perf_counter()
    names = [
        v.name for v in student.graph.outputs if v.dtype is None or v.dtype.is_floating_point()
    ]
    targets = [t.to(student.device) for t in _teacher_outputs(teacher, feeds, names)]
    denom = [output_variance(t, loss == "mse-channel") for t in targets]
    batch = max(1, min(batch, len(feeds)))
    features = features if features and feature_weight > 0 else {}
    ftargets = feature_targets(teacher, feeds, features, student.device)
    fdenom = [t.var().clamp_min(1e-12) for t in ftargets]
    fwd = Student(student, feeds, names, tuple(features))
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    opt = torch.optim.Adam(_groups(params, lr, scaled_lr, param_lr), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / max(steps, 1)))
    )
    loss_fn = objective(targets, denom, loss, temperature, labels, label_weight, student.device)
    if features:
        loss_fn = _with_features(loss_fn, len(targets), ftargets, fdenom, feature_weight)
    # batching is judged on the weights' gradients: a scale's (LSQ) sums rounding edges over a whole
    # tensor and differs between batched and looped runs more than the weights' do
    fwd.try_batching(list(range(batch)), [p for p in params if id(p) not in (param_lr or {})])
    before = _full_loss(fwd, targets, denom, batch)
    rank, world = 0, 1
    model = fwd
    if distributed and dist_rt.process_group(student.device):
        rank, world = dist_rt.rank(), dist_rt.world_size()
        if batch < world:
            raise ValueError(f"batch {batch} is smaller than the {world} torchrun processes")
        model = _ddp(params, fwd, student.device)
    from tqdm import tqdm

    bar = tqdm(range(steps), desc="train", unit="step", disable=not progress or rank > 0,
               leave=False)
    curve, every = [], max(steps // CURVE_POINTS, 1)
    from autoglm_compress import progress_lines

    t_loop = time.perf_counter()
    for k in bar:
        if len(order) < batch:
            order += torch.randperm(len(feeds), generator=gen).tolist()
        idx, order = order[:batch], order[batch:]
        mine = idx[rank::world]
        step_loss = loss_fn(model(mine), mine)
        opt.zero_grad(set_to_none=True)
        step_loss.backward()
        opt.step()
        sched.step()
        if after_step is not None:
            with torch.no_grad():
                after_step()
        if progress and k % 10 == 0:
            bar.set_postfix(loss=f"{step_loss.item():.4g}")
        if (k + 1) % every == 0 or k + 1 == steps:  # one device sync per point
            curve.append((k + 1, float(step_loss.item())))
        if rank == 0 and k + 1 == ESTIMATE_AFTER and steps > ESTIMATE_AFTER:
            progress_lines.estimate("training", k + 1, steps, t_loop, f"batch {batch}; "
                                    "--distill-steps N (or --qat-steps N) to shorten", tqdm.write)
        if rank == 0:
            progress_lines.tick("training", k + 1, steps, t_loop)
    bar.close()
    res = DistillResult(
        steps,
        len(feeds),
        batch,
        fwd.batched,
        str(student.device),
        round(time.perf_counter() - t0, 3),
        before,
        _full_loss(fwd, targets, denom, batch),
        world,
        loss_fn.name,
        curve,
    )
    logger.info("distill: %s", res.as_dict())
    return res

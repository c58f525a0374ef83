"""prune: structured channel pruning on the IR (fine-tuning is the distill pass).

For every prunable channel space (pruning/groups.py: conv chains, BN, activations, pools, depthwise
convs, residual Adds, per-channel constants, Flatten/GlobalPool → Gemm) keep the ``1 − ratio``
most important channels — L1 norm of the producing filters, each producer normalised by its mean —
rounded up to a multiple of ``multiple`` (int8 kernels want 8), at least ``multiple``; spaces with
no more channels than that are left as they are. The IR stays dense and valid: every member's
weights are sliced and the space's value shapes set. Frozen spaces (graph IO, Concat, grouped
convs, shared weights, ops not analysed) are counted and their reasons reported.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.errors import ConfigError
from autoglm_compress.passes.base import CompressPass, PassConfig, field, register

__all__ = ["PrunePass", "PruneConfig"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PruneConfig(PassConfig):
    ratio: float = field(0.5, "Share of the channels of each prunable space to remove (0–1).")
    multiple: int = field(8, "Kept channel counts are rounded up to a multiple of this.")
    macs: float | None = field(
        None, "Target MACs as a share of the model's (e.g. 0.5): the smallest ratio that "
        "reaches it is searched (bisection) and replaces ``ratio``.")
    scope: str = field(
        "uniform", "uniform: every space loses ``ratio`` of its channels; global: the channels "
        "with the lowest normalised importance across all spaces go, ``ratio`` of them in all "
        "(a space keeps at least ``multiple``).")
    compensate: bool = field(
        True, "with data (--calib / --train-data; not random feeds): refit each reader of a "
        "pruned space to what the removed channels fed it (predicted from the kept ones on 64 "
        "samples; pruning/compensate.py)")
    importance: str = field(
        "auto", "l1 / l2: filter norms; bn: |γ|/σ of the BatchNorm after the producers (before BN "
        "folding; spaces without one use l1); taylor: first-order output change of removing each "
        "channel, measured on the data through the executor (pruning/taylor.py); act: what each "
        "channel feeds its readers on the data (pruning/activation.py); auto: act with data, "
        "else l1")


def _params(model: ir.Model) -> int:
    return int(sum(v.const_value.size for v in model.graph.initializers.values()
                   if v.const_value is not None))


def _macs(model: ir.Model, shapes: dict | None = None) -> int:
    """MACs, counted at ``shapes`` (input name → shape) when the inputs have symbolic dims."""
    from autoglm_compress.stats import model_stats

    return int(model_stats(model, shapes).macs or 0)


def _frozen_by_runtime_shapes(model: ir.Model, frozen: list[dict]) -> bool:
    """Symbolic input dims and a frozen group read by a Shape or by a Reshape whose target shape
    is computed at run time — what fixing the input shapes (--static-shapes) can unfreeze."""
    import re

    from autoglm_compress.ir_ops import const_array

    if all(isinstance(d, int) for v in model.graph.inputs for d in (v.shape or ())):
        return False
    nodes = {n.name: n for n in model.graph if n.name}
    for f in frozen:
        for why in f["why"]:
            m = re.match(r"(Shape|Reshape) '(.+)' \(not analysed", why)
            n = nodes.get(m.group(2)) if m else None
            if n is not None and (n.op_type == "Shape" or const_array(n.inputs[1]) is None):
                return True
    return False


def _prune(model: ir.Model, ratio: float, multiple: int, scope: str = "uniform",
           scores: dict | None = None, kept: dict | None = None):
    """Prune every prunable space of ``model`` by ``ratio``; (report rows, frozen rows).
    ``scores``: importance per space (``tuple(values)``), else the L1 importance. ``kept``
    receives value -> (channel axis, kept indices of the original channels)."""
    from autoglm_compress.pruning.apply import expand, importance_l1, prune_group
    from autoglm_compress.pruning.groups import channel_groups

    report, frozen, spaces = [], [], []
    for grp in channel_groups(model):
        if grp.prunable:
            imp = (scores or {}).get(tuple(grp.values))
            spaces.append((grp, imp if imp is not None else importance_l1(grp)))
        elif grp.frozen and any(m.kind == "source" for m in grp.members):
            frozen.append({"values": grp.values[:3], "channels": grp.channels,
                           "why": grp.frozen[:3]})
    cut = None
    if scope == "global" and spaces:  # importances are per-weight means of normalised norms
        scores = np.concatenate([imp for _, imp in spaces])
        cut = np.quantile(scores, ratio) if ratio > 0 else -np.inf
    for grp, imp in spaces:
        c = grp.channels
        want = (1.0 - ratio) * c if cut is None else int((imp > cut).sum())
        step = multiple // math.gcd(multiple, grp.block)  # heads: kept·head_dim a multiple
        k = max(int(np.ceil(want / step) * step), step)
        if k >= c:
            continue
        keep = np.sort(np.argsort(-imp, kind="stable")[:k])
        prune_group(model, grp, keep)
        if kept is not None:
            for name in grp.values:
                kept[name] = (grp.axes[name], expand(keep, grp.width(name)))
        report.append({"kind": grp.kind, "values": grp.values[:3], "channels": c, "kept": k,
                       **({"head_dim": grp.block} if grp.block > 1 else {}),
                       "sources": [m.node.name for m in grp.sources]})
    return report, frozen


def _ratio_for_macs(model: ir.Model, target: float, multiple: int, scope: str, scores=None,
                    shapes: dict | None = None) -> tuple[float, float]:
    """The smallest ratio (to 1/256) whose pruned copy has ≤ ``target`` × the MACs, and the share
    it reaches; the largest tried (0.95) when none does."""
    from autoglm_compress.ir_utils import from_proto, to_proto

    base = _macs(model, shapes)
    if base <= 0:
        raise ConfigError("--prune-macs cannot count this model's MACs (symbolic input dims and "
                          "no data to size them): give --input-shape NAME=DIMS, --static-shapes "
                          "or --calib / --train-data, or prune by --prune RATIO")

    def share(r: float) -> float:
        m = from_proto(to_proto(model))
        _prune(m, r, multiple, scope, scores)
        return _macs(m, shapes) / base

    lo, hi = 0.0, 0.95
    if share(hi) > target:
        return hi, share(hi)
    for _ in range(8):
        mid = (lo + hi) / 2
        if share(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi, share(hi)


MOMENT_SAMPLES = 64  # samples for the reader-input moments (compensation, act importance)


@register
class PrunePass(CompressPass):
    name = "prune"
    config_class = PruneConfig
    changes_shapes = False  # it sets the shapes it changes (every value of a pruned space)

    def required(self) -> frozenset[str]:
        return frozenset({"data"}) if self.config.importance in ("taylor", "act") else frozenset()

    def _source(self):
        """The data the pass measures on: --train-data, else the calibration data; not random."""
        if self.ctx is None:
            return None
        src = self.ctx.train_data or self.ctx.data
        return None if src is None or getattr(src, "is_random", False) else src

    def _data_shapes(self, model: ir.Model) -> dict | None:
        """Input shapes of one data sample, to count MACs at when the inputs have symbolic dims
        (None: static inputs, or no data)."""
        if all(isinstance(d, int) for v in model.graph.inputs for d in (v.shape or ())):
            return None
        src = None if self.ctx is None else (self.ctx.train_data or self.ctx.data)
        if src is None:
            return None
        feed = next(iter(src.take(1)), None)
        names = {v.name for v in model.graph.inputs}
        return {k: tuple(np.shape(a)) for k, a in (feed or {}).items() if k in names} or None

    def _importance(self) -> str:
        kind = self.config.importance
        return ("act" if self._source() is not None else "l1") if kind == "auto" else kind

    def _moments(self, model: ir.Model):
        """(unpruned copy, reader-input moments) when compensation or ``act`` needs them."""
        from autoglm_compress.ir_utils import from_proto, to_proto
        from autoglm_compress.pruning.compensate import derived_values, input_moments

        source = self._source()
        if self._importance() == "act" and source is None:
            source = self.ctx.train_data or self.ctx.data  # asked for by name: random is allowed
        if source is None or not (self.config.compensate or self._importance() == "act"):
            return None, {}
        from autoglm_compress.pruning.groups import channel_groups

        before = from_proto(to_proto(model))
        prunable = {v for g in channel_groups(before) if g.prunable for v in g.values}
        prunable |= derived_values(before, prunable)
        return before, input_moments(before, list(source.take(MOMENT_SAMPLES)), prunable)

    def _scores(self, model: ir.Model, moments: dict) -> dict | None:
        from autoglm_compress.pruning.apply import importance_bn, importance_l1
        from autoglm_compress.pruning.groups import channel_groups

        kind = self._importance()
        if kind == "l1":
            return None
        if kind not in ("l2", "bn", "taylor", "act"):
            raise ValueError(
                f"prune importance must be l1, l2, bn, taylor, act or auto, got {kind!r}")
        if kind == "act":
            from autoglm_compress.pruning.activation import importance_activation

            out = {tuple(g.values): importance_activation(g, moments, self.config.compensate)
                   for g in channel_groups(model) if g.prunable}
            self.stats["act_scored"] = sum(v is not None for v in out.values())
            self.stats["l1_scored"] = sum(v is None for v in out.values())
            return {k: v for k, v in out.items() if v is not None}
        if kind == "l2":
            return {tuple(g.values): importance_l1(g, 2) for g in channel_groups(model)
                    if g.prunable}
        if kind == "bn":
            out = {tuple(g.values): importance_bn(g) for g in channel_groups(model) if g.prunable}
            self.stats["bn_scored"] = sum(v is not None for v in out.values())
            self.stats["l1_scored"] = sum(v is None for v in out.values())
            return {k: v for k, v in out.items() if v is not None}
        from autoglm_compress.pruning.taylor import SAMPLES, taylor_importance

        source = self.ctx.train_data or self.ctx.data
        groups = [g for g in channel_groups(model) if g.prunable]
        return taylor_importance(model, groups, source.take(SAMPLES))

    def call(self, model: ir.Model) -> PassResult:
        cfg = self.config
        ratio = cfg.ratio
        shapes = self._data_shapes(model)
        before_model, moments = self._moments(model)
        scores = self._scores(model, moments)
        if cfg.macs is not None:
            if not 0.0 < cfg.macs <= 1.0:
                raise ValueError(f"prune MACs target must be in (0, 1], got {cfg.macs}")
            ratio, reached = _ratio_for_macs(model, cfg.macs, cfg.multiple, cfg.scope, scores,
                                             shapes)
            self.stats.update(macs_target=cfg.macs, ratio_found=round(ratio, 4),
                              macs_share=round(reached, 4))
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"prune ratio must be in [0, 1), got {ratio}")
        if cfg.scope not in ("uniform", "global"):
            raise ValueError(f"prune scope must be uniform or global, got {cfg.scope!r}")
        before, macs_before = _params(model), _macs(model, shapes)
        kept: dict = {}
        report, frozen = _prune(model, ratio, cfg.multiple, cfg.scope, scores, kept)
        if cfg.compensate and moments:
            from autoglm_compress.pruning.compensate import compensate

            self.stats["readers_compensated"] = compensate(before_model, model, kept, moments)
        if self.ctx is not None:
            self.ctx.kept_channels = {**(self.ctx.kept_channels or {}), **kept}
        self.stats["importance"] = self._importance()
        if _frozen_by_runtime_shapes(model, frozen):
            self.stats["hint"] = ("symbolic input dims: frozen groups are read by Shape ops or "
                                  "run-time-shaped Reshapes; --static-shapes (or --input-shape) "
                                  "fixes those shapes and may let them be pruned")
            logger.warning("prune: %s", self.stats["hint"])
        after = _params(model)
        self.stats.update(groups_pruned=len(report), groups_frozen=len(frozen),
                          params_before=before, params_after=after, macs_before=macs_before,
                          macs_after=_macs(model, shapes), groups=report, frozen=frozen)
        logger.info("prune: %d spaces pruned, %d frozen, params %d → %d", len(report),
                    len(frozen), before, after)
        return PassResult(model, modified=bool(report))

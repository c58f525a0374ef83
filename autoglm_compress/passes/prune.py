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

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.passes.base import CompressPass, PassConfig, field, register

__all__ = ["PrunePass", "PruneConfig"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PruneConfig(PassConfig):
    ratio: float = field(0.5, "Share of the channels of each prunable space to remove (0–1).")
    multiple: int = field(8, "Kept channel counts are rounded up to a multiple of this.")


def _params(model: ir.Model) -> int:
    return int(sum(v.const_value.size for v in model.graph.initializers.values()
                   if v.const_value is not None))


@register
class PrunePass(CompressPass):
    name = "prune"
    config_class = PruneConfig
    changes_shapes = False  # it sets the shapes it changes (every value of a pruned space)

    def call(self, model: ir.Model) -> PassResult:
        from autoglm_compress.pruning.apply import importance_l1, prune_group
        from autoglm_compress.pruning.groups import channel_groups

        cfg = self.config
        if not 0.0 <= cfg.ratio < 1.0:
            raise ValueError(f"prune ratio must be in [0, 1), got {cfg.ratio}")
        before = _params(model)
        groups = channel_groups(model)
        pruned, frozen, report = 0, [], []
        for grp in groups:
            if not grp.prunable:
                if grp.frozen and any(m.kind == "source" for m in grp.members):
                    frozen.append({"values": grp.values[:3], "channels": grp.channels,
                                   "why": grp.frozen[:3]})
                continue
            c = grp.channels
            k = int(np.ceil((1.0 - cfg.ratio) * c / cfg.multiple) * cfg.multiple)
            k = max(k, cfg.multiple)
            if k >= c:
                continue
            imp = importance_l1(grp)
            keep = np.sort(np.argsort(-imp, kind="stable")[:k])
            prune_group(model, grp, keep)
            pruned += 1
            report.append({"values": grp.values[:3], "channels": c, "kept": k,
                           "sources": [m.node.name for m in grp.sources]})
        after = _params(model)
        self.stats.update(groups_pruned=pruned, groups_frozen=len(frozen), params_before=before,
                          params_after=after, groups=report, frozen=frozen)
        logger.info("prune: %d spaces pruned, %d frozen, params %d → %d", pruned, len(frozen),
                    before, after)
        return PassResult(model, modified=bool(pruned))

"""fold_bn: fold inference BatchNormalization into the preceding Conv / ConvTranspose / Gemm.

For y = BN(Conv(x, W, b)) with per-channel γ, β, μ, σ², ε:
    k  = γ / √(σ² + ε)
    W' = W · k   (per output channel: axis 0 of a Conv weight, axis 1 of a ConvTranspose weight
                  (per group), axis 1 of a Gemm weight [K, N] or axis 0 when transB)
    b' = (b − μ) · k + β
so y = Conv(x, W', b') exactly (up to float rounding). The match/check/rewrite is onnxscript's
rewriter rule set (FuseBatchNormInto{Conv,ConvTranspose,Gemm}); the pass counts the matches and the
BatchNormalization nodes it had to leave (no foldable producer, non-constant parameters, fan-out).
"""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.passes.base import CompressPass, PassConfig, register

__all__ = ["FoldBatchNormPass", "FoldBatchNormConfig"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FoldBatchNormConfig(PassConfig):
    """fold_bn has no options: every foldable BatchNormalization is folded."""


def _bn_rules():
    from onnxscript import rewriter
    from onnxscript.rewriter import pattern

    rules = [
        r
        for r in rewriter._DEFAULT_REWRITE_RULES
        if "BatchNorm" in (getattr(r, "name", None) or "")
    ]
    return pattern.RewriteRuleSet(rules)


def _count_bn(model: ir.Model) -> int:
    return sum(1 for n in model.graph if n.op_type == "BatchNormalization")


@register
class FoldBatchNormPass(CompressPass):
    name = "fold_bn"
    config_class = FoldBatchNormConfig

    def call(self, model: ir.Model) -> PassResult:
        before = _count_bn(model)
        folded = _bn_rules().apply_to_model(model) if before else 0
        ir.passes.common.RemoveUnusedNodesPass()(model)
        left = _count_bn(model)
        self.stats.update(bn_folded=before - left, bn_left=left)
        logger.info("fold_bn: %d folded, %d left", before - left, left)
        return PassResult(model, modified=bool(folded))

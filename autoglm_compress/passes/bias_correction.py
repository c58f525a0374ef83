"""bias_correction: remove the mean output shift that weight quantization causes (Nagel et al. 2019).

For y = W x + b with quantized weights Ŵ = W + ε, E[ŷ] − E[y] = ε · E[x]; subtracting ε · E[x] from
the bias removes it. E[x] per input channel comes from calibration (``ctx.stats.channel_means``);
ε from quantizing W under the target's weight scheme (``ctx.target.scheme().weight``). Runs in the
per-target INT8 lowering, before QDQ insertion, on layers that will be quantized.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging

import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.passes.base import CompressPass, PassConfig, field, register
from autoglm_compress.quantization.bias_correction import correct_biases
from autoglm_compress.quantization.reconstruct import rounding_for
from autoglm_compress.quantization.saturation import widths_for

__all__ = ["BiasCorrectionPass", "BiasCorrectionConfig"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BiasCorrectionConfig(PassConfig):
    keep_fp32: tuple[str, ...] = field((), help="node names or op types (glob) left in float")
    per_tensor: bool = field(False, help="the weights will be quantized per tensor")
    reconstruct: bool = field(False, help="the weights will get reconstructed rounding")


@register
class BiasCorrectionPass(CompressPass):
    name = "bias_correction"
    config_class = BiasCorrectionConfig
    needs = frozenset({"stats", "target"})

    def call(self, model: ir.Model) -> PassResult:
        means = self.ctx.stats.channel_means
        if not means:
            self.stats["skipped"] = "no calibration channel means"
            return PassResult(model, modified=False)
        scheme = self.ctx.target.scheme()
        wq = scheme.weight
        if self.config.per_tensor:
            wq = dataclasses.replace(wq, per_channel=False)
        pats = self.config.keep_fp32
        skip = {
            n.name
            for n in model.graph
            if any(fnmatch.fnmatchcase(n.name or "", p) or fnmatch.fnmatchcase(n.op_type, p)
                   for p in pats)
        }
        widths = widths_for(model, scheme, self.ctx.stats)
        rounded = (rounding_for(model, scheme, self.ctx.stats, widths, self.config.per_tensor)
                   if self.config.reconstruct else None)
        self.stats.update(correct_biases(model, means, wq, skip, widths, rounded))
        return PassResult(model, modified=bool(self.stats.get("biases_corrected")))

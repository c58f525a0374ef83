"""The IR rewrites that fit a model to ncnn's batch-less blobs, as registered passes: the ncnn
target lists them in ``prepare_passes`` and the pipeline runs them (records, ``--dump-ir-after``).

- ``fold_reshape_chains``: identity Gathers and Reshape chains whose middle values have a leading
  dimension ≠ 1 (reshape_chains.py);
- ``lift_rows``: flattened-batch row regions (Reshape [1, S, H] → [S, H] … back) lifted to
  [1, S, ·] (batch_rows.py; before unpack_qkv: a packed-QKV Reshape may read lifted rows);
- ``unpack_qkv``: ViT-style packed Q·K·V parts taken as 4-D Slices (reshape_chains.py);
- ``seq_first``: around LSTM/GRU, size-1-axis Transposes → Reshape, Slice / Gather / Concat of
  sequence-first values run on their batch-first twins, sequence-first graph inputs read through
  them (seq_first.py; last: its Reshape pairs are not chains to fold).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.passes.base import CompressPass, PassConfig, register
from autoglm_compress.targets.ncnn.batch_rows import lift_rows
from autoglm_compress.targets.ncnn.reshape_chains import fold_reshape_chains, unpack_qkv
from autoglm_compress.targets.ncnn.seq_first import seq_first

__all__ = ["FoldReshapeChainsPass", "LiftRowsPass", "UnpackQkvPass", "SeqFirstPass", "NCNN_PREPARE"]

NCNN_PREPARE = ("fold_reshape_chains", "lift_rows", "unpack_qkv", "seq_first")


@dataclasses.dataclass(frozen=True)
class NcnnFitConfig(PassConfig):
    """No options: every match is rewritten (the numbers stay the same)."""


class _Rewrite(CompressPass):
    config_class = NcnnFitConfig
    rewrite = staticmethod(lambda model: 0)
    stat = "rewritten"

    def call(self, model: ir.Model) -> PassResult:
        n = self.rewrite(model)
        self.stats[self.stat] = n
        return PassResult(model, modified=bool(n))


@register
class FoldReshapeChainsPass(_Rewrite):
    """Identity Gathers → Reshape, and Reshape chains read straight from their first input."""

    name = "fold_reshape_chains"
    rewrite = staticmethod(fold_reshape_chains)
    stat = "folded"


@register
class LiftRowsPass(_Rewrite):
    """Flattened-batch row regions lifted to [1, S, ·] for ncnn's batch-less blobs."""

    name = "lift_rows"
    rewrite = staticmethod(lift_rows)
    stat = "lifted"


@register
class UnpackQkvPass(_Rewrite):
    """Packed Q·K·V parts taken as 4-D Slice → Reshape → Transpose."""

    name = "unpack_qkv"
    rewrite = staticmethod(unpack_qkv)
    stat = "unpacked"


@register
class SeqFirstPass(_Rewrite):
    """Sequence-first values around LSTM/GRU moved through Reshapes and batch-first twins."""

    name = "seq_first"
    rewrite = staticmethod(seq_first)
    stat = "rewritten"

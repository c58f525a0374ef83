"""sparsify: unstructured magnitude sparsity in the weights of Conv / ConvTranspose / Gemm / MatMul.

``layer`` scope zeroes the ``sparsity`` share of smallest-|w| entries of each weight; ``global``
uses one |w| threshold over all of them, each weight normalised by its mean |w| (so a layer with
small weights is not emptied). ``pattern="2:4"``: in every group of 4 consecutive input channels
(for each output channel and kernel position) the 2 largest |w| stay — the layout sparse tensor
cores want; ``sparsity`` is then 0.5 by construction. Dense kernels (onnxruntime, LiteRT, ncnn on
CPU) run exactly as fast as before: what the zeros buy is a smaller compressed file, reported as
the zlib size of all weights before and after.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.ir_ops import const_array, in_channel_axis, is_weighted, weight_value
from autoglm_compress.passes.base import CompressPass, PassConfig, field, register

__all__ = ["SparsifyPass", "SparsifyConfig", "two_of_four"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SparsifyConfig(PassConfig):
    sparsity: float = field(0.5, "Share of each weight's entries set to zero (0–1).")
    scope: str = field("layer", "layer: each weight its own threshold; global: one threshold.")
    pattern: str | None = field(None, "None (unstructured) or '2:4'.")


def two_of_four(w: np.ndarray, axis: int) -> np.ndarray:
    """Zero the 2 smallest |w| of every 4 consecutive entries along ``axis`` (its length is a
    multiple of 4; the caller checks)."""
    moved = np.moveaxis(w, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], -1, 4)
    order = np.argsort(np.abs(groups), axis=-1)
    mask = np.ones_like(groups, dtype=bool)
    np.put_along_axis(mask, order[..., :2], False, axis=-1)
    return np.moveaxis((groups * mask).reshape(moved.shape), -1, axis)


def _zlib(arrays) -> int:
    return sum(len(zlib.compress(np.ascontiguousarray(a).tobytes(), 6)) for a in arrays)


@register
class SparsifyPass(CompressPass):
    name = "sparsify"
    config_class = SparsifyConfig

    def call(self, model: ir.Model) -> PassResult:
        cfg = self.config
        if not 0.0 <= cfg.sparsity < 1.0 or cfg.scope not in ("layer", "global") or \
                cfg.pattern not in (None, "2:4"):
            raise ValueError(f"sparsify: sparsity in [0, 1), scope layer|global, pattern None|2:4;"
                             f" got {cfg.sparsity}, {cfg.scope!r}, {cfg.pattern!r}")
        weights, seen = [], set()
        for node in model.graph:
            v = weight_value(node) if is_weighted(node) else None
            w = const_array(v) if v is not None else None
            if w is not None and w.dtype == np.float32 and w.ndim >= 2 and v.name not in seen:
                seen.add(v.name)
                weights.append((node, v, w))
        before = _zlib(w for _, _, w in weights)
        cut = None
        if cfg.scope == "global" and cfg.pattern is None and weights and cfg.sparsity > 0:
            scores = np.concatenate([(np.abs(w) / max(np.abs(w).mean(), 1e-12)).ravel()
                                     for _, _, w in weights])
            cut = np.quantile(scores, cfg.sparsity)
        new, skipped = [], []
        for node, v, w in weights:
            if cfg.pattern == "2:4":
                axis = in_channel_axis(node, w.ndim)
                if w.shape[axis] % 4:
                    skipped.append(node.name)
                    new.append(w)
                    continue
                s = two_of_four(w, axis)
            elif cut is not None:
                s = np.where(np.abs(w) / max(np.abs(w).mean(), 1e-12) > cut, w, 0)
            elif cfg.sparsity > 0:
                thr = np.quantile(np.abs(w), cfg.sparsity)
                s = np.where(np.abs(w) > thr, w, 0)
            else:
                s = w
            s = s.astype(np.float32)
            v.const_value = ir.tensor(s, name=v.name)
            new.append(s)
        zeros = sum(int((a == 0).sum()) for a in new)
        total = sum(a.size for a in new)
        self.stats.update(
            weights=len(new), zero_share=round(zeros / max(total, 1), 4),
            zlib_bytes_before=before, zlib_bytes_after=_zlib(new),
            skipped_2_4=skipped,
            note="dense kernels gain no speed from zeros; the file compresses smaller",
        )
        logger.info("sparsify: %s", self.stats)
        return PassResult(model, modified=zeros > 0)

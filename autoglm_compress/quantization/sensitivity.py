"""Per-layer quantization error and automatic FP32 fallback.

SQNR(y, ŷ) = 10·log10(Σy² / Σ(y − ŷ)²) in dB, on a weighted op's output.
  * layer_sqnr: every layer's output in the fully quantized IR vs FP32 (cumulative error), from one
    executor run of each model — this is the report's per-layer table.
  * isolated sensitivity: quantize one layer alone, SQNR of the model output — ranks layers for
    fallback. Layers are returned to FP32 worst-first until the model output reaches the target cosine.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.quantization.scheme import WEIGHT_INPUTS

__all__ = ["sqnr_db", "layer_sqnr", "weighted_nodes", "isolated_sensitivity"]

logger = logging.getLogger(__name__)


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got.astype(np.float64)) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def weighted_nodes(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type in WEIGHT_INPUTS]


def _capture(model: ir.Model, feeds, names: set[str]) -> dict[str, list[np.ndarray]]:
    from autoglm_compress.runtime import TorchExecutor

    ex = TorchExecutor(model)
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}

    def hook(name, node, t):
        if name in got:
            got[name].append(t.detach().float().cpu().numpy())

    for f in feeds:
        ex.run(f, hook=hook)
    return got


def layer_sqnr(fp32: ir.Model, quantized: ir.Model, feeds) -> dict[str, float]:
    """Node name -> SQNR (dB) of its output in the quantized IR vs the FP32 IR."""
    outs = {n.name: n.outputs[0].name for n in weighted_nodes(fp32)}
    ref = _capture(fp32, feeds, set(outs.values()))
    got = _capture(quantized, feeds, set(outs.values()))
    res = {}
    for node, val in outs.items():
        if ref[val] and got[val]:
            res[node] = round(
                sqnr_db(
                    np.concatenate([r.ravel() for r in ref[val]]),
                    np.concatenate([g.ravel() for g in got[val]]),
                ),
                2,
            )
    return res


def isolated_sensitivity(fp32: ir.Model, quantize_with_keep, evaluate) -> list[tuple[str, float]]:
    """(node, score) worst-first; ``quantize_with_keep(keep_names) -> model``, ``evaluate(model) -> cos``.

    Each weighted layer is quantized alone (every other weighted node kept in float).
    """
    names = [n.name for n in weighted_nodes(fp32)]
    scores = []
    for name in names:
        keep = tuple(n for n in names if n != name)
        scores.append((name, evaluate(quantize_with_keep(keep))))
    return sorted(scores, key=lambda s: s[1])

"""Activation ranges chosen by the error they cause in the *consumer's* output, not in the tensor.

For an activation x read only by weighted ops (Conv/Gemm/MatMul, as their data input), each candidate
clipping range α·[lo, hi] (α ∈ ALPHAS) quantizes x under the target's activation scheme and is scored
by Σ_consumers ‖(Q_α(x) − x) W_cᵀ‖² / ‖x W_cᵀ‖² on sampled input rows (im2col rows for convs,
per group) of held-out calibration samples; the best α wins. A tensor with any other reader (Add,
Concat, pooling, a graph output) keeps its calibrated range: clipping it would change what those
readers see, which this score does not measure.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.calibration.qparams import compute_qparams, quant_range
from autoglm_compress.ir_ops import const_array, weight_input, weight_value
from autoglm_compress.quantization.im2col import layer_rows
from autoglm_compress.quantization.reconstruct import POSITIONS, k_order
from autoglm_compress.quantization.scheme import QuantScheme

__all__ = ["ALPHAS", "consumer_ranges", "search_for"]

logger = logging.getLogger(__name__)

ALPHAS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
FEEDS = 8
WEIGHTED = ("Conv", "Gemm", "MatMul")


def _consumers(value: ir.Value) -> list[ir.Node] | None:
    """The weighted ops reading ``value`` as data, or None when anything else reads it."""
    out = []
    if value.is_graph_output():
        return None
    for node, idx in value.uses():
        if node.op_type not in WEIGHTED or idx != 0 or weight_input(node) != 1:
            return None
        w = const_array(weight_value(node))
        if w is None or w.dtype != np.float32 or k_order(node, w) is None:
            return None
        out.append(node)
    return out or None


def _fake_quant(x: np.ndarray, lo: float, hi: float, tq) -> np.ndarray:
    s, z = compute_qparams(np.float32(lo), np.float32(hi), tq)
    s, z = float(np.asarray(s).reshape(-1)[0]), float(np.asarray(z).reshape(-1)[0])
    qmin, qmax = quant_range(tq)
    return (np.clip(np.round(x / s) + z, qmin, qmax) - z) * s


def consumer_ranges(model: ir.Model, scheme: QuantScheme, ranges: dict, feeds) -> dict:
    """tensor -> (lo, hi) for the tensors whose best α is not 1 (see the module doc)."""
    from autoglm_compress.quantization.sensitivity import tensor_runner

    cands = {}
    for v in {n.inputs[0] for n in model.graph if n.op_type in WEIGHTED and n.inputs}:
        if v is not None and v.name in ranges and v.const_value is None:
            cons = _consumers(v)
            if cons:
                cands[v.name] = cons
    feeds = list(feeds)[:FEEDS]
    if not cands or not feeds:
        return {}
    run = tensor_runner(model, sorted(cands))
    rng = np.random.default_rng(2)
    err = {name: np.zeros(len(ALPHAS)) for name in cands}
    weights = {n.name: k_order(n, const_array(weight_value(n))).astype(np.float32)
               for cons in cands.values() for n in cons}
    tq = scheme.activation
    for feed in feeds:
        acts = run(feed)
        for name, cons in cands.items():
            t = acts.get(name, feed.get(name))  # a graph input comes from the feed itself
            if t is None:
                continue
            lo, hi = ranges[name]
            for n in cons:
                x = layer_rows(n, t, rng, POSITIONS)  # [P, G, K]
                if x is None:
                    continue
                x = x.astype(np.float32)
                wk = weights[n.name]  # [G, O_g, K]
                ref = np.einsum("pgk,gok->pgo", x, wk)
                energy = float(np.sum(ref.astype(np.float64) ** 2)) or 1.0
                for i, a in enumerate(ALPHAS):
                    d = _fake_quant(x, lo * a, hi * a, tq) - x
                    e = np.einsum("pgk,gok->pgo", d, wk)
                    err[name][i] += float(np.sum(e.astype(np.float64) ** 2)) / energy
    out = {}
    for name, e in err.items():
        best = int(np.argmin(e))
        if best and e[best] < e[0]:
            lo, hi = ranges[name]
            out[name] = (lo * ALPHAS[best], hi * ALPHAS[best])
    logger.info("range search: %d of %d tensors clipped", len(out), len(cands))
    return out


def search_for(model: ir.Model, scheme: QuantScheme, stats) -> dict:
    """:func:`consumer_ranges` on the calibrated ranges and held-out samples of ``stats``, cached
    there (the fallback search and QAT quantize the same model again)."""
    if stats is None or not getattr(stats, "holdout", None):
        return {}
    key = ("range_search", scheme.name, tuple(n.name for n in model.graph if n.op_type in WEIGHTED))
    if key not in stats.cache:
        names = {n.inputs[0].name for n in model.graph if n.op_type in WEIGHTED and n.inputs
                 and n.inputs[0] is not None}
        rng = stats.ranges(symmetric=scheme.activation.symmetric, names=names)
        stats.cache[key] = consumer_ranges(model, scheme, rng, stats.holdout)
    return stats.cache[key]

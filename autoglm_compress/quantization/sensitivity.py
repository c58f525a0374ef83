"""Per-layer quantization error and automatic FP32 fallback.

SQNR(y, ŷ) = 10·log10(Σy² / Σ(y − ŷ)²) in dB, on a weighted op's output.
  * layer_sqnr: every layer's output in the fully quantized IR vs FP32 (cumulative error), from one
    run of each model (onnxruntime, whose DQ→float op is the executor's fake-quant maths; the
    executor when onnxruntime cannot run it), summed sample by sample — the report's per-layer table.
  * isolated sensitivity: quantize one layer alone, SQNR of the model output — ranks layers for
    fallback. Layers are returned to FP32 worst-first until the model output reaches the target cosine.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import is_weighted

__all__ = ["tensor_runner", "sqnr_db", "layer_sqnr", "weighted_nodes", "isolated_sensitivity", "holdout_cosine"]

logger = logging.getLogger(__name__)


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got.astype(np.float64)) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def weighted_nodes(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if is_weighted(n)]


def tensor_runner(model: ir.Model, names: list[str]):
    """feed -> {name: array} of ``names``: onnxruntime when it runs the model, else the executor."""
    from autoglm_compress.calibration.ort_stats import TensorRunner

    try:
        return TensorRunner(model, names).run
    except Exception as e:  # noqa: BLE001 - whatever onnxruntime refuses, the executor runs
        logger.info("layer SQNR in the torch executor (onnxruntime: %s)", e)
    from autoglm_compress.runtime import TorchExecutor

    ex, wanted = TorchExecutor(model), set(names)

    def run(feed):
        got = {}

        def hook(name, node, t):
            if name in wanted:
                got[name] = t.detach().float().cpu().numpy()

        ex.run(feed, hook=hook)
        return got

    return run


def layer_sqnr(fp32: ir.Model, quantized: ir.Model, feeds) -> dict[str, float]:
    """Node name -> SQNR (dB) of its output in the quantized IR vs the FP32 IR, over ``feeds``.

    Streaming: Σy² and Σ(y − ŷ)² are summed sample by sample, so memory is one sample's outputs.
    """
    outs = {n.name: n.outputs[0].name for n in weighted_nodes(fp32)}
    if not outs or not feeds:
        return {}
    names = sorted(set(outs.values()))
    ref_run, q_run = tensor_runner(fp32, names), tensor_runner(quantized, names)
    sums = {v: [0.0, 0.0] for v in names}
    for f in feeds:
        ref, got = ref_run(f), q_run(f)
        for v in names:
            if v in ref and v in got:
                r, g = ref[v].astype(np.float64), got[v].astype(np.float64)
                sums[v][0] += float(np.sum(r * r))
                sums[v][1] += float(np.sum((r - g) ** 2))
    res = {}
    for node, v in outs.items():
        signal, noise = sums[v]
        if signal or noise:
            res[node] = round(_db(signal, noise), 2)
    return res


def _db(signal: float, noise: float) -> float:
    return float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)


def isolated_sensitivity(
    fp32: ir.Model, quantize_with_keep, evaluate, candidates: list[str] | None = None
) -> list[tuple[str, float]]:
    """(node, score) worst-first; ``quantize_with_keep(keep_names) -> model``, ``evaluate(model) -> cos``.

    Each candidate (default: the weighted layers; the flow also passes the activation-only ops the
    scheme quantizes, e.g. an Add of squared STFT parts) is quantized alone, every other candidate
    kept in float.
    """
    names = candidates if candidates is not None else [n.name for n in weighted_nodes(fp32)]
    scores = []
    for name in names:
        keep = tuple(n for n in names if n != name)
        scores.append((name, evaluate(quantize_with_keep(keep))))
    return sorted(scores, key=lambda s: s[1])


def holdout_cosine(fp32: ir.Model, feeds, simulate: bool = False, of: str = "pooled"):
    """``cosine(model)``: the worst output's cosine of ``model`` vs ``fp32`` on ``feeds`` in
    onnxruntime (the FP32 outputs computed once); ``of``: ``pooled`` (all samples flattened
    together), ``min`` (the worst sample) or ``mean`` (over samples), as :func:`metrics.fidelity`
    measures them; ``simulate``: the QDQ graph as written, not this CPU's int8 kernels (for a
    target whose runtime is not this host's onnxruntime). ``cosine(model, of=...)`` asks for
    another statistic of the same run."""
    from autoglm_compress.ir_utils import ort_run, ort_session
    from autoglm_compress.metrics import fidelity

    ref_sess = ort_session(fp32)
    ref = [ort_run(ref_sess, f) for f in feeds]
    names = [v.name for v in fp32.graph.outputs]
    default = of

    def cosine(model: ir.Model, of: str = default) -> float:
        sess = ort_session(model, simulate=simulate)
        return fidelity(ref, [ort_run(sess, f) for f in feeds], names)[f"cosine_{of}"]

    return cosine

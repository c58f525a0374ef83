"""Layer-wise weight reconstruction: round each weight to the int8 grid so that the layer's *output*
error on calibration data is smallest, not each weight's own error (GPTQ / OBQ, Frantar et al. 2022).

For one layer y = W x with per-output-channel scales s (fixed: max|W_c| / q_max, as plain rounding),
minimise Σ_x ‖(Ŵ − W) x‖² = tr(ΔW H ΔWᵀ) with H = Σ x xᵀ over the layer's input rows (im2col rows for
a Conv, at sampled positions). Columns k = 0…K−1 are rounded one at a time; the error of column k,
divided by the Cholesky factor of H⁻¹, is pushed onto the columns not rounded yet — the closed-form
optimum of the remaining columns given this one. One pass per layer, no iterations: the cost is one
K×K Cholesky and K rank-1 updates (AdaRound's per-layer optimisation takes thousands of steps,
beyond what 2 cores can spend on an EfficientNet; docs/decisions/0014-x86-weight-width-gptq-ddp.md).

Groups: a Conv's groups each have their own H (depthwise: one 9×9 H per channel); Gemm/MatMul one.
H comes from the FP32 model's activations on calibration samples *after* the fallback hold-out, so
the hold-out still judges whether reconstruction helped. H gets 1 % of its mean diagonal added
(dampening); input columns that never see a non-zero value are rounded plainly.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import onnx_ir as ir
import torch

from autoglm_compress.calibration.qparams import quant_range
from autoglm_compress.ir_ops import const_array, groups, weight_value
from autoglm_compress.quantization.im2col import layer_rows
from autoglm_compress.quantization.qdq import weight_qparams, weight_quant_axis
from autoglm_compress.quantization.saturation import weight_quant_for
from autoglm_compress.quantization.scheme import QuantScheme

__all__ = ["k_order", "from_k_order", "gptq_round", "reconstruct_weights", "rounding_for"]

logger = logging.getLogger(__name__)

OPS = ("Conv", "Gemm", "MatMul")
POSITIONS = 512  # sampled im2col rows per sample and layer
SAMPLES = 64  # calibration samples H is summed over (after the hold-out)
DAMP = 0.01


def k_order(node: ir.Node, w: np.ndarray) -> np.ndarray | None:
    """The weight as ``[G, O_g, K]`` (K in (kh, kw, c) order for a Conv), or None."""
    if node.op_type == "Conv" and w.ndim >= 3:
        g = groups(node)
        o, cg = w.shape[:2]
        taps = int(np.prod(w.shape[2:]))
        return w.reshape(g, o // g, cg, taps).transpose(0, 1, 3, 2).reshape(g, o // g, taps * cg)
    if node.op_type in ("Gemm", "MatMul") and w.ndim == 2:
        t = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
        return (w if t else w.T)[None]
    return None


def from_k_order(node: ir.Node, wk: np.ndarray, shape) -> np.ndarray:
    """Inverse of :func:`k_order`."""
    if node.op_type == "Conv":
        g, og, k = wk.shape
        cg = shape[1]
        return wk.reshape(g, og, k // cg, cg).transpose(0, 1, 3, 2).reshape(shape)
    t = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
    return wk[0] if t else wk[0].T


def gptq_round(wk: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """Integer weights ``[G, O_g, K]`` for float ``wk [G, O_g, K]``, Hessians ``h [G, K, K]`` and
    scales ``scale [G, O_g]`` (symmetric, zero point 0, |q| ≤ qmax)."""
    w = wk.double().clone()
    h = h.double().clone()
    s = scale.double()[..., None]
    dead = torch.diagonal(h, dim1=1, dim2=2) <= 0  # [G, K]
    h[dead.unsqueeze(-1) & torch.eye(h.shape[-1], dtype=torch.bool)] = 1.0
    damp = DAMP * torch.diagonal(h, dim1=1, dim2=2).mean(-1)
    h += damp[:, None, None] * torch.eye(h.shape[-1], dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    block = 128
    k_all = w.shape[-1]
    for b0 in range(0, k_all, block):  # lazy batch updates (GPTQ §3): a block, then the rest
        b1 = min(b0 + block, k_all)
        wb = w[..., b0:b1].clone()
        err_b = torch.zeros_like(wb)
        hb = hinv[:, b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = wb[..., i]
            qi = torch.clamp(torch.round(col / s[..., 0]), -qmax, qmax)
            q[..., b0 + i] = qi
            err = (col - qi * s[..., 0]) / hb[:, i, i][:, None]
            wb[..., i:] -= err[..., None] * hb[:, i, i:][:, None, :]
            err_b[..., i] = err
        w[..., b1:] -= err_b @ hinv[:, b0:b1, b1:]
    return q


def _hessians(model: ir.Model, nodes: list[ir.Node], feeds) -> dict[str, np.ndarray]:
    from autoglm_compress.quantization.sensitivity import tensor_runner

    names = sorted({n.inputs[0].name for n in nodes})
    run = tensor_runner(model, names)
    rng = np.random.default_rng(1)
    hs: dict[str, np.ndarray] = {}
    for feed in feeds:
        acts = run(feed)
        for n in nodes:
            t = acts.get(n.inputs[0].name)
            if t is None:
                continue
            x = layer_rows(n, t, rng, POSITIONS)
            if x is None:
                continue
            h = _gram(x)
            if n.name in hs:
                hs[n.name] += h
            else:
                hs[n.name] = h
    return hs


def _gram(x: np.ndarray) -> np.ndarray:
    """``[G, K, K]`` Σ_p x_pgᵀ x_pg of rows ``x [P, G, K]`` (float32: every layer's H is held
    until the last sample, and a 1920-wide one is 15 MB; the GPTQ step works in float64)."""
    x = x.astype(np.float32, copy=False)
    if x.shape[1] == 1:
        x2 = x[:, 0, :]
        return (x2.T @ x2)[None]
    xg = np.ascontiguousarray(x.transpose(1, 2, 0))  # [G, K, P]
    return np.matmul(xg, xg.transpose(0, 2, 1))


def reconstruct_weights(
    model: ir.Model, scheme: QuantScheme, feeds, widths: dict | None = None, skip=frozenset(),
    per_tensor: bool = False,
) -> dict[str, dict]:
    """Node name → ``{"q": int weights (the ONNX layout), "scale": per-channel scales}``."""
    t0 = time.perf_counter()
    nodes = []
    for n in model.graph:
        w = const_array(weight_value(n)) if n.op_type in OPS else None
        if (w is not None and w.dtype == np.float32 and n.name not in skip and n.inputs[0] is not None
                and k_order(n, w) is not None):
            nodes.append(n)
    hs = _hessians(model, nodes, feeds) if nodes else {}
    out = {}
    for n in nodes:
        if n.name not in hs:
            continue
        w = const_array(weight_value(n))
        tq = weight_quant_for(scheme.weight, widths, n.name)
        if per_tensor:
            tq = tq.__class__(**{**tq.__dict__, "per_channel": False})
        ax = weight_quant_axis(n, w, tq)
        scale, _ = weight_qparams(w, ax, tq)
        wk = k_order(n, w)
        g, og, _ = wk.shape
        s = np.broadcast_to(scale, (g * og,)).reshape(g, og) if scale.ndim else np.full((g, og), scale)
        qmax = quant_range(tq)[1]
        q = gptq_round(torch.from_numpy(wk.copy()), torch.from_numpy(hs[n.name]), torch.from_numpy(s.copy()),
                       qmax).numpy()
        out[n.name] = {"q": from_k_order(n, q, w.shape).astype(np.int8), "scale": scale,
                       "axis": ax}
    logger.info("reconstructed %d layers in %.1f s", len(out), time.perf_counter() - t0)
    return out


def rounding_for(model: ir.Model, scheme: QuantScheme, stats, widths=None, per_tensor=False):
    """:func:`reconstruct_weights` on the calibration samples after the hold-out, cached on
    ``stats`` (bias correction and QDQ read the same rounding); None without calibration data."""
    if stats is None or getattr(stats, "source", None) is None:
        return None
    key = ("rounding", scheme.name, per_tensor, tuple(
        (n.name, tuple(weight_value(n).shape or ())) for n in model.graph
        if n.op_type in OPS and weight_value(n) is not None))
    if key not in stats.cache:
        skip_n = len(getattr(stats, "holdout", ()))
        feeds = list(stats.source.take(skip_n + SAMPLES))[skip_n:] or list(stats.holdout)
        stats.cache[key] = reconstruct_weights(model, scheme, feeds, widths, per_tensor=per_tensor)
    return stats.cache[key]

"""Weights per layer for x86 AVX2 without VNNI: int8, or uint8 where VPMADDUBSW could saturate.

onnxruntime's u8·s8 GEMM on AVX2 (and AVX-512BW) without VNNI multiplies u8 activations by s8
weights with VPMADDUBSW: two adjacent products along the reduction axis K are added into an int16
*with saturation* before the int32 accumulation. With 8-bit weights a pair can reach
2·255·127 = 64770 > 32767; with 7-bit weights (|q| ≤ 63) at most 32130: never. The pairs are
(k, k+1) for even k in onnxruntime's K order: Gemm/MatMul the reduction axis; Conv the channels-last
im2col order (kh, kw, c) of each group (QLinearConv runs on NHWC); depthwise convs run a kernel with
int32 products and are exempt. ``tests/test_saturation.py`` checks this model of the kernel
against onnxruntime's own output, bit for bit, on this CPU.

The rule, per Conv/Gemm/MatMul with a constant weight:

1. **bound**: each input channel's u8 values lie in ``[u_lo, u_hi]`` (from the calibrated max|x| of
   the channel, or the tensor's range); if no weight pair of the 8-bit weights can leave int16 over
   those intervals, int8 weights (onnxruntime's fast U8S8 kernel) — exact, nothing can saturate;
2. **measured**: otherwise, on a few held-out calibration samples (``FEEDS`` feeds, ``POSITIONS``
   sampled output positions each), the saturation the int8 weights would suffer is simulated
   exactly (:func:`saturation_error`) and its mean squared effect on the layer's float output is
   compared with the layer's own 8-bit weight rounding error on the same rows. Where it is larger
   than ``RATIO`` × that rounding error, **uint8 weights**: the same 8-bit symmetric grid written
   as uint8 with zero point 128 (``q + 128``); onnxruntime then runs its U8U8 kernel, which widens
   both operands to int16 and adds products in int32 (VPMADDWD): no saturation, but slower.
   Elsewhere int8 weights (fast U8S8): the saturation there is small next to rounding that every
   8-bit layer has anyway. Without samples: uint8 wherever a pair can saturate (no data, no risk).
   (Before: every layer whose pairs *can* saturate was uint8 — 44 of 65 EfficientNet-Lite1
   layers, 1.04× FP32's AVX2 instructions; and before that 8 vs 7 bits measured on 16 samples —
   10 % of an EfficientNet run, 7 bits cost accuracy; docs/decisions/0021-trust-any-machine-any-input.md.)
3. a layout this rule does not know: 7 bits.

A VNNI CPU (VPDPBUSD adds in int32) or a non-x86 host needs none of this: 8 bits everywhere.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

from autoglm_compress.calibration.qparams import compute_qparams
from autoglm_compress.ir_ops import const_array, groups, weight_value
from autoglm_compress.quantization.im2col import layer_rows
from autoglm_compress.quantization.scheme import QuantScheme, TensorQuant

__all__ = [
    "host_cpu", "pair_layout", "pair_bounds", "saturation_error", "weight_widths", "widths_for",
    "weight_quant_for", "stores_uint8",
]

logger = logging.getLogger(__name__)

INT16_MIN, INT16_MAX = -32768, 32767
# held-out samples the measured rule runs the FP32 model on, and sampled output positions (im2col
# rows) per feed and layer: 512 rows per conv either way, but a Gemm/MatMul over a batch of one has
# ONE row per feed — with 4 feeds the rule saw 4 rows of the digits CNN's classifier, measured no
# saturation, and the classifier kept int8 weights that saturated on the eval set (relative error
# 5.4× the QDQ maths' in onnxruntime's AVX2 kernels, found running the suite under tools/avx2.py)
FEEDS = 16
POSITIONS = 32
# uint8 where saturation's output MSE exceeds RATIO × the layer's 8-bit weight rounding MSE: above
# 1 saturation is the larger part of the layer's weight error (it more than doubles it). The old
# 8-vs-7-bit rule amounted to about 3 (7-bit rounding ≈ 4 × 8-bit), and uint8 on its 23 Lite1
# layers held top-1 (0.9375 under Haswell); 1 is the careful side of that. On EfficientNet-Lite1
# the 44 layers that can saturate fall in two clusters, ≤ 0.53 and ≥ 1.27: 1 picks the gap.
RATIO = 1.0


def host_cpu() -> str:
    """``"vnni"`` (x86 with AVX512-VNNI or AVX-VNNI), ``"avx2"`` (x86 without), ``"other"``.
    CPUID as torch reads it (right under an emulator too), else ``/proc/cpuinfo``'s flags."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "other"
    try:
        import torch

        caps = torch.cpu.get_capabilities()
        flags = {k for k, v in caps.items() if v}
    except Exception:  # noqa: BLE001 - an older torch: the kernel's view of the flags
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "avx2"
        line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
        flags = set(line.split(":", 1)[-1].split())
    return "vnni" if flags & {"avx512_vnni", "avx_vnni"} else "avx2"


def pair_layout(node: ir.Node, w: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
    """``[(rows, W_k, channel)]`` per group: the output channels ``rows``, their weights ``[O_g, K]``
    in onnxruntime's K order and the input channel of each k. ``[]``: exempt (depthwise);
    None: a layout this rule does not know."""
    op = node.op_type
    if op == "Conv" and w.ndim >= 3:
        g = groups(node)
        o, cg = w.shape[:2]
        if g > 1 and cg == 1:
            return []
        taps = int(np.prod(w.shape[2:]))
        og = o // g
        out = []
        for gi in range(g):
            wg = w[gi * og:(gi + 1) * og].reshape(og, cg, taps).transpose(0, 2, 1).reshape(og, -1)
            chan = np.tile(np.arange(gi * cg, (gi + 1) * cg), taps)
            out.append((np.arange(gi * og, (gi + 1) * og), wg, chan))
        return out
    if op in ("Gemm", "MatMul") and w.ndim == 2:
        wk = w if op == "Gemm" and node.attributes.get_int("transB", 0) else w.T
        return [(np.arange(wk.shape[0]), wk, np.arange(wk.shape[1]))]
    return None


def _pairs(a: np.ndarray) -> np.ndarray:
    """``[..., K]`` → ``[..., ceil(K/2), 2]`` (a zero appended to odd K, as the kernel pads)."""
    if a.shape[-1] % 2:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (1,), a.dtype)], axis=-1)
    return a.reshape(a.shape[:-1] + (-1, 2))


def pair_bounds(wq: np.ndarray, u_lo: np.ndarray, u_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest and smallest int16 pair sum ``[O, K/2]`` of int weights ``wq [O, K]`` over inputs
    ``u[k] ∈ [u_lo[k], u_hi[k]]``."""
    a, b = wq.astype(np.int64) * u_lo.astype(np.int64), wq.astype(np.int64) * u_hi.astype(np.int64)
    return _pairs(np.maximum(a, b)).sum(-1), _pairs(np.minimum(a, b)).sum(-1)


def saturation_error(x: np.ndarray, wq: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``[P, O]``: (saturated − exact) sum of the int16 pair sums of u8 rows ``x [P, K]`` times
    int weights ``wq [O, K]`` — only over the pairs ``mask [O, K/2]`` marks (those that can
    saturate at all)."""
    xp, wp = _pairs(x.astype(np.int64)), _pairs(wq.astype(np.int64))
    o_idx, j_idx = np.nonzero(mask if mask is not None else np.ones(wp.shape[:2], bool))
    err = np.zeros((x.shape[0], wq.shape[0]), np.int64)
    step = max(1, (1 << 22) // max(1, x.shape[0]))
    for s in range(0, len(o_idx), step):
        o, j = o_idx[s:s + step], j_idx[s:s + step]
        sums = xp[:, j, 0] * wp[o, j, 0] + xp[:, j, 1] * wp[o, j, 1]  # [P, M]
        d = np.clip(sums, INT16_MIN, INT16_MAX) - sums
        uniq, starts = np.unique(o, return_index=True)  # o is sorted (np.nonzero's order)
        err[:, uniq] += np.add.reduceat(d, starts, axis=1)
    return err


def _u8_intervals(x_name, chan_absmax, rng, tq: TensorQuant, n_chan: int):
    """Per input channel u8 interval and the tensor's (scale, zero point)."""
    lo, hi = rng
    s, z = compute_qparams(np.float32(lo), np.float32(hi), tq, name=x_name)
    s, z = float(np.asarray(s).reshape(-1)[0]), int(np.asarray(z).reshape(-1)[0])
    t_lo = np.clip(np.floor(lo / s) + z, 0, 255)
    t_hi = np.clip(np.ceil(hi / s) + z, 0, 255)
    u_lo, u_hi = np.full(n_chan, t_lo), np.full(n_chan, t_hi)
    if chan_absmax is not None and np.asarray(chan_absmax).shape == (n_chan,):
        a = np.ceil(np.asarray(chan_absmax, np.float64) / s)
        u_lo, u_hi = np.maximum(u_lo, z - a), np.minimum(u_hi, z + a)
    return u_lo, u_hi, s, z


def weight_widths(
    model: ir.Model, scheme: QuantScheme, ranges: dict, channel_absmax: dict | None = None,
    skip=frozenset(), feeds=(),
) -> dict[str, dict]:
    """Node name → ``{"bits": 8|7, "rule": …, ["storage": "uint8"], figures}`` for the weighted
    nodes whose input has a range in ``ranges``; ``feeds``: held-out samples for the measured
    rule (the first ``FEEDS``). See the module doc."""
    out: dict[str, dict] = {}
    pending: list[_Layer] = []
    for node in model.graph:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.name in skip:
            continue
        w, x = const_array(weight_value(node)), node.inputs[0]
        if w is None or w.dtype != np.float32 or x is None or x.name not in ranges:
            continue
        layout = pair_layout(node, w)
        if layout is None:
            out[node.name] = {"bits": 7, "rule": "layout unknown"}
            continue
        if not layout:
            out[node.name] = {"bits": 8, "rule": "exempt (depthwise)"}
            continue
        n_chan = int(max(c.max() for _, _, c in layout)) + 1
        u_lo, u_hi, s_x, z_x = _u8_intervals(
            x.name, (channel_absmax or {}).get(x.name), ranges[x.name], scheme.activation, n_chan)
        layer = _Layer(node, layout, s_x, z_x)
        for _, wk, chan in layout:
            wq, s_w = _quant(wk, 127)
            hi, lo = pair_bounds(wq, u_lo[chan], u_hi[chan])
            layer.masks.append((hi > INT16_MAX) | (lo < INT16_MIN))
            layer.q8.append((wq, s_w))
        can = sum(int(np.count_nonzero(m)) for m in layer.masks)
        if not can:
            out[node.name] = {"bits": 8, "rule": "bound"}
            continue
        layer.can = round(can / sum(m.size for m in layer.masks), 6)
        pending.append(layer)
    feeds = list(feeds)[:FEEDS]
    if pending and feeds:
        _measure(model, pending, feeds)
    for layer in pending:
        info = {"bits": 8, "pairs_that_can_saturate": layer.can}
        if layer.err is None:
            info.update(rule="uint8 weights (pairs can saturate; no samples)", storage="uint8")
        else:
            sat, rnd, hit = layer.err
            ratio = sat / rnd if rnd > 0 else (np.inf if sat > 0 else 0.0)
            info.update(saturated_outputs=round(hit, 6), saturation_vs_rounding=(
                float(f"{ratio:.4g}") if np.isfinite(ratio) else "inf"))
            if ratio > RATIO:
                info.update(rule="uint8 weights (measured saturation > rounding)", storage="uint8")
            else:
                info.update(rule="measured: saturation <= rounding")
        out[layer.node.name] = info
    return out


@dataclasses.dataclass
class _Layer:
    node: ir.Node
    groups: list  # pair_layout
    s_x: float
    z_x: int
    masks: list = dataclasses.field(default_factory=list)  # per group [O_g, K/2]: can saturate
    q8: list = dataclasses.field(default_factory=list)  # per group (int weights [O_g, K], scales)
    can: float = 0.0
    err: tuple | None = None  # (saturation MSE, rounding MSE, share of outputs saturated)


def _measure(model: ir.Model, layers: list[_Layer], feeds) -> None:
    """Per layer, on ``POSITIONS`` sampled rows of each feed: the mean squared change of the float
    output that saturation makes, the 8-bit weight rounding's, and how many outputs saturate."""
    from autoglm_compress.quantization.sensitivity import tensor_runner

    run = tensor_runner(model, sorted({lay.node.inputs[0].name for lay in layers}))
    rng = np.random.default_rng(0)
    # each layer's rows go into one buffer allocated at the first feed: small arrays kept from
    # every feed, scattered between the freed activations, fragmented glibc's heap (+180 MB peak
    # on EfficientNet-Lite1 with 16 feeds instead of 4)
    bufs: dict[int, np.ndarray] = {}
    fill: dict[int, int] = {}
    for feed in feeds:
        acts = run(feed)
        for lay in layers:
            t = acts.get(lay.node.inputs[0].name)
            r = None if t is None else layer_rows(lay.node, t, rng, POSITIONS)
            if r is None:
                continue
            if id(lay) not in bufs:
                bufs[id(lay)] = np.empty((len(feeds) * POSITIONS, *r.shape[1:]), np.float32)
                fill[id(lay)] = 0
            n = fill[id(lay)]
            bufs[id(lay)][n:n + len(r)] = r
            fill[id(lay)] = n + len(r)
        del acts  # one feed's activations alive at a time
    for lay in layers:
        if id(lay) not in bufs:
            continue
        xs = bufs[id(lay)][:fill[id(lay)]]  # [P, G, K]
        sat_se = rnd_se = 0.0
        hit = n = 0
        for gi, ((_, wk, _), mask, (wq, s_w)) in enumerate(zip(lay.groups, lay.masks, lay.q8)):
            x = np.clip(np.round(xs[:, gi] / lay.s_x) + lay.z_x, 0, 255)
            xc = x - lay.z_x
            err = saturation_error(x, wq, mask)  # int accumulator steps [P, O_g]
            sat_se += float(np.sum((err * s_w) ** 2))
            rnd_se += float(np.sum((xc @ (wq * s_w[:, None] - wk).T) ** 2))
            hit += int(np.count_nonzero(err))
            n += err.size
        if n:
            lay.err = (sat_se / n, rnd_se / n, hit / n)


def _quant(wk: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.maximum(np.abs(wk).max(axis=1) / qmax, 1e-30)
    return np.clip(np.round(wk / s[:, None]), -qmax, qmax), s


def widths_for(model: ir.Model, scheme: QuantScheme, stats=None, ranges=None) -> dict | None:
    """:func:`weight_widths` when ``scheme.saturation_guard`` is on, else None: ranges and channel
    max|x| from the calibration ``stats`` (or the given ``ranges``), the measured rule on its
    held-out samples; cached on ``stats`` (the fallback search and QAT quantize the same model again)."""
    if not scheme.saturation_guard:
        return None
    if stats is None:
        return weight_widths(model, scheme, ranges or {})
    key = ("weight_widths", scheme.name, tuple(
        (n.name, tuple(weight_value(n).shape or ())) for n in model.graph
        if n.op_type in ("Conv", "Gemm", "MatMul") and weight_value(n) is not None))
    cache = stats.cache
    if key not in cache:
        names = {n.inputs[0].name for n in model.graph
                 if n.op_type in ("Conv", "Gemm", "MatMul") and n.inputs and n.inputs[0] is not None}
        rng = ranges if ranges is not None else stats.ranges(
            symmetric=scheme.activation.symmetric, names=names)
        t0 = time.perf_counter()
        cache[key] = weight_widths(model, scheme, rng, stats.channel_absmax,
                                   feeds=getattr(stats, "holdout", ()))
        u8 = sum(v.get("storage") == "uint8" for v in cache[key].values())
        can = sum("pairs_that_can_saturate" in v for v in cache[key].values())
        logger.info("x86 weights: %d of %d layers stored uint8 (%d can saturate; %.2f s)",
                    u8, len(cache[key]), can, time.perf_counter() - t0)
    return cache[key]


def stores_uint8(widths: dict | None, node_name: str) -> bool:
    """The node's int8 weights are written as uint8 with zero point 128 (same values)."""
    return bool(widths) and widths.get(node_name, {}).get("storage") == "uint8"


def weight_quant_for(tq: TensorQuant, widths: dict | None, node_name: str) -> TensorQuant:
    """``tq`` with the width :func:`weight_widths` picked for the node (7 bits: reduce_range).
    A uint8-stored layer keeps ``tq`` (int8 symmetric): its grid is the int8 one, shifted by 128
    only when written (:func:`stores_uint8`)."""
    if not widths or node_name not in widths:
        return tq
    return dataclasses.replace(tq, reduce_range=widths[node_name]["bits"] == 7)

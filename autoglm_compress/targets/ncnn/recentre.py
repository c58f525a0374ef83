"""Re-centre one-signed int8 blobs: ncnn's symmetric activations spend half their codes on a
ReLU / ReLU6 output that is never negative; written as ``c − y`` it uses all of them.

ncnn quantizes a conv's input with one scale and no zero point (``q = round(x·s)``, |q| ≤ 127):
an input in [0, a] gets the codes 0..127, a step of a/127 where an asymmetric scheme (TFLite,
onnxruntime) has a/255 — 6 dB more rounding noise on every such edge of a MobileNet-class net
(each depthwise and projection conv of an inverted residual block reads one).

For a conv P (int8, or kept float) whose fused activation is ReLU or Clip(0, M) and whose output blob is read, at
most through Splits, only by int8 conv / depthwise / FC layers quantizing it at one scale s
(a = 127/s), with c = a/2:

- P computes y'' = c − act(z) instead: its int8 weights and bias negated, bias + c, activation
  Clip(c − M, c) (ReLU: Clip(−inf, c)) — ``c − clip(z, 0, M) = clip(−z + c, c − M, c)``;
- each reader R computes W·y + b = (−W)·y'' + (b + c·ΣW): int8 weights negated, bias plus c
  times each output channel's sum of its dequantized int8 weights (what ncnn multiplies),
  input scale 2s (y'' ∈ [−c, c] → codes −127..127); a padded R pads with the code of y = 0, which
  is y'' = c → 127 (ncnn pads an int8 input with ``(signed char) pad_value``, param 18 — on x86
  and aarch64; the x86 8-lane int8 padding builds its fill from an int64 cast that is right for
  non-negative values only, so the sign of the rewrite is chosen to make the fill +127).

Exact in real numbers; in int8 it is the same grid shifted by half the range, so clipping is
unchanged (y ≥ a still saturates) and the step halves. Every other blob is left as lowered.
"""

from __future__ import annotations

import numpy as np

from autoglm_compress.targets.ncnn.param import Layer, NcnnGraph

__all__ = ["recentre_graph", "PAD_CODE"]

WRITERS = ("Convolution", "ConvolutionDepthWise")
READERS = (*WRITERS, "InnerProduct")
PAD_CODE = 127.0  # the int8 code of y = 0 once re-centred (y'' = c)
_NO_BOUND = 3.4e38
_PADS = (4, 14, 15, 16)


def _int8(layer: Layer) -> bool:
    return layer.type in READERS and layer.params.get(8, 0) % 100 in (1, 2) \
        and layer.bottom_scale is not None


def _upper(layer: Layer) -> float | None:
    """The upper clip M of a ReLU / Clip(0, M) fused into ``layer`` (inf for ReLU), else None."""
    act = layer.params.get(9, 0)
    if act == 1:
        return float("inf")
    if act == 3:
        lo, hi = (float(v) for v in layer.params.get(10, [-_NO_BOUND, _NO_BOUND]))
        if lo == 0.0 and 0.0 < hi:
            return hi if hi < _NO_BOUND else float("inf")
    return None


def _slots(layer: Layer) -> dict[str, int]:
    """Indices in ``layer.weights`` of an int8 conv / FC: data, bias (or absent), scales, input."""
    has_bias = bool(layer.params.get(5 if layer.type in WRITERS else 1, 0))
    out = {"w": 0, "scales": 2 if has_bias else 1, "s_in": 3 if has_bias else 2}
    if has_bias:
        out["bias"] = 1
    return out


def _negate(layer: Layer) -> None:
    kind, w = layer.weights[0]  # int8 codes (|q| ≤ 127: exact) or a float layer's weights
    layer.weights[0] = (kind, (-w.astype(np.int16)).astype(np.int8) if w.dtype == np.int8 else -w)


def _add_bias(layer: Layer, delta: np.ndarray, sign: float = 1.0) -> None:
    """bias ← sign·bias + delta (a missing bias counts as 0 and is added)."""
    slots = _slots(layer)
    if "bias" in slots:
        b = layer.weights[slots["bias"]][1].astype(np.float64)
        layer.weights[slots["bias"]] = ("raw", (sign * b + delta).astype(np.float32))
    else:
        layer.weights.insert(1, ("raw", np.asarray(delta, np.float32)))
        layer.params[5 if layer.type in WRITERS else 1] = 1


def _weight_sums(layer: Layer) -> np.ndarray:
    """Σ of each output channel's dequantized int8 weights (ncnn: w = q / scale)."""
    slots, out = _slots(layer), int(layer.params[0])
    q = layer.weights[slots["w"]][1].astype(np.float64).reshape(out, -1)
    scales = layer.weights[slots["scales"]][1].astype(np.float64).reshape(-1)
    per_out = np.repeat(scales, out // scales.size) if scales.size != out else scales
    return q.sum(axis=1) / per_out


def _readers(graph: NcnnGraph) -> dict[str, list[Layer]]:
    readers: dict[str, list[Layer]] = {}
    for layer in graph.layers:
        for b in layer.inputs:
            readers.setdefault(b, []).append(layer)
    return readers


def _reach(blob: str, readers: dict[str, list[Layer]], outputs: set[str]):
    """(the int8 readers of ``blob`` through Splits, the blobs holding its values), or None when
    any other layer (or the graph output) reads it."""
    found, todo, seen = [], [blob], []
    while todo:
        b = todo.pop()
        seen.append(b)
        if b in outputs:
            return None
        nxt = readers.get(b, [])
        if not nxt:
            return None
        for r in nxt:
            if r.type == "Split":
                todo.extend(r.outputs)
            elif _int8(r) and r.inputs[0] == b:
                found.append(r)
            else:
                return None
    return found, seen


def recentre_graph(graph: NcnnGraph, outputs=()) -> int:
    """Re-centre every eligible one-signed int8 edge of ``graph`` (module doc); returns how many
    writers were rewritten and sets ``graph.recentred``: blob → c for every blob that now holds
    c − y (a reader of the file's intermediate blobs — the per-layer error — undoes it). Run
    before requantize fusion (which reads the new input scales)."""
    readers, outs, done = _readers(graph), set(outputs), 0
    graph.recentred = {}
    for p in graph.layers:
        if p.type not in WRITERS or p.params.get(8, 0) > 100:
            continue
        upper = _upper(p)
        reached = _reach(p.outputs[0], readers, outs) if upper is not None else None
        targets, blobs = reached if reached else ([], [])
        if not targets or len({np.float32(t.bottom_scale) for t in targets}) != 1:
            continue
        s = float(np.float32(targets[0].bottom_scale))
        c = 127.0 / (2.0 * s)
        _negate(p)
        _add_bias(p, np.full(int(p.params[0]), c), sign=-1.0)
        p.params[9] = 3
        p.params[10] = [c - upper if np.isfinite(upper) else -_NO_BOUND, c]
        for r in targets:
            sums = _weight_sums(r)
            _negate(r)
            _add_bias(r, c * sums)
            r.bottom_scale = 2.0 * s
            r.weights[_slots(r)["s_in"]] = ("raw", np.asarray([2.0 * s], np.float32))
            if r.type in WRITERS and any(int(r.params.get(k, 0)) for k in _PADS):
                r.params[18] = PAD_CODE
        graph.recentred.update(dict.fromkeys(blobs, c))
        done += 1
    return done

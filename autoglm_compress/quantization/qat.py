"""Quantization-aware fine-tuning (QAT) numerics; the pass that runs them is passes/qat.py.

1. Build the training graph: the target's QDQ graph, but with float weights behind QuantizeLinear
   (``fake_weights``) and float biases; activation scales are the calibrated ones, fixed.
2. Train the quantized layers' weights and biases in the torch executor (fake-quant, straight-through
   rounding) to reproduce the FP32 model's outputs on calibration samples (``runtime.train_loop``).
   After every step each weight scale is recomputed as max|W_c| / q_max — the export's own rule.
3. Write the trained weights into a copy of the FP32 model and quantize it again under the same
   scheme and activation ranges (no bias correction: the biases were trained), so the exported
   model is the trained student up to int32 bias rounding.
4. Keep whichever of PTQ / QAT has the higher worst-case cosine on held-out calibration samples
   (never the eval data the report scores).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.calibration.qparams import MIN_SCALE
from autoglm_compress.errors import ConfigError
from autoglm_compress.ir_ops import WEIGHTED_OPS, is_weighted
from autoglm_compress.ir_utils import add_initializer

__all__ = [
    "QATConfig", "weight_quantizers", "activation_quantizers", "learned_ranges", "trained_biases",
    "weight_qmax", "scale_refresher", "transfer",
    "training_feeds",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class QATConfig:
    steps: int = 0  # optimizer steps; 0 = off
    lr: float = 1e-4
    batch: int = 16
    samples: int = 256  # calibration samples to train on (held-out ones excluded)
    device: str | None = None  # None: CUDA when present, else CPU

    def validate(self) -> None:
        if self.steps < 0 or self.batch < 1 or self.samples < 1 or not self.lr > 0:
            raise ConfigError(
                f"QAT needs steps ≥ 0, batch ≥ 1, samples ≥ 1 and lr > 0; got steps={self.steps} "
                f"batch={self.batch} samples={self.samples} lr={self.lr}"
            )


def weight_quantizers(g: ir.Graph) -> list[tuple[str, str, int | None]]:
    """(weight, scale, axis) for every QuantizeLinear that reads a float initializer."""
    out = []
    for node in g:
        w = node.inputs[0] if node.op_type == "QuantizeLinear" else None
        if w is not None and w.name in g.initializers and w.dtype == ir.DataType.FLOAT:
            ax = node.attributes.get_int("axis", 1) if node.inputs[1].shape.rank() else None
            out.append((w.name, node.inputs[1].name, ax))
    return out


def trained_biases(g: ir.Graph) -> list[str]:
    names = []
    for node in g:
        spec = WEIGHTED_OPS.get(node.op_type)
        if spec is None or spec.bias is None or len(node.inputs) <= spec.bias:
            continue
        w, b = node.inputs[spec.weight], node.inputs[spec.bias]
        quantized = w is not None and w.producer() is not None
        if quantized and b is not None and b.name in g.initializers:
            names.append(b.name)
    return names


def activation_quantizers(g: ir.Graph) -> list[tuple[str, str, str | None]]:
    """(tensor, scale, zero point) of every per-tensor QuantizeLinear on an activation whose scale
    is an initializer: what LSQ-style QAT learns."""
    out = []
    for node in g:
        if node.op_type != "QuantizeLinear":
            continue
        x, s = node.inputs[0], node.inputs[1]
        z = node.inputs[2] if len(node.inputs) > 2 else None
        if (x is not None and x.name not in g.initializers and s is not None
                and s.name in g.initializers and not s.shape.rank()):
            out.append((x.name, s.name, z.name if z is not None else None))
    return out


def learned_ranges(params: dict, acts, g: ir.Graph) -> dict[str, tuple[float, float]]:
    """tensor -> (lo, hi) that the export's qparams rule turns back into the learned (s, z):
    [(q_min − z)·s, (q_max − z)·s] (symmetric int8: ±127·s)."""
    out = {}
    for x, s_name, z_name in acts:
        s = float(params[s_name].detach().reshape(()))
        if not np.isfinite(s) or s <= 0:
            continue  # diverged: the calibrated range stays
        zv = g.initializers.get(z_name) if z_name else None
        z = zv.const_value.numpy() if zv is not None else np.zeros((), np.uint8)
        if z.dtype == np.uint8:
            zi = int(z.reshape(()))
            out[x] = ((0 - zi) * s, (255 - zi) * s)
        else:
            out[x] = (-127 * s, 127 * s)
    return out


def _amax(w, ax):
    return w.abs().amax() if ax is None else w.abs().movedim(ax, 0).reshape(w.shape[ax], -1).amax(dim=1)


def weight_qmax(params: dict, quantizers) -> dict[str, int]:
    """Each weight's q_max as its QuantizeLinear was written (127, or 63 where the layer got 7-bit
    weights): max|W| / scale of its widest channel."""
    out = {}
    for w_name, s_name, ax in quantizers:
        ratio = _amax(params[w_name].detach(), ax).reshape(-1) / params[s_name].detach().reshape(-1)
        out[w_name] = int(round(float(ratio.max())))
    return out


def scale_refresher(params: dict, quantizers, qmax):
    """After each step s = max|W_c| / q_max (``qmax``: one int, or weight name -> int)."""
    def refresh() -> None:
        for w_name, s_name, ax in quantizers:
            q = qmax[w_name] if isinstance(qmax, dict) else qmax
            amax = _amax(params[w_name], ax)
            params[s_name].copy_((amax / q).clamp_min(MIN_SCALE).reshape(params[s_name].shape))

    return refresh


def transfer(train: ir.Graph, params: dict, trained: set, tuned: ir.Model) -> ir.Model:
    """Write the trained weights and biases into the FP32 copy, node by node (bias correction may
    have given a layer a new or a first bias in the training graph)."""
    by_name = {n.name: n for n in tuned.graph if is_weighted(n)}
    for node in train:
        spec, dst = WEIGHTED_OPS.get(node.op_type), by_name.get(node.name)
        if spec is None or dst is None:
            continue
        for idx in (spec.weight, spec.bias):
            v = node.inputs[idx] if idx is not None and len(node.inputs) > idx else None
            while v is not None and v.name not in trained and v.producer() is not None:
                v = v.producer().inputs[0]  # weight: DQ ← Q ← float W
            if v is None or v.name not in trained:
                continue
            arr = params[v.name].detach().cpu().numpy().astype(np.float32)
            if len(dst.inputs) <= idx:
                dst.resize_inputs(idx + 1)
            old = dst.inputs[idx]
            if old is not None and old.name == v.name and old.name in tuned.graph.initializers:
                old.const_value = ir.tensor(arr, name=v.name)
            else:
                dst.replace_input_with(idx, add_initializer(tuned.graph, v.name, arr))
    return tuned


def training_feeds(source, n_holdout: int, n: int) -> list[dict[str, np.ndarray]]:
    """Calibration samples after the held-out ones (all of them when too few are left)."""
    feeds = list(source.take(n + n_holdout))
    rest = feeds[n_holdout:]
    return rest if len(rest) >= max(8, len(feeds) // 2) else feeds

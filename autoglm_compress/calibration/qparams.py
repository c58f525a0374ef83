"""Range → quantization parameters (scale, zero point) for int8/uint8 affine quantization.

Affine quantization maps a real ``x`` to ``q = clamp(round(x / s) + z, q_min, q_max)`` and back to
``x̂ = (q - z) · s``. Given an observed range ``[lo, hi]`` this module picks ``s`` and ``z``:

* the range is first widened to include 0 (``lo ← min(lo, 0)``, ``hi ← max(hi, 0)``) so that 0 — the
  value of padding and of every ReLU-clipped activation — is exactly representable (``z`` is an
  integer, so ``x = 0`` maps to ``q = z`` with no error);
* **symmetric**: ``a = max(|lo|, |hi|)``, ``s = a / (q_max - z)`` with ``z = 0`` for int8 and
  ``z = 2^(bits-1)`` (128, or 64 with ``reduce_range``) for uint8;
* **asymmetric**: ``s = (hi - lo) / (q_max - q_min)``,
  ``z = clamp(round(q_min - lo / s), q_min, q_max)``.

Integer limits: 8 bits, or 7 with ``reduce_range`` (x86 without VNNI: avoids int16 saturation in
u8·s8 multiply-adds); int8 is ``[-2^(b-1), 2^(b-1) - 1]``, with ``narrow_range`` the lower limit is
``-2^(b-1) + 1`` (symmetric ``[-127, 127]``); uint8 is ``[0, 2^b - 1]``.

Guards: a zero-width range (a constant tensor, e.g. all zeros) would give ``s = 0`` and a division
by zero downstream, so ``s = max(s, MIN_SCALE)`` with ``MIN_SCALE = 1e-30`` — only a guard, never
a floor that a real tensor reaches: a network whose activations are ~1e-12 (random-weight nets,
outputs of 1e-9) keeps its own resolution (a 1e-8 floor zeroed such tensors: cosine 0.0), and
products of two scales (int32 bias scales) stay above float32's smallest normal; a non-finite
range raises
:class:`CalibrationError`. The returned scale is always finite and positive. ``MIN_SCALE`` and :func:`quant_range` are the
only definitions of the guard and of the integer limits: weights, activations, biases and QAT all
take them from here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from autoglm_compress.errors import CalibrationError, ConfigError

if TYPE_CHECKING:
    from autoglm_compress.quantization.scheme import TensorQuant

__all__ = ["MIN_SCALE", "quant_bits", "quant_range", "compute_qparams"]

logger = logging.getLogger(__name__)

MIN_SCALE = 1e-30  # guard for zero-width ranges: never a zero, NaN or Inf scale (not a floor)
_DTYPES = ("int8", "uint8")


def _spec(dtype, narrow_range: bool, reduce_range: bool) -> tuple[str, bool, bool]:
    """``(dtype, narrow_range, reduce_range)`` of a dtype name or a :class:`TensorQuant`."""
    if isinstance(dtype, str):
        return dtype, narrow_range, reduce_range
    return dtype.dtype, dtype.narrow_range, dtype.reduce_range


def quant_bits(tq: TensorQuant | str = "int8", reduce_range: bool = False) -> int:
    """Integer width of the quantized values: 8, or 7 with ``reduce_range``."""
    return 7 if _spec(tq, False, reduce_range)[2] else 8


def quant_range(
    tq: TensorQuant | str = "int8", narrow_range: bool = False, reduce_range: bool = False
) -> tuple[int, int]:
    """Integer limits ``(q_min, q_max)`` of a :class:`TensorQuant` (its dtype, narrow and reduce
    flags), or of a dtype name with the flags given here. The one place these limits are computed.
    """
    dtype, narrow_range, reduce_range = _spec(tq, narrow_range, reduce_range)
    if dtype not in _DTYPES:
        raise ConfigError(f"quantized dtype {dtype!r} is not supported; use one of {list(_DTYPES)}")
    bits = quant_bits(dtype, reduce_range)
    if dtype == "uint8":
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)) + (1 if narrow_range else 0), 2 ** (bits - 1) - 1


def _as_range(lo, hi, name: str) -> tuple[np.ndarray, np.ndarray]:
    lo = np.asarray(_to_numpy(lo), dtype=np.float64)
    hi = np.asarray(_to_numpy(hi), dtype=np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise CalibrationError(f"tensor {name!r}: range [{lo}, {hi}] is not finite")
    if (lo > hi).any():
        raise CalibrationError(f"tensor {name!r}: range lower bound {lo} exceeds upper bound {hi}")
    lo, hi = np.broadcast_arrays(np.minimum(lo, 0.0), np.maximum(hi, 0.0))
    return lo, hi


def _to_numpy(x):
    """Accept numpy, Python numbers and torch tensors without importing torch here."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


def compute_qparams(
    lo,
    hi,
    dtype: TensorQuant | str = "int8",
    symmetric: bool = True,
    narrow_range: bool = False,
    reduce_range: bool = False,
    *,
    name: str = "?",
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point for the range ``[lo, hi]`` (scalars, or arrays for per-channel ranges).

    Returns ``(scale, zero_point)``: ``scale`` float32, finite and ``>= MIN_SCALE``; ``zero_point``
    int32 inside ``[q_min, q_max]``; both shaped like the broadcast of ``lo`` and ``hi``.
    ``dtype`` may be a :class:`TensorQuant`: its dtype, symmetry and range flags are used.
    """
    if not isinstance(dtype, str):
        symmetric = dtype.symmetric
    dtype, narrow_range, reduce_range = _spec(dtype, narrow_range, reduce_range)
    qmin, qmax = quant_range(dtype, narrow_range, reduce_range)
    lo, hi = _as_range(lo, hi, name)
    if symmetric:
        zp = np.full(lo.shape, 0 if dtype == "int8" else (qmax + 1) // 2, dtype=np.int32)
        amax = np.maximum(np.abs(lo), np.abs(hi))
        scale = np.asarray(np.maximum(amax / (qmax - zp), MIN_SCALE), dtype=np.float32)
        return scale, zp
    scale = np.asarray(np.maximum((hi - lo) / (qmax - qmin), MIN_SCALE), dtype=np.float32)
    zp = np.asarray(np.clip(np.round(qmin - lo / scale.astype(np.float64)), qmin, qmax), np.int32)
    return scale, zp

"""ncnn's blob conventions, shared by the lowering rules.

An ONNX value of rank r (batch 1) is an ncnn blob of rank r − 1; ONNX axis a is ncnn axis a − 1;
ncnn shape keys are reversed (0=w, 1=h, 11=d, 2=c). Unknown dimensions read as −1 (ncnn has none).
A sequence-first value of a recurrent layer (ONNX layout 0: X [S, 1, I], Y [S, D, 1, H], states
[D, 1, H]) has its batch at its first size-1 axis: its blob drops that axis (X → [S, I], ncnn's
sequence blob w=I, h=S), the same data as the batch-first twin.
"""

from __future__ import annotations

import onnx_ir as ir

from autoglm_compress.targets.ir_reads import dims

__all__ = ["shape", "dims_params", "blob_params", "blob_shape", "batch_axis", "PERMUTE",
           "permute_type"]

# ncnn Permute order types: the output's axes listed innermost first, in input letters
PERMUTE = {("W", "H"): 0, ("H", "W"): 1,
           ("W", "H", "C"): 0, ("H", "W", "C"): 1, ("W", "C", "H"): 2, ("C", "W", "H"): 3,
           ("H", "C", "W"): 4, ("C", "H", "W"): 5}
_KEYS = {1: [0], 2: [1, 0], 3: [2, 1, 0], 4: [2, 11, 1, 0]}


def shape(v: ir.Value) -> list[int]:
    """The ONNX shape, −1 for an unknown dimension."""
    return dims(v, -1)


def batch_axis(onnx_shape: list[int]) -> int | None:
    """The batch axis: 0 when its size is 1, else the first size-1 axis (a sequence-first
    value), None when there is none."""
    s = list(onnx_shape)
    if not s or s[0] == 1:
        return 0
    return next((i for i, d in enumerate(s) if d == 1), None)


def blob_shape(onnx_shape: list[int]) -> list[int]:
    """The blob's shape: the ONNX shape with its batch axis dropped."""
    s, b = list(onnx_shape), batch_axis(onnx_shape)
    return s[:b] + s[b + 1:] if b is not None else s[1:]


def dims_params(onnx_shape: list[int]) -> dict[int, int]:
    """ncnn shape keys for an ONNX shape with the batch dropped (reversed: w, h, d, c)."""
    return blob_params(blob_shape(onnx_shape))


def blob_params(blob_shape) -> dict[int, int]:
    """ncnn shape keys for a blob shape (no batch axis)."""
    d = list(blob_shape) or [1]
    return dict(zip(_KEYS[len(d)], d))


def permute_type(perm: list[int]) -> int:
    """ncnn Permute ``order_type`` of an ONNX perm over a 3-D/4-D tensor that keeps the batch."""
    letters = {1: "C", 2: "H", 3: "W"} if len(perm) == 4 else {1: "H", 2: "W"}
    return PERMUTE[tuple(letters[a] for a in reversed(perm[1:]))]

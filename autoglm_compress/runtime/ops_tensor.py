"""Executor op table, part 3: shape and data movement, casts, constants."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import torch

from autoglm_compress.runtime.ops_math import _i, _ints

__all__ = ["TENSOR_OPS", "to_torch", "torch_dtype"]

_DT = {
    ir.DataType.FLOAT: torch.float32,
    ir.DataType.FLOAT16: torch.float16,
    ir.DataType.DOUBLE: torch.float64,
    ir.DataType.BFLOAT16: torch.bfloat16,
    ir.DataType.INT64: torch.int64,
    ir.DataType.INT32: torch.int32,
    ir.DataType.INT16: torch.int16,
    ir.DataType.INT8: torch.int8,
    ir.DataType.UINT8: torch.uint8,
    ir.DataType.BOOL: torch.bool,
}


def torch_dtype(code: int) -> torch.dtype:
    dt = ir.DataType(code)
    if dt not in _DT:
        raise TypeError(f"data type {dt.name} has no torch equivalent")
    return _DT[dt]


def to_torch(tensor, device) -> torch.Tensor:
    """An onnx_ir tensor (initializer / Constant value) as a torch tensor on ``device``."""
    if tensor.dtype == ir.DataType.BFLOAT16:
        arr = tensor.numpy().astype(np.float32)
        return torch.from_numpy(arr).to(device=device, dtype=torch.bfloat16)
    return torch.from_numpy(np.array(tensor.numpy())).to(device)


def _reshape(x, n):
    t, shape = x[0], [int(s) for s in x[1].tolist()]
    if not _i(n, "allowzero", 0):
        shape = [t.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return t.reshape(shape)


def _flatten(x, n):
    """axis in [-r, r]: [prod(shape[:axis]), prod(shape[axis:])] (axis == r gives [numel, 1])."""
    t = x[0]
    axis = _i(n, "axis", 1)
    axis = axis + t.dim() if axis < 0 else axis
    return t.reshape(math.prod(t.shape[:axis]), math.prod(t.shape[axis:]))


def _transpose(x, n):
    perm = _ints(n, "perm", list(reversed(range(x[0].dim()))))
    return x[0].permute(perm)


def _axes_of(x, n):
    if len(x) > 1 and x[1] is not None:
        return [int(a) for a in x[1].tolist()]
    return _ints(n, "axes")


def _squeeze(x, n):
    axes = _axes_of(x, n)
    if axes is None:
        return x[0].squeeze()
    t = x[0]
    for a in sorted((a % t.dim() for a in axes), reverse=True):
        t = t.squeeze(a)
    return t


def _unsqueeze(x, n):
    axes = _axes_of(x, n)
    out_rank = x[0].dim() + len(axes)
    t = x[0]
    for a in sorted(a % out_rank for a in axes):
        t = t.unsqueeze(a)
    return t


def _split(x, n):
    t, axis = x[0], _i(n, "axis", 0)
    if len(x) > 1 and x[1] is not None:
        sizes = [int(s) for s in x[1].tolist()]
    elif n.attributes.get("split") is not None:
        sizes = _ints(n, "split")
    else:
        k = _i(n, "num_outputs", len(n.outputs))
        chunk = -(-t.shape[axis] // k)
        sizes = [min(chunk, t.shape[axis] - i * chunk) for i in range(k)]
    return tuple(torch.split(t, sizes, dim=axis))


def _slice(x, n):
    t = x[0]
    starts, ends = [int(v) for v in x[1].tolist()], [int(v) for v in x[2].tolist()]
    axes = (
        [int(v) for v in x[3].tolist()]
        if len(x) > 3 and x[3] is not None
        else list(range(len(starts)))
    )
    steps = (
        [int(v) for v in x[4].tolist()] if len(x) > 4 and x[4] is not None else [1] * len(starts)
    )
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= t.dim()
        dim = t.shape[a]
        lo, hi, _ = slice(s, e, st).indices(dim)
        if st == 1:
            t = t.narrow(a, lo, max(0, hi - lo))
        else:
            t = torch.index_select(t, a, torch.arange(lo, hi, st, device=t.device))
    return t


def _gather(x, n):
    t, idx, axis = x[0], x[1].long(), _i(n, "axis", 0) % x[0].dim()
    idx = torch.where(idx < 0, idx + t.shape[axis], idx)
    out = torch.index_select(t, axis, idx.reshape(-1))
    return out.reshape((*t.shape[:axis], *idx.shape, *t.shape[axis + 1 :]))


def _gather_elements(x, n):
    t, idx, axis = x[0], x[1].long(), _i(n, "axis", 0)
    idx = torch.where(idx < 0, idx + t.shape[axis], idx)
    return torch.gather(t, axis, idx)


def _expand(x, n):
    shape = [int(s) for s in x[1].tolist()]
    t = x[0]
    rank = max(len(shape), t.dim())
    shape = [1] * (rank - len(shape)) + shape
    tshape = [1] * (rank - t.dim()) + list(t.shape)
    target = [max(a, b) if 1 in (a, b) else a for a, b in zip(tshape, shape)]
    return t.reshape(tshape).expand(target)


def _shape(x, n):
    shape = list(x[0].shape)
    start, end = _i(n, "start", 0), n.attributes.get_int("end", len(shape))
    return torch.tensor(shape[start:end], dtype=torch.int64, device=x[0].device)


def _cast(x, n):
    return x[0].to(torch_dtype(_i(n, "to", 1)))


def _constant(x, n, device=None):
    a = n.attributes
    if "value" in a:
        return a["value"].as_tensor()
    for key, dt in (("value_float", np.float32), ("value_int", np.int64)):
        if key in a:
            return ir.tensor(np.array(a[key].value, dtype=dt))
    for key, dt in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in a:
            return ir.tensor(np.array(list(a[key].value), dtype=dt))
    raise ValueError(f"Constant {n.name!r}: unsupported attribute {list(a)}")


def _constant_of_shape(x, n):
    shape = [int(s) for s in x[0].tolist()]
    v = n.attributes.get("value")
    val = (
        torch.from_numpy(np.array(v.as_tensor().numpy()).reshape(-1))
        if v is not None
        else torch.zeros(1)
    )
    return torch.full(shape, val[0].item(), dtype=val.dtype, device=x[0].device)


def _range(x, n):
    start, limit, delta = (v.reshape(()) for v in x[:3])
    return torch.arange(
        start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device
    )


def _tile(x, n):
    return x[0].repeat([int(r) for r in x[1].tolist()])


def _topk(x, n):
    """A stable sort, so that of equal values the lower index comes first (as ONNX requires)."""
    k, axis = int(x[1].reshape(-1)[0]), _i(n, "axis", -1)
    v, i = torch.sort(x[0], dim=axis, descending=bool(_i(n, "largest", 1)), stable=True)
    return v.narrow(axis, 0, k), i.narrow(axis, 0, k)


def _trilu(x, n):
    k = int(x[1].reshape(-1)[0]) if len(x) > 1 and x[1] is not None else 0
    return torch.triu(x[0], k) if _i(n, "upper", 1) else torch.tril(x[0], k)


def _dropout(x, n):
    """Identity unless the ``training_mode`` input is true: then y = x·mask/(1 − ratio) with
    mask = U[0, 1) ≥ ratio drawn from torch's generator (seeded by the ``seed`` attribute)."""
    t = x[0]
    ratio = float(x[1].reshape(())) if len(x) > 1 and x[1] is not None else 0.5
    train = len(x) > 2 and x[2] is not None and bool(x[2].reshape(()))
    if not train or ratio == 0.0:
        y, mask = t, torch.ones_like(t, dtype=torch.bool)
    else:
        gen = None
        if n.attributes.get("seed") is not None:
            gen = torch.Generator(device=t.device).manual_seed(_i(n, "seed", 0))
        mask = torch.rand(t.shape, generator=gen, device=t.device) >= ratio
        y = t * mask.to(t.dtype) / (1.0 - ratio)
    return (y, mask) if len(n.outputs) > 1 else y


TENSOR_OPS = {
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda x, n: torch.cat(x, dim=_i(n, "axis", 0)),
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "Expand": _expand,
    "Shape": _shape,
    "Size": lambda x, n: torch.tensor(x[0].numel()),
    "Cast": _cast,
    "CastLike": lambda x, n: x[0].to(x[1].dtype),
    "Identity": lambda x, n: x[0],
    "Dropout": _dropout,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Tile": _tile,
    "TopK": _topk,
    "Trilu": _trilu,
    "Einsum": lambda x, n: torch.einsum(n.attributes.get_string("equation"), *x),
}

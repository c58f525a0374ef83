"""Executor op table, part 4: index ops — GatherND, ScatterND, ScatterElements, OneHot, NonZero.

All index ops reduce to torch advanced indexing / ``scatter_reduce`` on a flattened view:

- GatherND (batch_dims b): with data ``[B.., D1..Dk, R..]`` and indices ``[B.., Q.., k]``, the
  first k index columns become one linear index ``sum_j idx_j * stride_j`` into the flattened
  ``D1..Dk`` block, so the result ``[B.., Q.., R..]`` is one gather (differentiable in data).
- ScatterND: the same linearisation; reduction none = ``index_put``, add/mul/max/min =
  ``scatter_reduce`` (sum/prod/amax/amin, including the existing values).
- ScatterElements: ``torch.scatter`` / ``scatter_reduce`` along ``axis``.
- OneHot: ``where(indices[..., None] == arange(depth), on, off)`` moved to ``axis``; negative
  indices count from ``depth``; out-of-range indices give an all-``off`` row.
- NonZero: ``nonzero(x).T`` as int64, shape ``[rank, count]``.

Negative indices are wrapped (``i + dim`` where ``i < 0``) as ONNX specifies.
"""

from __future__ import annotations

import logging
import math

import torch

from autoglm_compress.runtime.ops_math import _i

__all__ = ["INDEX_OPS"]

logger = logging.getLogger(__name__)

_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _wrap(idx: torch.Tensor, size) -> torch.Tensor:
    """Negative indices count from the end of a dimension of length ``size``."""
    idx = idx.long()
    return torch.where(idx < 0, idx + size, idx)


def _linear_index(idx: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """[..., k] multi-indices into dims[:k] as one row-major linear index [...]."""
    lin = torch.zeros(idx.shape[:-1], dtype=torch.long, device=idx.device)
    for j, d in enumerate(dims):
        lin = lin * d + _wrap(idx[..., j], d)
    return lin


def _gather_nd(x, n):
    data, idx = x[0], x[1]
    b = _i(n, "batch_dims", 0)
    k = idx.shape[-1]
    batch = list(data.shape[:b])
    nb = math.prod(batch)
    block = list(data.shape[b : b + k])
    rest = list(data.shape[b + k :])
    q_shape = list(idx.shape[b:-1])
    flat = data.reshape(nb, math.prod(block), *rest)
    lin = _linear_index(idx.reshape(nb, -1, k), block)  # [nb, Q]
    rows = torch.arange(nb, device=data.device).unsqueeze(1)
    return flat[rows, lin].reshape(*batch, *q_shape, *rest)


def _scatter_nd(x, n):
    data, idx, upd = x[0], x[1], x[2]
    k = idx.shape[-1]
    block, rest = list(data.shape[:k]), list(data.shape[k:])
    flat = data.reshape(math.prod(block), *rest)
    lin = _linear_index(idx, block).reshape(-1)
    u = upd.reshape(lin.numel(), *rest).to(data.dtype)
    red = n.attributes.get_string("reduction", "none")
    if red == "none":
        out = flat.index_put((lin,), u)
    else:
        index = lin.reshape(-1, *[1] * len(rest)).expand_as(u)
        out = flat.scatter_reduce(0, index, u, reduce=_REDUCE[red], include_self=True)
    return out.reshape(data.shape)


def _scatter_elements(x, n):
    data, idx, upd = x[0], x[1], x[2]
    axis = _i(n, "axis", 0) % data.dim()
    index = _wrap(idx, data.shape[axis])
    red = n.attributes.get_string("reduction", "none")
    if red == "none":
        return data.scatter(axis, index, upd.to(data.dtype))
    return data.scatter_reduce(axis, index, upd.to(data.dtype), _REDUCE[red], include_self=True)


def _onehot(x, n):
    idx, values = x[0], x[2]
    depth = int(x[1].reshape(-1)[0])
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    i = idx.long() if not idx.is_floating_point() else idx.trunc().long()
    i = torch.where(i < 0, i + depth, i)
    hot = i.unsqueeze(-1) == torch.arange(depth, device=idx.device)
    out = torch.where(hot, on, off)
    axis = _i(n, "axis", -1)
    return out if axis == -1 else torch.movedim(out, -1, axis % out.dim())


def _nonzero(x, n):
    t = x[0]
    if t.dim() == 0:
        return torch.zeros((0, int(t.item() != 0)), dtype=torch.long, device=t.device)
    return torch.nonzero(t).t().contiguous()


INDEX_OPS = {
    "GatherND": _gather_nd,
    "ScatterND": _scatter_nd,
    "ScatterElements": _scatter_elements,
    "OneHot": _onehot,
    "NonZero": _nonzero,
}

"""Executor op table, part 6: Attention (opset 23-25) and GroupNormalization (opset 18 and 21).

Attention, after splitting 3D inputs ``[B, S, heads*D]`` into heads ``[B, heads, S, D]``:
  K, V = concat(past, new) along the sequence (these are the present_key/value outputs);
  KV heads are repeated (interleaved) for grouped-query attention when q_heads > kv_heads;
  s = sqrt(scale or 1/sqrt(D));  L = (Q s)(K s)^T;  L = softcap·tanh(L/softcap) if softcap > 0;
  bias = attn_mask (bool: True→0, False→-inf; float: added; padded with -inf up to the kv length)
       + causal (key j allowed iff j <= i + past_len) + sliding window (left/right sizes)
       + padding from nonpad_kv_seqlen;
  P = softmax(L + bias) (in softmax_precision when set), rows whose bias is all -inf give 0;
  Y = P V (merged back to ``[B, S, heads*Dv]`` for 3D inputs).
qk_matmul_output: mode 0/1 the (softcapped) L, 2 L + bias, 3 P — as the ONNX reference does.

GroupNormalization: x ``[N, C, ...]`` reshaped to ``[N, G, C/G·...]``, y = (x - mean) /
sqrt(var + eps) per group (computed in stash_type precision, float32 by default), then an affine
per channel (opset 21: scale/bias ``[C]``) or per group (opset 18: ``[G]``, told apart by size).
"""

from __future__ import annotations

import logging
import math

import torch

from autoglm_compress.runtime.ops_math import _f, _i
from autoglm_compress.runtime.ops_tensor import torch_dtype

__all__ = ["ATTENTION_OPS"]

logger = logging.getLogger(__name__)


def _opt(x: list, i: int) -> torch.Tensor | None:
    return x[i] if len(x) > i and x[i] is not None else None


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, hidden = t.shape
    return t.reshape(b, s, heads, hidden // heads).transpose(1, 2)


def _mask_bias(mask: torch.Tensor, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
    """attn_mask as an additive bias, padded with -inf (masked) up to kv_len keys."""
    if mask.dtype == torch.bool:
        mask = torch.where(mask, 0.0, float("-inf")).to(dtype)
    else:
        mask = mask.to(dtype)
    pad = kv_len - mask.shape[-1]
    if pad > 0:
        mask = torch.nn.functional.pad(mask, (0, pad), value=float("-inf"))
    return mask


def _positional_bias(n, q_len, kv_len, offset, dtype, device) -> torch.Tensor | None:
    """Causal and sliding-window constraints as an additive bias [q, kv] or [B, 1, q, kv]."""
    causal = bool(_i(n, "is_causal", 0))
    left, right = _i(n, "left_window_size", -1), _i(n, "right_window_size", -1)
    if not causal and left < 0 and right < 0:
        return None
    i = torch.arange(q_len, device=device).reshape(q_len, 1)
    j = torch.arange(kv_len, device=device).reshape(1, kv_len)
    if offset.dim():
        i = i + offset.reshape(-1, 1, 1, 1)  # per-batch frontier (external cache)
    else:
        i = i + offset
    diff = i - j
    allowed = torch.ones_like(diff, dtype=torch.bool)
    if causal:
        allowed &= diff >= 0
    if left >= 0:
        allowed &= diff <= left
    if right >= 0:
        allowed &= -diff <= right
    return torch.where(allowed, 0.0, float("-inf")).to(dtype)


def _bias(n, x, q, k, batch) -> torch.Tensor:
    q_len, kv_len, dev = q.shape[2], k.shape[2], q.device
    past, nonpad = _opt(x, 4), _opt(x, 6)
    bias = torch.zeros((q_len, kv_len), dtype=q.dtype, device=dev)
    mask = _opt(x, 3)
    if mask is not None:
        bias = bias + _mask_bias(mask, kv_len, q.dtype)
    if past is None and nonpad is not None:
        offset = nonpad.long().reshape(-1) - q_len
    else:
        offset = torch.tensor(past.shape[2] if past is not None else 0, device=dev)
    pos = _positional_bias(n, q_len, kv_len, offset, q.dtype, dev)
    if pos is not None:
        bias = bias + pos
    if nonpad is not None:
        keep = torch.arange(kv_len, device=dev) < nonpad.long().reshape(-1, 1)
        pad = torch.where(keep, 0.0, float("-inf")).to(q.dtype)
        bias = bias + pad.reshape(batch, 1, 1, kv_len)
    return bias


def _attention(x, n):
    q, k, v = x[0], x[1], x[2]
    rank3 = q.dim() == 3
    if rank3:
        q = _split_heads(q, _i(n, "q_num_heads", 1))
        k = _split_heads(k, _i(n, "kv_num_heads", 1))
        v = _split_heads(v, _i(n, "kv_num_heads", 1))
    past_k, past_v = _opt(x, 4), _opt(x, 5)
    k = torch.cat([past_k, k], 2) if past_k is not None else k
    v = torch.cat([past_v, v], 2) if past_v is not None else v
    present_k, present_v = k, v
    if q.shape[1] != k.shape[1] and q.shape[1] % k.shape[1] == 0:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scale = _f(n, "scale", 1.0 / math.sqrt(q.shape[-1]))
    s = torch.tensor(math.sqrt(scale), dtype=q.dtype)  # rounded to the input type, as ONNX does
    logits = (q * s) @ (k * s).transpose(-1, -2)
    cap = _f(n, "softcap", 0.0)
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    bias = _bias(n, x, q, k, q.shape[0])
    scores = logits + bias
    mode = _i(n, "qk_matmul_output_mode", 0)
    dead = torch.isneginf(bias.amax(-1, keepdim=True))
    sp = _i(n, "softmax_precision", 0)
    work = scores.to(torch_dtype(sp)) if sp else scores
    work = torch.where(dead, torch.zeros_like(work), work)
    e = torch.exp(work - work.amax(-1, keepdim=True))  # op by op: rounds as the reference does
    probs = e / e.sum(-1, keepdim=True)
    probs = torch.where(dead, torch.zeros_like(probs), probs).to(q.dtype)
    y = probs @ v
    if rank3:
        y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
    qk_out = {2: scores, 3: probs}.get(mode, logits)
    return y, present_k, present_v, qk_out


def _group_norm(x, n):
    t, scale, bias = x[0], x[1], x[2]
    groups = _i(n, "num_groups", 1)
    eps = _f(n, "epsilon", 1e-5)
    stash = torch_dtype(_i(n, "stash_type", 1))
    nb, c = t.shape[0], t.shape[1]
    g = t.reshape(nb, groups, -1).to(stash)
    var, mean = torch.var_mean(g, dim=-1, unbiased=False, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).to(t.dtype).reshape(t.shape)
    if scale.numel() != c:  # opset 18: one scale/bias per group
        scale = scale.repeat_interleave(c // groups)
        bias = bias.repeat_interleave(c // groups)
    shape = [1, c] + [1] * (t.dim() - 2)
    return y * scale.reshape(shape) + bias.reshape(shape)


ATTENTION_OPS = {"Attention": _attention, "GroupNormalization": _group_norm}

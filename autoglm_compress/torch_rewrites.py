"""Make TorchScript archives exportable: fused-attention symbolics and flattened outputs.

Fused aten ops that ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` take in eval mode
(their "fast path") have no ONNX symbolic; we register decompositions into plain ONNX ops:

  ``_native_multi_head_attention(q, k, v, E, H, W_in, b_in, W_out, b_out, mask, need_w, avg, t)``
    [W_q; W_k; W_v] = W_in (rows split in three E-row blocks), likewise b_in;
    Q = q W_qᵀ + b_q, K = k W_kᵀ + b_k, V = v W_vᵀ + b_v, each split into H heads of D = E/H;
    P = softmax(Q Kᵀ / √D + M) per head (M: additive mask; a bool mask → −∞ where True);
    out = concat_heads(P V) W_outᵀ + b_out; weights = P, or its mean over heads when ``avg``.
  ``_transformer_encoder_layer_fwd(x, E, H, …, use_gelu, norm_first, eps, LN1, LN2, FFN)``
    post-norm: y = LN1(x + MHA(x)); out = LN2(y + FFN(y));
    pre-norm:  y = x + MHA(LN1(x)); out = y + FFN(LN2(y));  FFN(z) = W₂ act(W₁ z + b₁) + b₂,
    act = GELU (erf form: ½ z (1 + erf(z/√2))) or ReLU.

Outputs that are dicts, namedtuples or nested tuples (``prim::DictConstruct`` has no symbolic)
are flattened by a wrapper module that the TorchScript exporter traces through; the ONNX output
names come from the keys/fields (``last_hidden_state``, ``pooler_output``).
"""

from __future__ import annotations

import logging
import math

__all__ = ["flatten_outputs", "needs_flattening", "output_names", "register_symbolics"]

logger = logging.getLogger(__name__)
_OPSET = 17  # LayerNormalization needs 17; registered symbolics serve this opset and later ones
_registered = False


def _const(g, values, dtype):
    import torch

    return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))


def _linear(g, x, w, b):
    """x Wᵀ + b for a weight of shape (out, in)."""
    return g.op("Add", g.op("MatMul", x, g.op("Transpose", w, perm_i=[1, 0])), b)


def _split3(g, t, e: int):
    import torch

    return g.op("Split", t, _const(g, [e, e, e], torch.int64), axis_i=0, outputs=3)


def _heads(g, x, h: int, d: int):
    """(B, L, E) → (B, H, L, D)."""
    import torch

    shaped = g.op("Reshape", x, _const(g, [0, 0, h, -1], torch.int64))
    return g.op("Transpose", shaped, perm_i=[0, 2, 1, 3])


def _mask_term(g, mask, mask_type: int | None):
    """The additive mask, broadcastable to (B, H, L, S)."""
    import torch
    from torch.onnx import symbolic_helper as sh

    if sh._is_bool(mask):
        mask = g.op(
            "Where", mask, _const(g, -math.inf, torch.float32), _const(g, 0.0, torch.float32)
        )
    if mask_type == 1:  # key padding (B, S) → (B, 1, 1, S)
        mask = g.op("Unsqueeze", mask, _const(g, [1, 2], torch.int64))
    return mask


def _attention(g, q, k, v, e, h, w_in, b_in, w_out, b_out, mask, mask_type, average):
    """Returns (out, weights) for batched (B, L, E) or unbatched (L, E) inputs."""
    import torch
    from torch.onnx import symbolic_helper as sh

    d = e // h
    unbatched = sh._get_tensor_rank(q) == 2
    if unbatched:
        axis0 = _const(g, [0], torch.int64)
        q, k, v = (g.op("Unsqueeze", t, axis0) for t in (q, k, v))
    wq, wk, wv = _split3(g, w_in, e)
    bq, bk, bv = _split3(g, b_in, e)
    qh = _heads(g, _linear(g, q, wq, bq), h, d)
    kh = _heads(g, _linear(g, k, wk, bk), h, d)
    vh = _heads(g, _linear(g, v, wv, bv), h, d)
    scores = g.op("MatMul", qh, g.op("Transpose", kh, perm_i=[0, 1, 3, 2]))
    scores = g.op("Mul", scores, _const(g, 1.0 / math.sqrt(d), torch.float32))
    if not sh._is_none(mask):
        scores = g.op("Add", scores, _mask_term(g, mask, mask_type))
    probs = g.op("Softmax", scores, axis_i=-1)
    ctx = g.op("Transpose", g.op("MatMul", probs, vh), perm_i=[0, 2, 1, 3])
    ctx = g.op("Reshape", ctx, _const(g, [0, 0, -1], torch.int64))
    out = _linear(g, ctx, w_out, b_out)
    weights = probs
    if average:
        summed = g.op("ReduceSum", probs, _const(g, [1], torch.int64), keepdims_i=0)
        weights = g.op("Div", summed, _const(g, float(h), torch.float32))
    if unbatched:
        axis0 = _const(g, [0], torch.int64)
        out, weights = g.op("Squeeze", out, axis0), g.op("Squeeze", weights, axis0)
    return out, weights


def _mha_symbolic(g, q, k, v, e, h, w_in, b_in, w_out, b_out, mask, need_w, average, mtype):
    from torch.onnx import symbolic_helper as sh

    e, h = sh._get_const(e, "i", "embed_dim"), sh._get_const(h, "i", "num_heads")
    avg = bool(sh._maybe_get_const(average, "b"))
    mtype = None if sh._is_none(mtype) else sh._get_const(mtype, "i", "mask_type")
    return _attention(g, q, k, v, e, h, w_in, b_in, w_out, b_out, mask, mtype, avg)


def _gelu(g, x):
    import torch

    erf = g.op("Erf", g.op("Div", x, _const(g, math.sqrt(2.0), torch.float32)))
    one_plus = g.op("Add", erf, _const(g, 1.0, torch.float32))
    return g.op("Mul", g.op("Mul", x, one_plus), _const(g, 0.5, torch.float32))


def _encoder_layer_symbolic(
    g, src, e, h, w_in, b_in, w_out, b_out, use_gelu, norm_first, eps, *rest
):
    """rest: LN1 w/b, LN2 w/b, FFN W1/b1/W2/b2, then the optional mask and mask_type."""
    from torch.onnx import symbolic_helper as sh

    ln1_w, ln1_b, ln2_w, ln2_b, w1, b1, w2, b2 = rest[:8]
    mask = rest[8] if len(rest) > 8 else g.op("prim::Constant")
    mtype = rest[9] if len(rest) > 9 else None
    e, h = sh._get_const(e, "i", "embed_dim"), sh._get_const(h, "i", "num_heads")
    eps = sh._get_const(eps, "f", "eps")
    mtype = None if mtype is None or sh._is_none(mtype) else sh._get_const(mtype, "i", "mask_type")
    gelu = sh._get_const(use_gelu, "b", "use_gelu")

    def norm(x, w, b):
        return g.op("LayerNormalization", x, w, b, epsilon_f=eps, axis_i=-1)

    def attn(x):
        return _attention(g, x, x, x, e, h, w_in, b_in, w_out, b_out, mask, mtype, False)[0]

    def ffn(x):
        hidden = _linear(g, x, w1, b1)
        act = _gelu(g, hidden) if gelu else g.op("Relu", hidden)
        return _linear(g, act, w2, b2)

    if sh._get_const(norm_first, "b", "norm_first"):
        y = g.op("Add", src, attn(norm(src, ln1_w, ln1_b)))
        return g.op("Add", y, ffn(norm(y, ln2_w, ln2_b)))
    y = norm(g.op("Add", src, attn(src)), ln1_w, ln1_b)
    return norm(g.op("Add", y, ffn(y)), ln2_w, ln2_b)


def register_symbolics() -> None:
    """Register the decompositions with the TorchScript exporter (once per process)."""
    global _registered
    if _registered:
        return
    import torch

    torch.onnx.register_custom_op_symbolic(
        "aten::_native_multi_head_attention", _mha_symbolic, _OPSET
    )
    torch.onnx.register_custom_op_symbolic(
        "aten::_transformer_encoder_layer_fwd", _encoder_layer_symbolic, _OPSET
    )
    _registered = True


def _flatten(out, prefix: str) -> list[tuple[str, object]]:
    import torch

    if isinstance(out, torch.Tensor):
        return [(prefix or "output", out)]
    if isinstance(out, dict):
        items = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, tuple) and hasattr(out, "_fields"):
        items = list(zip(out._fields, out))
    elif isinstance(out, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(out)]
    else:
        return []  # None and Python scalars are not graph outputs
    flat = []
    for key, value in items:
        flat += _flatten(value, f"{prefix}.{key}" if prefix else key)
    return flat


def needs_flattening(out) -> bool:
    """True unless the output is a tensor or a flat tuple/list of tensors."""
    import torch

    if isinstance(out, torch.Tensor):
        return False
    plain = isinstance(out, (tuple, list)) and not hasattr(out, "_fields")
    return not (plain and all(isinstance(o, torch.Tensor) for o in out))


def output_names(out) -> list[str]:
    """Names of the flattened outputs: dict keys / namedtuple fields, dotted when nested."""
    return [name for name, _ in _flatten(out, "")]


def flatten_outputs(module, args: tuple, bound: dict[int, object] | None = None):
    """A traced module calling ``module`` and returning its tensors as one flat tuple.

    ``bound`` maps argument positions to fixed non-tensor values (ints with defaults). The
    wrapper is traced here: the ONNX exporter cannot trace into a loaded ScriptModule itself.
    """
    import warnings

    import torch

    bound = dict(bound or {})

    class _Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, *args):
            full, it = [], iter(args)
            for i in range(len(args) + len(bound)):
                full.append(bound[i] if i in bound else next(it))
            return tuple(t for _, t in _flatten(self.inner(*full), ""))

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(_Flat().eval(), args, check_trace=False, strict=False)

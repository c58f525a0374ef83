"""Executor op table, part 1: elementwise maths, activations, reductions, comparisons.

Each entry: ``fn(inputs: list[Tensor | None], node: onnx_ir.Node) -> Tensor | tuple[Tensor, ...]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["MATH_OPS"]


def _i(node, name, default):
    return node.attributes.get_int(name, default)


def _f(node, name, default):
    return node.attributes.get_float(name, default)


def _ints(node, name, default=None):
    a = node.attributes.get(name)
    return list(a.as_ints()) if a is not None else default


def _unary(fn):
    return lambda x, n: fn(x[0])


def _binary(fn):
    return lambda x, n: fn(x[0], x[1])


def _div(x, n):
    a, b = x
    if not a.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _mod(x, n):
    return torch.fmod(x[0], x[1]) if _i(n, "fmod", 0) else torch.remainder(x[0], x[1])


def _pow(x, n):
    return torch.pow(x[0], x[1].to(x[0].dtype) if x[0].is_floating_point() else x[1]).to(x[0].dtype)


def _clip(x, n):
    lo = x[1] if len(x) > 1 and x[1] is not None else None
    hi = x[2] if len(x) > 2 and x[2] is not None else None
    if lo is None and n.attributes.get("min") is not None:
        lo = torch.tensor(_f(n, "min", 0.0))
    if hi is None and n.attributes.get("max") is not None:
        hi = torch.tensor(_f(n, "max", 0.0))
    y = x[0]
    if lo is not None:
        y = torch.maximum(y, lo.to(y))
    if hi is not None:
        y = torch.minimum(y, hi.to(y))
    return y


def _gelu(x, n):
    return F.gelu(
        x[0],
        approximate="tanh" if n.attributes.get_string("approximate", "none") == "tanh" else "none",
    )


def _prelu(x, n):
    return torch.where(x[0] >= 0, x[0], x[0] * x[1])


def _hardsigmoid(x, n):
    return torch.clamp(_f(n, "alpha", 0.2) * x[0] + _f(n, "beta", 0.5), 0, 1)


def _softmax(fn):
    def run(x, n):
        return fn(x[0], dim=_i(n, "axis", -1))

    return run


def _axes(x, n):
    if len(x) > 1 and x[1] is not None:
        return [int(a) for a in x[1].tolist()]
    return _ints(n, "axes")


def _reduce(fn):
    def run(x, n):
        axes = _axes(x, n)
        keep = bool(_i(n, "keepdims", 1))
        if not axes:
            if _i(n, "noop_with_empty_axes", 0):
                return x[0]
            axes = list(range(x[0].dim()))
        return fn(x[0], axes, keep)

    return run


def _empty_reduce(t, axes, keep, fill):
    """Reducing over a zero-length axis: the identity of the reduction (ONNX: ±inf, dtype limits)."""
    axes = {a % t.dim() for a in axes}
    shape = [1 if i in axes else d for i, d in enumerate(t.shape) if keep or i not in axes]
    return torch.full(shape, fill, dtype=t.dtype, device=t.device)


def _extreme(t, high: bool):
    if t.dtype == torch.bool:
        return high
    if t.is_floating_point():
        return float("inf") if high else float("-inf")
    info = torch.iinfo(t.dtype)
    return info.max if high else info.min


def _reduce_max(t, axes, keep):
    if any(t.shape[a] == 0 for a in axes):
        return _empty_reduce(t, axes, keep, _extreme(t, high=False))
    return torch.amax(t, dim=axes, keepdim=keep)


def _reduce_min(t, axes, keep):
    if any(t.shape[a] == 0 for a in axes):
        return _empty_reduce(t, axes, keep, _extreme(t, high=True))
    return torch.amin(t, dim=axes, keepdim=keep)


def _reduce_logsumexp(t, axes, keep):
    if any(t.shape[a] == 0 for a in axes):
        return _empty_reduce(t, axes, keep, float("-inf"))
    return torch.logsumexp(t, dim=axes, keepdim=keep)


def _reduce_prod(t, axes, keep):
    for a in sorted((a % t.dim() for a in axes), reverse=True):
        t = torch.prod(t, dim=a, keepdim=keep)
    return t


def _argmax(fn):
    def run(x, n):
        axis, keep = _i(n, "axis", 0), bool(_i(n, "keepdims", 1))
        t = x[0]
        if _i(n, "select_last_index", 0):
            return t.shape[axis] - 1 - fn(torch.flip(t, [axis]), dim=axis, keepdim=keep)
        return fn(t, dim=axis, keepdim=keep)

    return run


_STASH = {1: torch.float32, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def _layernorm(x, n):
    """y = (x − mean)·rsqrt(var + ε)·scale + bias over axes ≥ axis; statistics in stash_type
    (float32 by default), returned as the optional Mean / InvStdDev outputs (reduced dims kept)."""
    t, axis = x[0], _i(n, "axis", -1) % x[0].dim()
    shape = t.shape[axis:]
    w = x[1] if len(x) > 1 else None
    b = x[2] if len(x) > 2 else None
    eps = _f(n, "epsilon", 1e-5)
    if len(n.outputs) == 1 and t.dtype == torch.float32:
        return F.layer_norm(
            t,
            shape,
            w.expand(shape) if w is not None else None,
            b.expand(shape) if b is not None else None,
            eps=eps,
        )
    xs = t.to(_STASH[_i(n, "stash_type", 1)])
    dims = list(range(axis, t.dim()))
    mean = xs.mean(dims, keepdim=True)
    inv = torch.rsqrt((xs - mean).square().mean(dims, keepdim=True) + eps)
    y = ((xs - mean) * inv).to(t.dtype)
    y = y * w if w is not None else y
    y = y + b if b is not None else y
    return (y, mean, inv) if len(n.outputs) > 1 else y


def _instancenorm(x, n):
    return F.instance_norm(x[0], weight=x[1], bias=x[2], eps=_f(n, "epsilon", 1e-5))


def _isinf(x, n):
    t = x[0]
    pos = (
        torch.isposinf(t) if _i(n, "detect_positive", 1) else torch.zeros_like(t, dtype=torch.bool)
    )
    return pos | torch.isneginf(t) if _i(n, "detect_negative", 1) else pos


def _shrink(x, n):
    t, lambd, bias = x[0], _f(n, "lambd", 0.5), _f(n, "bias", 0.0)
    return torch.where(t < -lambd, t + bias, torch.where(t > lambd, t - bias, torch.zeros_like(t)))


def _where(x, n):
    return torch.where(x[0].bool(), x[1], x[2])


def _variadic(fn):
    def run(x, n):
        out = x[0]
        for t in x[1:]:
            out = fn(out, t)
        return out

    return run


def _cumsum(x, n):
    axis = int(x[1].reshape(-1)[0])
    t = x[0]
    if _i(n, "reverse", 0):
        t = torch.flip(t, [axis])
    y = torch.cumsum(t, dim=axis).to(t.dtype)
    if _i(n, "exclusive", 0):
        y = y - t
    return torch.flip(y, [axis]) if _i(n, "reverse", 0) else y


MATH_OPS = {
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _div,
    "Pow": _pow,
    "Mod": _mod,
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Mean": lambda x, n: _variadic(torch.add)(x, n) / len(x),
    "Relu": _unary(torch.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Sqrt": _unary(torch.sqrt),
    "Reciprocal": _unary(torch.reciprocal),
    "Erf": _unary(torch.erf),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Round": _unary(torch.round),
    "Sign": _unary(torch.sign),
    "Sin": _unary(torch.sin),
    "Cos": _unary(torch.cos),
    "IsNaN": _unary(torch.isnan),
    "IsInf": _isinf,
    "Tan": _unary(torch.tan),
    "Asin": _unary(torch.asin),
    "Acos": _unary(torch.acos),
    "Atan": _unary(torch.atan),
    "Sinh": _unary(torch.sinh),
    "Cosh": _unary(torch.cosh),
    "Asinh": _unary(torch.asinh),
    "Acosh": _unary(torch.acosh),
    "Atanh": _unary(torch.atanh),
    "Softsign": _unary(F.softsign),
    "Shrink": _shrink,
    "Celu": lambda x, n: F.celu(x[0], alpha=_f(n, "alpha", 1.0)),
    "ThresholdedRelu": lambda x, n: torch.where(
        x[0] > _f(n, "alpha", 1.0), x[0], torch.zeros_like(x[0])
    ),
    "Not": _unary(torch.logical_not),
    "Softplus": _unary(F.softplus),
    "Mish": _unary(F.mish),
    "HardSwish": _unary(F.hardswish),
    "Selu": lambda x, n: (
        _f(n, "gamma", 1.05070102214813232421875)
        * F.elu(x[0], alpha=_f(n, "alpha", 1.67326319217681884765625))
    ),
    "Elu": lambda x, n: F.elu(x[0], alpha=_f(n, "alpha", 1.0)),
    "LeakyRelu": lambda x, n: F.leaky_relu(x[0], _f(n, "alpha", 0.01)),
    "Clip": _clip,
    "Gelu": _gelu,
    "PRelu": _prelu,
    "HardSigmoid": _hardsigmoid,
    "Softmax": _softmax(torch.softmax),
    "LogSoftmax": _softmax(torch.log_softmax),
    "ReduceMean": _reduce(lambda t, a, k: torch.mean(t, dim=a, keepdim=k)),
    "ReduceSum": _reduce(lambda t, a, k: torch.sum(t, dim=a, keepdim=k)),
    "ReduceMax": _reduce(_reduce_max),
    "ReduceMin": _reduce(_reduce_min),
    "ReduceProd": _reduce(_reduce_prod),
    "ReduceL2": _reduce(lambda t, a, k: torch.sqrt(torch.sum(t * t, dim=a, keepdim=k))),
    "ReduceL1": _reduce(lambda t, a, k: torch.sum(t.abs(), dim=a, keepdim=k)),
    "ReduceSumSquare": _reduce(lambda t, a, k: torch.sum(t * t, dim=a, keepdim=k)),
    "ReduceLogSum": _reduce(lambda t, a, k: torch.log(torch.sum(t, dim=a, keepdim=k))),
    "ReduceLogSumExp": _reduce(_reduce_logsumexp),
    "ArgMax": _argmax(torch.argmax),
    "ArgMin": _argmax(torch.argmin),
    "LayerNormalization": _layernorm,
    "InstanceNormalization": _instancenorm,
    "Where": _where,
    "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt),
    "Greater": _binary(torch.gt),
    "LessOrEqual": _binary(torch.le),
    "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or),
    "Xor": _binary(torch.logical_xor),
    "CumSum": _cumsum,
    "MatMul": _binary(torch.matmul),
}

"""Executor op table, part 5: recurrent layers — LSTM, GRU, RNN (ONNX semantics, differentiable).

Per direction d, with x_t the input at step t and h/c the state (ONNX weight layouts: W
``[dirs, G*H, I]``, R ``[dirs, G*H, H]``, B ``[dirs, 2*G*H]`` = Wb ‖ Rb):

- RNN (G=1):  h_t = f(x_t W^T + h_{t-1} R^T + Wb + Rb)
- GRU (G=3, gates z, r, h):  z = f(..z), r = f(..r),
  n = g(x_t W_h^T + (r ⊙ h_{t-1}) R_h^T + Rb_h + Wb_h)       (linear_before_reset = 0)
  n = g(x_t W_h^T + r ⊙ (h_{t-1} R_h^T + Rb_h) + Wb_h)       (linear_before_reset = 1)
  h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
- LSTM (G=4, gates i, o, f, c; peepholes P = [Pi, Po, Pf]):
  i = f(.. + Pi ⊙ c_{t-1}), f = f(.. + Pf ⊙ c_{t-1}) (or 1 - i with input_forget),
  c~ = g(..), c_t = f ⊙ c_{t-1} + i ⊙ c~, o = f(.. + Po ⊙ c_t), h_t = o ⊙ h(c_t).

``clip`` clamps every activation input to [-clip, clip]. The input projection x W^T + Wb is one
matmul over all steps; the loop does only the recurrent part. ``sequence_lens``: steps at or after
a batch row's length leave its state unchanged and write zeros to Y; the reverse direction runs
each row's valid prefix backwards. ``layout`` 1 means batch-major X/Y/states. Outputs: Y
``[seq, dirs, batch, H]``, Y_h (and Y_c for LSTM) ``[dirs, batch, H]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from autoglm_compress.errors import UnsupportedOpError
from autoglm_compress.runtime.ops_math import _f, _i

__all__ = ["RECURRENT_OPS"]

logger = logging.getLogger(__name__)

_NEEDS_ALPHA = {"affine", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid", "elu"}
_NEEDS_BETA = {"affine", "scaledtanh", "hardsigmoid"}
_DEFAULT_ALPHA = {"leakyrelu": 0.01, "thresholdedrelu": 1.0, "hardsigmoid": 0.2, "elu": 1.0}
_DEFAULT_BETA = {"hardsigmoid": 0.5}
_KNOWN = _NEEDS_ALPHA | _NEEDS_BETA | {"sigmoid", "tanh", "relu", "softsign", "softplus"}


def _act(name: str, a: float, b: float) -> Callable[[torch.Tensor], torch.Tensor]:
    fns = {
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": torch.relu,
        "softsign": F.softsign,
        "softplus": F.softplus,
        "affine": lambda x: a * x + b,
        "leakyrelu": lambda x: F.leaky_relu(x, a),
        "thresholdedrelu": lambda x: torch.where(x > a, x, torch.zeros_like(x)),
        "scaledtanh": lambda x: a * torch.tanh(b * x),
        "hardsigmoid": lambda x: torch.clamp(a * x + b, 0, 1),
        "elu": lambda x: F.elu(x, a),
    }
    return fns[name]


def _floats(n, name: str) -> list[float]:
    a = n.attributes.get(name)
    return list(a.as_floats()) if a is not None else []


def _activations(n, defaults: list[str], dirs: int) -> list[list[Callable]]:
    """Activation functions per direction; alpha/beta are consumed in order by those using them."""
    a = n.attributes.get("activations")
    names = [s.lower() for s in a.as_strings()] if a is not None else defaults * dirs
    alphas = _floats(n, "activation_alpha")
    betas = _floats(n, "activation_beta")
    fns = []
    for name in names:
        if name not in _KNOWN:
            raise UnsupportedOpError(
                f"{n.op_type} activation {name}", n.name or "?", "torch executor"
            )
        al = alphas.pop(0) if name in _NEEDS_ALPHA and alphas else _DEFAULT_ALPHA.get(name, 1.0)
        be = betas.pop(0) if name in _NEEDS_BETA and betas else _DEFAULT_BETA.get(name, 0.0)
        fns.append(_act(name, al, be))
    k = len(defaults)
    return [fns[d * k : (d + 1) * k] for d in range(dirs)]


def _opt(x: list, i: int) -> torch.Tensor | None:
    return x[i] if len(x) > i and x[i] is not None and x[i].numel() else None


def _reverse_index(lens: torch.Tensor, seq: int) -> torch.Tensor:
    """[seq, batch] source steps that reverse each row's valid prefix (the padding stays put)."""
    t = torch.arange(seq, device=lens.device).unsqueeze(1)
    return torch.where(t < lens, lens - 1 - t, t)


def _time_gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [seq, batch, F] gathered along time with a per-row index [seq, batch]."""
    return torch.gather(x, 0, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _run_direction(cell, xw, states, lens, reverse: bool):
    """Loop one direction; xw [seq, batch, G*H] is the precomputed input projection."""
    seq = xw.shape[0]
    index = _reverse_index(lens, seq) if reverse else None
    if reverse:
        xw = _time_gather(xw, index)
    ys = []
    for t in range(seq):
        new = cell(xw[t], states)
        valid = (t < lens).unsqueeze(1)
        states = tuple(torch.where(valid, s_new, s) for s_new, s in zip(new, states))
        ys.append(torch.where(valid, new[0], torch.zeros_like(new[0])))
    y = torch.stack(ys) if ys else xw.new_zeros((0, xw.shape[1], states[0].shape[-1]))
    if reverse and seq:
        y = _time_gather(y, index)
    return y, states


def _clip(n):
    c = _f(n, "clip", 0.0)
    return (lambda t: t.clamp(-c, c)) if c > 0 else (lambda t: t)


def _rnn_cell(n, r, rb, acts, _p, _hsz):
    clip = _clip(n)
    return lambda xw, s: (acts[0](clip(xw + s[0] @ r.t() + rb)),)


def _gru_cell(n, r, rb, acts, _p, hsz):
    clip, lbr = _clip(n), _i(n, "linear_before_reset", 0)
    f, g = acts
    rz, rr, rh = r.split(hsz, 0)
    bz, br, bh = rb.split(hsz, 0)

    def cell(xw, s):
        h = s[0]
        xz, xr, xh = xw.split(hsz, -1)
        z = f(clip(xz + h @ rz.t() + bz))
        rg = f(clip(xr + h @ rr.t() + br))
        if lbr:
            nh = g(clip(xh + rg * (h @ rh.t() + bh)))
        else:
            nh = g(clip(xh + (rg * h) @ rh.t() + bh))
        return ((1 - z) * nh + z * h,)

    return cell


def _lstm_cell(n, r, rb, acts, p, hsz):
    clip, coupled = _clip(n), _i(n, "input_forget", 0)
    f, g, hact = acts
    pi, po, pf = p.split(hsz, 0) if p is not None else (0, 0, 0)

    def cell(xw, s):
        h, c = s
        gi, go, gf, gc = (xw + h @ r.t() + rb).split(hsz, -1)
        i = f(clip(gi + pi * c))
        fg = 1 - i if coupled else f(clip(gf + pf * c))
        c_new = fg * c + i * g(clip(gc))
        o = f(clip(go + po * c_new))
        return o * hact(c_new), c_new

    return cell


_SPECS = {  # op: (gates, default activations, cell factory, number of states)
    "RNN": (1, ["tanh"], _rnn_cell, 1),
    "GRU": (3, ["sigmoid", "tanh"], _gru_cell, 1),
    "LSTM": (4, ["sigmoid", "tanh", "tanh"], _lstm_cell, 2),
}


def _recurrent(op: str):
    gates, defaults, make_cell, nstates = _SPECS[op]

    def run(x, n):
        xs, w, r = x[0], x[1], x[2]
        layout = _i(n, "layout", 0)
        if layout:
            xs = xs.transpose(0, 1)
        seq, batch = xs.shape[0], xs.shape[1]
        dirs, hsz = w.shape[0], r.shape[-1]
        b = _opt(x, 3)
        b = b if b is not None else xs.new_zeros((dirs, 2 * gates * hsz))
        lens = _opt(x, 4)
        lens = lens.long() if lens is not None else torch.full((batch,), seq, device=xs.device)
        init = [_opt(x, 5), _opt(x, 6)][:nstates]
        init = [s.transpose(0, 1) if s is not None and layout else s for s in init]
        p = _opt(x, 7) if op == "LSTM" else None
        direction = n.attributes.get_string("direction", "forward")
        acts = _activations(n, defaults, dirs)
        ys, finals = [], []
        for d in range(dirs):
            wb, rb = b[d].split(gates * hsz)
            xw = xs @ w[d].t() + wb
            s0 = tuple(s[d] if s is not None else xs.new_zeros((batch, hsz)) for s in init)
            pd = p[d] if p is not None else None
            cell = make_cell(n, r[d], rb, acts[d], pd, hsz)
            reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
            y, st = _run_direction(cell, xw, s0, lens, reverse)
            ys.append(y)
            finals.append(st)
        y = torch.stack(ys, 1)  # [seq, dirs, batch, H]
        outs = [torch.stack([st[k] for st in finals]) for k in range(nstates)]
        if layout:
            y = y.permute(2, 0, 1, 3)
            outs = [o.transpose(0, 1) for o in outs]
        return (y, *outs)

    return run


RECURRENT_OPS = {op: _recurrent(op) for op in _SPECS}

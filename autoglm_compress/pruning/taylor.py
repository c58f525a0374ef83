"""First-order Taylor importance of channels, label-free, from data through the torch executor.

Removing channel c of a producer's output a changes the model output by ≈ J·(a_c e_c) (first order).
Its expected squared size, E‖J a_c‖², is estimated with random output projections r ~ N(0, I):
E_r (rᵀ J a_c)² = E_r (Σ_positions a_c · ∂(rᵀy)/∂a_c)² — one backward pass per sample and projection,
the gradient taken at every producer's output at once (a zero tensor added there). With labels the
projection is the cross-entropy instead (Molchanov et al. 2019's criterion). Scores are averaged over
a space's producers, each normalised by its mean (as the L1 importance
is).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import torch

from autoglm_compress.pruning.groups import ChannelGroup

__all__ = ["taylor_importance", "SAMPLES", "PROJECTIONS"]

logger = logging.getLogger(__name__)
SAMPLES = 32
PROJECTIONS = 4


def _channel_axis(node: ir.Node, rank: int) -> int:
    return 1 if node.op_type in ("Conv", "ConvTranspose") or rank <= 2 else rank - 1


def _producers(grp: ChannelGroup):
    """(weighted op, features per channel) for the ops whose outputs carry ``grp``'s channels (a
    Split output's: the split value's writers)."""
    for m in grp.sources:
        if m.kind == "split_source":
            yield from ((p, 1) for p in m.space.sources)
        else:
            yield m, grp.width(m.value)


def taylor_importance(model: ir.Model, groups: list[ChannelGroup], feeds) -> dict[tuple, np.ndarray]:
    """``tuple(group.values)`` → per-channel importance for every prunable group."""
    from autoglm_compress.runtime import TorchExecutor

    ex = TorchExecutor(model, device="cpu")
    for p in ex.parameters().values():
        p.requires_grad_(False)
    wanted: dict[str, tuple[int, int]] = {}  # producer output -> (channel axis, block)
    for grp in groups:
        for m, block in _producers(grp):
            y = m.node.outputs[0]
            wanted[y.name] = (_channel_axis(m.node, len(y.shape or ()) or 4), block)
    per_source = {name: None for name in wanted}
    gen = torch.Generator().manual_seed(0)
    outs = [v.name for v in model.graph.outputs if v.dtype is None or v.dtype.is_floating_point()]
    for feed in list(feeds)[:SAMPLES]:
        for _ in range(PROJECTIONS):
            added: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

            def hook(name, node, t, added=added):
                if name in wanted and t.is_floating_point():
                    z = torch.zeros_like(t, requires_grad=True)
                    added[name] = (z, t.detach())
                    return t + z
                return None

            res = ex.run(feed, hook=hook, keep_grad=True)
            loss = sum((torch.randn(res[o].shape, generator=gen) * res[o]).sum() for o in outs)
            if not added or not loss.requires_grad:
                continue
            grads = torch.autograd.grad(loss, [z for z, _ in added.values()], allow_unused=True)
            for (name, (_, a)), g in zip(added.items(), grads):
                if g is None:
                    continue
                ax, block = wanted[name][0] % a.dim(), wanted[name][1]
                per_feature = (a * g).movedim(ax, 0).reshape(a.shape[ax], -1).sum(1).double()
                contrib = per_feature.reshape(-1, block).sum(1) ** 2  # a head: its features at once
                prev = per_source[name]
                per_source[name] = contrib if prev is None else prev + contrib
    out = {}
    for grp in groups:
        terms = []
        for m in grp.sources:
            if m.kind == "split_source":
                from autoglm_compress.pruning.apply import split_window

                off, width = split_window(m)
                for p in m.space.sources:
                    s = per_source.get(p.node.outputs[0].name)
                    if s is not None and s.numel() >= off + width:
                        terms.append(s[off:off + width].numpy())
                continue
            s = per_source.get(m.node.outputs[0].name)
            if s is not None and s.numel() == grp.channels:
                terms.append(s.numpy())
        out[tuple(grp.values)] = (sum(t / max(float(t.mean()), 1e-30) for t in terms) / len(terms)
                                  if terms else np.zeros(grp.channels))
    return out

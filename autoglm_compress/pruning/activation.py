"""Activation importance: what each channel feeds its readers, measured on data.

A channel's weights say little about what it contributes when a folded BatchNorm gave it a bias
(after ReLU6 it may feed a large constant) or when its inputs are small. Measured on samples of
the unpruned model (the moments of pruning/compensate.py), removing channel c from a reader with
weight W changes the reader's output energy by ``‖W[:, c]‖² · E[x_c²]``; with compensation (the
removed channel predicted from the kept ones) by ``‖W[:, c]‖² / (Σ⁻¹)_cc`` — the variance of x_c
that the other channels cannot explain. Each reader's scores are divided by its total (a share of
its output), averaged over the space's readers and scaled to mean 1, like the norm importances.
A space whose readers were not measured (behind a Flatten or a Concat) keeps the L1 importance.
EfficientNet-Lite1 at 5 % of the channels, no fine-tuning: cosine 0.64 (L1) → 0.91.
"""

from __future__ import annotations

import numpy as np

from autoglm_compress.ir_ops import const_array
from autoglm_compress.pruning.apply import _source_norms
from autoglm_compress.pruning.compensate import RIDGE
from autoglm_compress.pruning.groups import ChannelGroup

__all__ = ["importance_activation"]


def _unexplained(cov: np.ndarray) -> np.ndarray:
    """Per channel: its variance left after the best linear prediction from all the others."""
    lam = RIDGE * max(float(np.trace(cov)) / len(cov), 1e-12)  # as compensate.py regresses
    prec = np.linalg.inv(cov + lam * np.eye(len(cov)))
    return 1.0 / np.maximum(np.diag(prec), 1e-30)


def importance_activation(group: ChannelGroup, moments: dict, compensated: bool
                          ) -> np.ndarray | None:
    """Per-channel importance of ``group`` (module docstring); None when no reader was measured."""
    terms = []
    for m in group.members:
        mom = moments.get(m.value)
        if mom is None or m.kind != "consumer" or len(m.node.inputs) < 2 or const_array(
                m.node.inputs[1]) is None or m.node.inputs[0] is None \
                or m.node.inputs[0].name != m.value:
            continue
        norms = _source_norms(m, 1, 2) ** 2  # ‖W[:, c]‖² per input feature
        if norms.size != mom.mean.size:
            continue
        if compensated and mom.cov is not None:
            energy = _unexplained(mom.cov)
        elif mom.cov is not None:
            energy = np.diag(mom.cov) + mom.mean ** 2
        else:
            continue
        c = norms * energy
        block = group.block if m.value in group.expanded else 1
        c = c.reshape(-1, block).sum(1)
        if c.size == group.channels and c.sum() > 0:
            terms.append(c / c.sum())
    if not terms:
        return None
    s = sum(terms) / len(terms)
    return s / max(float(s.mean()), 1e-30)

"""Where each pass option comes from in the config tree — one table, data.

A pass's config dataclass (``passes/<name>.py``) holds what the pass runs with; the user sets those
values through one config field each (CLI flag, recipe key, API keyword), named here as a path in
:class:`~autoglm_compress.config.CompressConfig`. Fields the run fills itself (calibration maxima,
schemes) are listed in ``RUN_FILLED``; ``tests/test_pass_options.py`` checks that every field of
every pass config is one or the other, that every path exists, and that the defaults agree, so a new
pass option cannot be forgotten or given a second default. (Why a table and not the pass config
*being* the section: docs/decisions/0022-rules-as-data-prepare-passes-options.md,
"One option, one field".)

A config value of None means "not given": the pass's own default applies (``--passes prune``
alone prunes at the pass's ratio). ``ENABLED_VALUE``: fields whose "off" value is not None (distill
steps 0) and what the pass runs with when another switch (``--distill``) turned it on.
"""

from __future__ import annotations

from typing import Any

from autoglm_compress.config import DISTILL_DEFAULT_STEPS

__all__ = ["PASS_OPTIONS", "RUN_FILLED", "ENABLED_VALUE", "pass_kwargs", "read_path"]

PASS_OPTIONS: dict[str, dict[str, str]] = {
    "prune": {"ratio": "prune.ratio", "multiple": "prune.multiple", "macs": "prune.macs",
              "scope": "prune.scope", "importance": "prune.importance",
              "compensate": "prune.compensate"},
    "sparsify": {"sparsity": "prune.sparsity", "scope": "prune.sparsity_scope",
                 "pattern": "prune.sparsity_pattern"},
    "distill": {"steps": "distill.steps", "epochs": "distill.epochs", "lr": "distill.lr",
                "batch": "distill.batch", "samples": "distill.samples",
                "device": "distill.device", "loss": "distill.loss",
                "temperature": "distill.temperature", "label_weight": "distill.label_weight",
                "scaled_lr": "distill.scaled_lr", "feature_weight": "distill.features"},
    "qat": {"steps": "qat.steps", "lr": "qat.lr", "batch": "qat.batch",
            "samples": "calibration.samples", "device": "qat.device",
            "learn_scales": "qat.learn_scales", "scale_lr": "qat.scale_lr"},
    "smoothquant": {"alpha": "int8.smoothquant"},
}

# set by the run from what it measured, never by the user
RUN_FILLED: dict[str, frozenset[str]] = {
    "smoothquant": frozenset({"act_absmax"}),
}

# pass option → its value when the pass runs though the field says off (0)
ENABLED_VALUE: dict[tuple[str, str], Any] = {
    ("distill", "steps"): DISTILL_DEFAULT_STEPS,  # --distill alone
}


def read_path(cfg, path: str):
    """``cfg`` at a dotted path (``"prune.ratio"``)."""
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def pass_kwargs(cfg, name: str) -> dict[str, Any]:
    """The config kwargs of pass ``name`` read from the config tree."""
    out = {}
    for key, path in PASS_OPTIONS[name].items():
        v = read_path(cfg, path)
        if not v and (name, key) in ENABLED_VALUE:
            v = ENABLED_VALUE[(name, key)]
        if v is not None:
            out[key] = v
    if name == "distill" and not cfg.distill.data:  # training on the calibration data
        out["samples"] = cfg.calibration.samples
    return out

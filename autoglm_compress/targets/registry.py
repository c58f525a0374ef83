"""Targets by the name the user types (``--target``): a name → the package that holds the target.

A target is one folder (``targets/<name>/``): ``options.py`` (its frozen option dataclass, light:
the CLI reads it for ``--help``), ``target.py`` (the :class:`~autoglm_compress.targets.base.Target`
subclass, exported as ``TARGET``) and ``lowering.toml`` (its op-lowering table, data). Adding a target
is that folder plus one entry here (or :func:`register_target` from outside the package).
"""

from __future__ import annotations

import importlib

from autoglm_compress.errors import ConfigError

__all__ = ["TARGETS", "register_target", "target_names", "target_options_class", "get_target",
           "get_targets"]

TARGETS: dict[str, str] = {
    "x86": "autoglm_compress.targets.x86",
    "cuda": "autoglm_compress.targets.cuda",
    "arm": "autoglm_compress.targets.arm",
}


def register_target(name: str, package: str) -> None:
    """Make the target in ``package`` (``options.py`` + ``target.py``) reachable as ``name``."""
    TARGETS[name] = package


def target_names() -> list[str]:
    return sorted(TARGETS)


def _package(name: str) -> str:
    if name not in TARGETS:
        raise ConfigError(f"unknown target {name!r}; available: {', '.join(target_names())}")
    return TARGETS[name]


def target_options_class(name: str) -> type:
    """The target's option dataclass (imports only its light ``options`` module)."""
    return importlib.import_module(_package(name) + ".options").Options


def get_target(name: str, options=None, **kw):
    """A target instance with ``options`` (its Options dataclass) or keyword options."""
    cls = importlib.import_module(_package(name) + ".target").TARGET
    return cls(options, **kw)


def get_targets(name: str, options=None) -> list:
    """The target instances ``--target name`` stands for: one, or several where the package's
    ``target.py`` has ``targets_for(options)`` (``--target arm --format all``: TFLite and ncnn)."""
    mod = importlib.import_module(_package(name) + ".target")
    classes = mod.targets_for(options) if hasattr(mod, "targets_for") else [mod.TARGET]
    return [cls(options) for cls in classes]

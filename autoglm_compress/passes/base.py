"""Pass base class and the name registry the CLI and recipes use.

A pass is an ``onnx_ir.passes.InPlacePass``: ``call(model) -> PassResult``. Ours add ``needs`` (what it
reads from the :class:`~autoglm_compress.passes.context.PassContext`: data, teacher, stats, target), a
typed, frozen config dataclass (each field carries a ``help`` in its metadata, from which the CLI help is written)
and ``stats``: a small dict of counts saying what the pass changed ("bn_folded": 3), which the
pipeline logs and writes into the report.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult

__all__ = ["CompressPass", "PassConfig", "register", "get_pass", "registered", "field"]

logger = logging.getLogger(__name__)

_REGISTRY: dict[str, type[CompressPass]] = {}


@dataclasses.dataclass(frozen=True)
class PassConfig:
    """Base for pass options; subclasses add fields made with :func:`field`."""


def field(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse/click naming
    """A dataclass field with a description (shown in CLI help and the report)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help}, **kw
        )
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


class CompressPass(InPlacePass):
    """An in-place IR pass with a name, a config and change counts."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[PassConfig]] = PassConfig
    # What the pass reads from its PassContext (passes/context.py); checked before any pass runs.
    needs: ClassVar[frozenset[str]] = frozenset()
    # The pass changes value shapes: the pipeline re-infers them afterwards.
    changes_shapes: ClassVar[bool] = False

    def __init__(self, config: PassConfig | None = None):
        super().__init__()
        self.config = config if config is not None else self.config_class()
        self.stats: dict[str, Any] = {}
        self.ctx = None  # the PassContext, set by the pipeline

    def required(self) -> frozenset[str]:
        """What this instance needs from the context (a config may supply some of it)."""
        return self.needs

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def call(self, model: ir.Model) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.call")


def register(cls: type[CompressPass]) -> type[CompressPass]:
    """Class decorator: make the pass reachable by ``cls.name`` from the CLI and recipes."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[CompressPass]]:
    from autoglm_compress import passes as _  # noqa: F401 - importing registers the built-in passes

    return dict(_REGISTRY)


def get_pass(name: str) -> type[CompressPass]:
    reg = registered()
    if name not in reg:
        from autoglm_compress.errors import ConfigError

        raise ConfigError(f"unknown pass {name!r}; known passes: {', '.join(sorted(reg))}")
    return reg[name]

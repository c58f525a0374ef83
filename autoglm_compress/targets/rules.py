"""Lowering rules kept as data: one rule per ONNX op (or group of ops) per emitter.

A rule is a function that writes the op into the target's graph, plus a check that says why a
particular node cannot be written (None: it can). What a target supports is *generated* from its
rules — the op list its ``lowering.toml`` table refuses against, ``check``'s per-node reasons and
the supported-op table in the README — so the three can no longer disagree::

    RULES = RuleSet("ncnn")

    @RULES.rule("Relu", "LeakyRelu")
    def relu(lw, n): ...

    @RULES.rule("Pad", check=lambda n: None if ... else "Pad on the batch axis")
    def pad(lw, n): ...

``internal=True`` marks ops the emitter reads only in graphs this tool made (Q/DQ pairs of the INT8
IR): they are lowered, but not offered as supported in a user's model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx_ir as ir

from autoglm_compress.errors import UnsupportedOpError

__all__ = ["Rule", "RuleSet"]

Check = Callable[[ir.Node], "str | None"]


@dataclasses.dataclass(frozen=True)
class Rule:
    ops: tuple[str, ...]
    lower: Callable
    check: Check | None = None
    domains: tuple[str, ...] = ("",)
    internal: bool = False

    @property
    def name(self) -> str:
        return self.lower.__name__


class RuleSet:
    """The rules of one emitter. ``common``: a check every node passes first (e.g. ncnn's "batch
    1, static shapes"), given the node and its rule."""

    def __init__(self, target: str, common: Callable[[ir.Node, Rule], str | None] | None = None):
        self.target = target
        self.common = common
        self._rules: dict[str, Rule] = {}

    def rule(self, *ops: str, check: Check | None = None, domains: tuple[str, ...] = ("",),
             internal: bool = False):
        """Decorator: ``fn(lw, node)`` lowers ``ops``; ``check(node)`` says why it cannot."""
        def register(fn):
            r = Rule(tuple(ops), fn, check, domains, internal)
            for op in ops:
                if op in self._rules:
                    raise ValueError(f"{self.target}: two rules for {op!r}")
                self._rules[op] = r
            return fn
        return register

    def add(self, *ops: str, lower: Callable, check: Check | None = None,
            domains: tuple[str, ...] = ("",), internal: bool = False) -> None:
        """The same as :meth:`rule`, for a function defined elsewhere."""
        self.rule(*ops, check=check, domains=domains, internal=internal)(lower)

    def get(self, op: str) -> Rule | None:
        return self._rules.get(op)

    def ops(self, internal: bool = False) -> frozenset[str]:
        """The ops with a rule (``internal``: also those read only in this tool's own graphs)."""
        return frozenset(op for op, r in self._rules.items() if internal or not r.internal)

    def rules(self) -> list[Rule]:
        """Each rule once, in registration order."""
        seen: dict[int, Rule] = {}
        for r in self._rules.values():
            seen.setdefault(id(r), r)
        return list(seen.values())

    def reason(self, node: ir.Node) -> str | None:
        """Why ``node`` cannot be lowered by this emitter (None: it can)."""
        r = self._rules.get(node.op_type)
        if r is None:
            return f"no {self.target} lowering for this op yet"
        domain = "" if node.domain == "ai.onnx" else node.domain or ""
        if domain not in r.domains:
            return f"no {self.target} lowering for domain {node.domain!r}"
        if self.common is not None:
            why = self.common(node, r)
            if why:
                return why
        return r.check(node) if r.check is not None else None

    def lower(self, lw, node: ir.Node) -> None:
        """Write ``node`` with its rule; refuse with the rule's reason."""
        why = self.reason(node)
        if why:
            raise UnsupportedOpError(node.op_type, node.name or "?", self.target, why)
        self._rules[node.op_type].lower(lw, node)

    def table(self) -> list[tuple[str, str]]:
        """``[(op, condition)]`` sorted by op: the supported-op list with each rule's check named
        by its docstring's first line (documentation generated from the rules)."""
        out = []
        for op, r in sorted(self._rules.items()):
            if r.internal:
                continue
            doc = (r.check.__doc__ or "").strip().splitlines() if r.check else []
            out.append((op, doc[0] if doc else ""))
        return out

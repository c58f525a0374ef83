"""Click options generated from :class:`CompressConfig` fields, shown in groups in ``--help``.

Every generated option defaults to "not given" (None / empty), so the keywords handed to
``from_flat`` are exactly what the user typed: the config's defaults live in one place, and
``--print-recipe`` prints only what the command line changed.
"""

from __future__ import annotations

import dataclasses
import typing

import click

from autoglm_compress.config_build import FlatField, flat_fields

__all__ = ["GroupedCommand", "config_options", "given"]

_ORDER = ["General", "Output", "Load", "Calibration", "Image preprocessing", "INT8",
          "Quantization-aware training", "Pruning", "Distillation", "Verification", "Quality gates", "Bundle", "Target",
          "Debugging"]


class GroupedCommand(click.Command):
    """``--help`` lists options under their group's heading (attribute ``group`` on the option)."""

    def format_options(self, ctx, formatter):
        groups: dict[str, list] = {}
        for p in self.get_params(ctx):
            rec = p.get_help_record(ctx)
            if rec:
                groups.setdefault(getattr(p, "group", None) or "General", []).append(rec)

        def rank(g: str) -> tuple[int, str]:
            return next((i for i, o in enumerate(_ORDER) if g.startswith(o)), len(_ORDER)), g

        for g in sorted(groups, key=rank):
            with formatter.section(g):
                formatter.write_dl(groups[g])


def default_str(ff: FlatField, show_false: bool = False) -> str:
    """A field's default as the CLI spells it ("" when it has none worth showing)."""
    d = ff.field.default
    if d is dataclasses.MISSING or d is None or d == () or d == "" or (
            isinstance(d, bool) and not d and not show_false):
        return ""
    if isinstance(d, tuple):
        d = ",".join(map(str, d))
    if isinstance(d, float):
        d = f"{d:.6g}"
    return str(d)


def _default_text(ff: FlatField) -> str:
    d = default_str(ff)
    return f"  [default: {d}]" if d else ""


def _option(ff: FlatField) -> click.Option:
    meta, t = ff.field.metadata, ff.type
    args = typing.get_args(t)
    inner = next((a for a in args if a is not type(None)), t) if args and type(None) in args else t
    cli = meta.get("cli") or "--" + ff.flat.replace("_", "-")
    names = cli.split("/") if cli.startswith("-o/") else [cli]
    kw: dict = {"default": None, "help": meta["help"] + _default_text(ff), "metavar": meta.get("metavar")}
    if inner is bool:
        if "/" in cli:
            names = [cli]
        elif ff.field.default is True or ff.field.default is None:
            names = [f"{cli}/--no-{cli[2:]}"]
        else:
            kw["is_flag"] = True
    elif typing.get_origin(inner) is tuple and typing.get_args(inner)[0] is str and ff.flat != "passes":
        kw.update(multiple=True, default=())
    elif meta.get("choices"):
        kw["type"] = click.Choice([str(c) for c in meta["choices"]])
    elif inner in (int, float):
        kw["type"] = inner
    kw["metavar"] = kw["metavar"] or None
    opt = click.Option([*names, ff.flat], **kw)
    opt.group = ff.group
    return opt


def config_options(fn):
    """Decorate a click command with one option per config field (target options included)."""
    for ff in reversed(list(flat_fields().values())):
        if ff.flat == "model":
            continue
        if not hasattr(fn, "__click_params__"):
            fn.__click_params__ = []
        fn.__click_params__.append(_option(ff))  # what click's option decorators do
    return fn


def given(params: dict) -> dict:
    """The generated options the user actually gave (None / empty tuple = not given)."""
    names = set(flat_fields())
    return {k: v for k, v in params.items() if k in names and v is not None and v != ()}

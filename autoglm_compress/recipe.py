"""Recipe files: a :class:`CompressConfig` as TOML (``autoglm-compress run recipe.toml``).

The layout is the config's: top-level ``model``, ``out_dir``, ``targets``, ``precision``, ``passes``,
then one table per section (``[calibration]``, ``[calibration.image]``, ``[int8]``, ``[qat]``,
``[verify]``, ``[gates]``, ``[debug]``, ``[target_options.x86]`` …). Relative paths in a recipe are
taken from the current folder, as on the command line (so ``--print-recipe > anywhere.toml`` runs
the same), unless the recipe sets ``base_dir`` (relative to the recipe file's folder). Errors name
the key path and its line in the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path

from autoglm_compress.config import CompressConfig
from autoglm_compress.config_build import flat_fields, from_dict, to_dict
from autoglm_compress.errors import ConfigError

__all__ = ["load_recipe", "dump_recipe", "key_line"]

_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\s\"]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"]+)\s*=")


def key_line(text: str, path: tuple[str, ...]) -> int | None:
    """The 1-based line where ``path`` (a.b.c) is set in TOML ``text``: ``c =`` under ``[a.b]``,
    or a dotted ``b.c =`` under ``[a]``, or the table header ``[a.b.c]`` itself."""
    table: tuple[str, ...] = ()
    for i, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            table = tuple(p.strip().strip('"') for p in m.group(1).split("."))
            if table == path:
                return i
            continue
        m = _KEY.match(line)
        if m:
            key = tuple(p.strip().strip('"') for p in line.split("=", 1)[0].split("."))
            if table + key == path or table + key == path[: len(table + key)]:
                return i
    return None


def _resolve_paths(tree: dict, base: Path) -> None:
    """Relative path fields → relative to the recipe's folder (module:function specs untouched)."""
    for ff in flat_fields().values():
        if not ff.field.metadata.get("path"):
            continue
        node = tree
        for k in ff.path[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(ff.path[-1]), str):
            continue
        value = node[ff.path[-1]]
        if _is_module_spec(value) or os.path.isabs(value):
            continue
        node[ff.path[-1]] = os.path.normpath(str(base / value))


def _is_module_spec(value: str) -> bool:
    head, sep, tail = value.partition(":")
    return bool(sep) and tail.isidentifier() and "/" not in head and not Path(value).exists()


def load_recipe(path: str | Path, overrides: dict | None = None) -> CompressConfig:
    """Parse and check a recipe; ``overrides`` (nested dict) replace its values (e.g. ``out_dir``)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"recipe {str(p)!r}: cannot read it ({e.strerror})") from None
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    base = tree.pop("base_dir", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{p}:{key_line(text, ('base_dir',))}: base_dir: expected a string")
        _resolve_paths(tree, p.parent / base)
    for k, v in (overrides or {}).items():
        tree[k] = v

    def where(keypath: tuple[str, ...]) -> str:
        line = key_line(text, keypath)
        return f"{p}:{line}: {'.'.join(keypath)}" if line else f"{p}: {'.'.join(keypath)}"

    return from_dict(tree, where)


def dump_recipe(cfg: CompressConfig, defaults: bool = False) -> str:
    """The recipe text of ``cfg`` (only non-default values unless ``defaults``)."""
    import tomli_w

    tree = to_dict(cfg, defaults=defaults)
    head = (
        "# autoglm-compress recipe: `autoglm-compress run THIS_FILE`\n"
        "# relative paths are taken from the current folder (set base_dir = \"..\" to take them\n"
        "# from a folder relative to this file instead)\n"
    )
    return head + tomli_w.dumps(_order(tree))


def _order(tree: dict) -> dict:
    """Scalars before tables (TOML needs it); sections in the config's order."""
    order = [f.name for f in dataclasses.fields(CompressConfig)]
    keys = sorted(tree, key=lambda k: (isinstance(tree[k], dict), order.index(k) if k in order else 99))
    return {k: tree[k] for k in keys}

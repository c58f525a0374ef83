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
import functools
import os
import re
from pathlib import Path

import tomllib

from autoglm_compress.config import CompressConfig
from autoglm_compress.config_build import flat_fields, from_dict, to_dict
from autoglm_compress.errors import ConfigError

__all__ = ["code_fields", "dump_recipe", "key_line", "load_recipe"]

_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\s\"]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"][A-Za-z0-9_\-\".\s]*?)\s*=")  # dotted keys too


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
            full = table + key
            if full == path[: len(full)] or full[: len(path)] == path:
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


def load_recipe(
    path: str | Path, overrides: dict | None = None, *, trust_code: bool = True
) -> CompressConfig:
    """Parse and check a recipe; ``overrides`` (nested dict) replace its values (e.g. ``out_dir``).

    A data field naming code (``calibration.data = "make_data.py:samples"`` or ``module:function``)
    imports and runs that code when the data is read. With ``trust_code=False`` such a recipe is
    refused (one ConfigError naming the file, line and key): ``autoglm-compress run`` passes it
    unless the user adds ``--trust-code``, since a recipe is often someone else's file. A Python
    caller decides for itself (default: allowed, as for a ``CompressConfig`` built in code or
    ``--calib x.py:f`` typed on the command line)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"recipe {str(p)!r}: cannot read it ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text (byte {e.start}); a recipe is TOML") from None
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{p}: not a recipe: tables or arrays nested too deep") from None
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

    cfg = from_dict(tree, where)
    if not trust_code:
        _refuse_code(cfg, where)
    return cfg


def code_fields(cfg: CompressConfig) -> list[tuple[tuple[str, ...], str]]:
    """(key path, value) of the data fields of ``cfg`` that name code to import and run
    (``file.py:function`` or ``module:function`` that is not an existing file or folder)."""
    out = []
    for ff in flat_fields().values():
        if not ff.field.metadata.get("path") or ff.path[0] in ("model", "out_dir", "target_options"):
            continue
        value: object = functools.reduce(getattr, ff.path, cfg)
        if isinstance(value, str) and _CODE.match(value) and not _exists(value):
            out.append((ff.path, value))
    return out


def _refuse_code(cfg: CompressConfig, where) -> None:
    code = code_fields(cfg)
    if code:
        keypath, value = code[0]
        raise ConfigError(
            f"{where(keypath)} = {value!r} imports and runs code from {value.rpartition(':')[0]!r}; "
            "a recipe runs code only when you trust it: add --trust-code to `autoglm-compress run`"
        )


_CODE = re.compile(r"^(.+\.py|[A-Za-z_][\w.]*):[A-Za-z_]\w*$")  # calibration/data.py's callables


def _exists(value: str) -> bool:
    try:
        return os.path.exists(value)
    except (ValueError, OSError):
        return False


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

"""The option reference, generated from the config tree: ``python -m autoglm_compress.cli_doc >
docs/cli.md`` (``make docs``; a test checks the file matches). One table per group: the CLI flag,
the recipe key, the Python keyword, the default and the help text of each field."""

from __future__ import annotations

import sys

from autoglm_compress.config_build import flat_fields

__all__ = ["render"]


def _default(ff) -> str:
    from autoglm_compress.cli_options import default_str

    d = default_str(ff, show_false=True)
    return f"`{d}`" if d else ""


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render() -> str:
    groups: dict[str, list] = {}
    from autoglm_compress.targets.registry import target_names

    for ff in flat_fields(tuple(target_names())).values():
        if ff.path[0] in ("model",):
            continue
        groups.setdefault(ff.group or "General", []).append(ff)
    out = ["# Options", "",
           "Generated from `autoglm_compress/config.py` by `make docs`; do not edit. Every option is "
           "one config field: a CLI flag, a recipe key (TOML, `autoglm-compress run`) and a keyword "
           "of `compress(...)`. `autoglm-compress compress --help` prints the same.", ""]
    for group, fields in groups.items():
        out += [f"## {group}", "", "| flag | recipe key | keyword | default | meaning |",
                "|---|---|---|---|---|"]
        for ff in fields:
            choices = ff.field.metadata.get("choices")
            text = ff.field.metadata.get("help", "")
            if choices:
                text += f" One of: {', '.join(map(str, choices))}."
            out.append(f"| `{ff.option}` | `{ff.key}` | `{ff.flat}` | {_default(ff)} | "
                       f"{_cell(text)} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())

"""The supported-op tables of the rule-based emitters, generated from their rules:
``python -m autoglm_compress.targets.ops_doc > docs/arm_ops.md`` (``make docs``; a test checks the
file matches)."""

from __future__ import annotations

import sys

__all__ = ["render"]


def _rulesets():
    from autoglm_compress.targets.ncnn.lower import RULES as ncnn
    from autoglm_compress.targets.tflite.lower import RULES as tflite

    return (("TFLite (`--target arm`, `--format tflite`)", tflite),
            ("ncnn (`--target arm --format ncnn`)", ncnn))


def render() -> str:
    out = ["# Ops the arm emitters lower", "",
           "Generated from the lowering rules (`autoglm_compress/targets/<format>/rules*.py`, "
           "`ops_*.py`) by `make docs`; do not edit. An op not listed, or a node its condition "
           "refuses, stops the run before calibration with the reason.", ""]
    for title, rules in _rulesets():
        table = rules.table()
        out += [f"## {title}: {len(table)} ops", "", "| op | condition |", "|---|---|"]
        out += [f"| {op} | {cond or 'any'} |" for op, cond in table]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())

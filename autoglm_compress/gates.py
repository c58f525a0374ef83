"""Quality gates and budgets for CI: ``--min-cosine`` (the worst verification sample's cosine, or
with ``--min-cosine-of mean`` the mean over samples; flagged outputs fail it), ``--max-drop``,
``--max-size`` and ``--max-latency-ratio``, each checked per artifact.

Every budget given is one entry per artifact in the report's ``gates`` (name, value, limit,
passed); every failed one is exit 3 with one line naming the budget, the artifact, the value and
the limit. Numbers are printed with as many digits as it takes to show the comparison (a cosine of
0.9999999 against ``--min-cosine 1`` is never written as 1.00000).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

__all__ = ["Budgets", "below", "evaluate", "latency_ratio", "parse_size", "quality_gate"]

logger = logging.getLogger(__name__)

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_SIZE = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str) -> tuple[str, float]:
    """``--max-size``: ``("bytes", n)`` for ``2000000`` / ``2MB`` / ``1.5MiB`` (k/M/G are 1000s,
    Ki/Mi/Gi 1024s), ``("ratio", r)`` of the source model's size for ``0.3`` (a bare number ≤ 1)
    or ``1.2x``. Anything else — negative, zero, nan, an unknown unit, a bare 1.5 — is a
    :class:`ConfigError` (exit 2)."""
    from autoglm_compress.errors import ConfigError

    def bad(why: str) -> ConfigError:
        return ConfigError(f"--max-size: {text!r} {why}; give bytes (2000000, 2MB, 1.5MiB) or a "
                           "share of the source model's size (0.3, 1.2x)")

    m = _SIZE.match(str(text))
    if not m:
        raise bad("is not a size")
    number, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(number) or number <= 0:
        raise bad("is not a positive finite size")
    if unit == "x":
        return "ratio", number
    if unit not in _UNITS:
        raise bad(f"has an unknown unit {m.group(2)!r}")
    if not unit:
        if number <= 1:
            return "ratio", number
        if not number.is_integer():
            raise bad("is neither a byte count nor a ratio ≤ 1 (write 1.5x for a ratio)")
    n = number * _UNITS[unit]
    if not 1 <= n < 1e18:
        raise bad("is out of range (1 byte to 1 EB)")
    return "bytes", float(round(n))


def below(value: float, bound: float) -> str:
    """``value`` with the fewest digits (≥ 5) that still read as below ``bound``."""
    if not math.isfinite(value):
        return str(value)
    for digits in range(5, 17):
        text = f"{value:.{digits}f}"
        if float(text) < bound:
            return text
    return repr(value)


def _above(value: float, bound: float, digits: int = 3) -> str:
    """``value`` with the fewest digits (≥ ``digits``) that still read as above ``bound``."""
    if not math.isfinite(value):
        return str(value)
    for d in range(digits, 17):
        text = f"{value:.{d}f}"
        if float(text) > bound:
            return text
    return repr(value)


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{int(n)} bytes ({n / size:.3g} {unit})"
    return f"{int(n)} bytes"


class Budgets:
    """The budgets of a run (``GateConfig`` fields), with ``--max-size`` parsed."""

    def __init__(self, min_cosine=None, max_drop=None, max_size=None, max_latency_ratio=None,
                 min_cosine_of="min"):
        self.min_cosine, self.max_drop = min_cosine, max_drop
        self.min_cosine_of = min_cosine_of
        self.max_size_text = max_size
        self.max_size = parse_size(max_size) if max_size is not None else None
        self.max_latency_ratio = max_latency_ratio

    @classmethod
    def of(cls, gates) -> Budgets:
        return cls(gates.min_cosine, gates.max_drop, gates.max_size, gates.max_latency_ratio,
                   gates.min_cosine_of)

    def given(self) -> bool:
        return any(v is not None for v in (self.min_cosine, self.max_drop, self.max_size,
                                             self.max_latency_ratio))


def _view(a) -> dict:
    """An artifact (``Artifact`` or its report dict) as the fields the gates read."""
    if isinstance(a, dict):  # the size of a multi-file artifact (ncnn .param + .bin): the sum
        files = (a.get("files") or {}).values()
        size = sum(f["size_bytes"] for f in files) if files else a.get("size_bytes")
        return {"name": Path(a["path"]).name, "fidelity": a.get("fidelity") or {},
                "latency": a.get("latency") or {}, "size": size, "precision": a.get("precision")}
    return {"name": a.path.name, "fidelity": a.fidelity or {}, "latency": a.latency or {},
            "size": a.size_bytes, "precision": a.precision}


def _entry(name, artifact, value, limit, passed, line, **more) -> dict:
    e = {"name": name, "option": "--" + name.replace("_", "-"), "artifact": artifact,
         "value": value, "limit": limit, "passed": bool(passed), **more}
    if not passed:
        e["message"] = line
    return e


_OF_TEXT = {"min": "the worst verification sample's cosine vs FP32, worst output",
            "mean": "the mean over verification samples of the cosine vs FP32, worst output"}


def _cosine(v, b: Budgets) -> list[dict]:
    from autoglm_compress.metrics import flag_messages, gated_cosine

    fid, of = v["fidelity"], b.min_cosine_of
    cos = gated_cosine(fid, of)
    flagged = flag_messages(fid, v["name"])
    ok = math.isfinite(cos) and cos >= b.min_cosine and not flagged
    why, more = [], {}
    worst = fid.get("worst") or {}
    if of == "mean":
        outs = fid.get("outputs") or {}
        more["output"] = min(outs, key=lambda n: outs[n].get("cosine_mean", math.inf),
                             default=None)
    else:
        more.update(output=worst.get("output"), sample=worst.get("sample"))
    if not (math.isfinite(cos) and cos >= b.min_cosine):
        where = ""
        if of == "mean" and more["output"] is not None:
            where = f" (the mean over samples, output {more['output']!r})"
        elif more.get("sample") is not None:
            where = (f" (the worst sample: output {more['output']!r}, sample {more['sample']}; "
                     f"mean over samples {fid.get('cosine_mean', float('nan')):.5f})")
        why.append(f"{v['name']} cosine {below(cos, b.min_cosine)} < --min-cosine "
                   f"{b.min_cosine}{where}")
    why += [f"{m} fails --min-cosine" for m in flagged]
    value = cos if math.isfinite(cos) else None
    return [_entry("min_cosine", v["name"], value, b.min_cosine, ok, "; ".join(why),
                   statistic=of, measure=_OF_TEXT[of], **more)]


def _drop(v, b: Budgets) -> list[dict]:
    from autoglm_compress.metrics import accuracy_output

    scored = accuracy_output(v["fidelity"])
    if scored is None:  # check_eval_labels refuses this before any work; kept as a guard
        why = v["fidelity"].get("labels_ignored", "no labels")
        return [_entry("max_drop", v["name"], None, b.max_drop, False,
                       f"{v['name']} has no accuracy for --max-drop ({why})")]
    drop = round(scored[1]["accuracy_ref"] - scored[1]["accuracy"], 6)
    return [_entry("max_drop", v["name"], drop, b.max_drop, drop <= b.max_drop,
                   f"{v['name']} accuracy drop {drop:.4f} > --max-drop {b.max_drop}",
                   measure="top-1 accuracy on the --eval labels, FP32 minus artifact")]


def _size(v, b: Budgets, source_bytes: int | None) -> list[dict]:
    kind, limit = b.max_size
    size = v["size"]
    if kind == "bytes":
        return [_entry("max_size", v["name"], size, int(limit), size <= limit,
                       f"{v['name']} size {_fmt_bytes(size)} > --max-size {b.max_size_text}"
                       + ("" if b.max_size_text.strip() == str(int(limit)) else
                          f" = {int(limit)} bytes"), unit="bytes", size_bytes=size)]
    ratio = size / source_bytes if source_bytes else float("nan")
    ok = math.isfinite(ratio) and ratio <= limit
    return [_entry("max_size", v["name"], round(ratio, 6) if math.isfinite(ratio) else None, limit,
                   ok, f"{v['name']} size {_above(ratio, limit)}× the source's ({size} of "
                   f"{source_bytes} bytes) > --max-size {b.max_size_text}", unit="ratio of the source model's size",
                   size_bytes=size, source_bytes=source_bytes)]


# a target that times the FP32, FP16 and INT8 models side by side in its own runtime: latency key
SIDE_BY_SIDE = {"litert": "LiteRT", "ncnn": "ncnn"}


def latency_ratio(lat: dict, precision: str) -> tuple[float, float, str]:
    """(artifact time / FP32 time, the artifact's median ms, where) in the artifact's own runtime:
    the side-by-side timing of its runtime (LiteRT, ncnn) when there is one, else the verification
    timing (x86, cuda: artifact and FP32 both in onnxruntime). NaN when not measured. The table,
    the JSON summary and ``--max-latency-ratio`` all read this one figure."""
    for key, label in SIDE_BY_SIDE.items():
        side = lat.get(key)
        if isinstance(side, dict) and isinstance(side.get(precision), dict) and side.get("fp32"):
            ms, ref = side[precision].get("median_ms"), side["fp32"].get("median_ms")
            where = f"{label} side by side, {side.get('threads')} threads"
            break
    else:
        art = lat.get("artifact" if precision == "fp32" else precision) or {}
        ms, ref = art.get("median_ms"), (lat.get("fp32") or {}).get("median_ms")
        where = lat.get("measured_on") or "its runtime"
    try:
        ratio = ms / ref if ref > 0 else float("nan")
    except TypeError:
        ratio, ms = float("nan"), float("nan") if ms is None else ms
    return ratio, ms, where


def _latency(v, b: Budgets) -> list[dict]:
    lat, limit, name = v["latency"], b.max_latency_ratio, v["name"]
    ratio, _, where = latency_ratio(lat, v["precision"])
    ratio = round(ratio, 4) if math.isfinite(ratio) else ratio  # the message shows the recorded value
    ok = math.isfinite(ratio) and ratio <= limit
    out = [_entry("max_latency_ratio", name, ratio if math.isfinite(ratio) else None,
                  limit, ok, f"{name} latency {_above(ratio, limit)}× FP32 ({where}) > "
                  f"--max-latency-ratio {limit}", measure=f"artifact / FP32 median time, {where}",
                  figure="wall_time")]
    insns = lat.get("arm_insns")  # the emulated ARM instruction counts, when --verify-arm ran
    if isinstance(insns, dict):
        prec = v["precision"]
        for cpu, per in insns.items():
            if not isinstance(per, dict) or not per.get("fp32") or prec not in per:
                continue
            r = round(per[prec] / per["fp32"], 4)  # the message shows the recorded value
            out.append(_entry(
                "max_latency_ratio", name, r, limit, r <= limit,
                f"{name} ARM instructions {_above(r, limit)}× FP32 on {cpu} (emulated) > "
                f"--max-latency-ratio {limit}",
                measure=f"artifact / FP32 guest instructions per inference on {cpu} (emulated)",
                figure="arm_instructions", cpu=cpu))
    return out


def evaluate(artifacts, budgets: Budgets, source_bytes: int | None = None) -> list[dict]:
    """One entry per budget given and artifact (``Artifact`` objects or report dicts)."""
    out: list[dict] = []
    for a in artifacts:
        v = _view(a)
        if budgets.min_cosine is not None:
            out += _cosine(v, budgets)
        if budgets.max_drop is not None:
            out += _drop(v, budgets)
        if budgets.max_size is not None:
            out += _size(v, budgets, source_bytes)
        if budgets.max_latency_ratio is not None:
            out += _latency(v, budgets)
    return out


def failure_lines(entries: list[dict]) -> list[str]:
    """One line per failed budget."""
    return [f"quality gate {e['option']} failed: {e['message']}" for e in entries if not e["passed"]]


def quality_gate(artifacts, min_cosine: float | None, max_drop: float | None,
                 max_size: str | None = None, max_latency_ratio: float | None = None,
                 source_bytes: int | None = None, min_cosine_of: str = "min") -> dict | None:
    """The report's ``quality_gate`` record (None when no budget is set): the limits, ``gates``
    (:func:`evaluate`), ``lines`` (one per failure), ``passed`` and a one-line ``message``.
    Flagged outputs are warned whether or not a gate is set."""
    from autoglm_compress.metrics import flag_messages

    views = [_view(a) for a in artifacts]
    for v in views:
        for m in flag_messages(v["fidelity"], v["name"]):
            logger.warning("verification: %s", m)
    budgets = Budgets(min_cosine, max_drop, max_size, max_latency_ratio, min_cosine_of)
    if not budgets.given():
        return None
    entries = evaluate(artifacts, budgets, source_bytes)
    gate = {"min_cosine": min_cosine, "max_drop": max_drop, "max_size": max_size,
            "max_latency_ratio": max_latency_ratio}
    if min_cosine is not None:
        from autoglm_compress.metrics import gated_cosine

        gate["min_cosine_of"] = min_cosine_of
        gate["worst_cosine"] = min(gated_cosine(v["fidelity"], min_cosine_of) for v in views)
    if max_drop is not None:
        drops = {e["artifact"]: e["value"] for e in entries
                 if e["name"] == "max_drop" and e["value"] is not None}
        if drops:
            gate["accuracy_drop"] = drops
    lines = failure_lines(entries)
    gate.update(passed=not lines, gates=entries, lines=lines)
    gate["message"] = "; ".join(lines) + " (report: report.json)" if lines else "passed"
    return gate

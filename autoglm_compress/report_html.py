"""report.html: report.json for a person — one self-contained page written beside it.

No network and no script: styles inline, charts inline SVG (``report_svg``), a Content-Security-
Policy that allows neither. Every string from the report is escaped (model, node and output names
are the user's). It reads only the report dict, so it shows what the report holds and says so
where a figure is absent. Sections: summary (sizes, ratios, cosine, latency), gates, warnings,
fidelity per output, latency per runtime, per-layer error per target (``report_html_layers``),
float layers and why, passes, pruning/distillation.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from autoglm_compress.ir_utils import write_bytes_atomic
from autoglm_compress.metrics import flag_messages
from autoglm_compress.report import json_summary
from autoglm_compress.report_html_layers import (
    latency_section,
    layers_section,
    name_of,
    sqnr_section,
    training_section,
)
from autoglm_compress.report_svg import Raw, esc, table

__all__ = ["REPORT_HTML", "render_html", "write_html"]

logger = logging.getLogger(__name__)

REPORT_HTML = "report.html"
_CSS = """body{font:14px/1.45 sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ddd;margin-top:1.8em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.n{text-align:right;
font-variant-numeric:tabular-nums}.pass{color:#1e7e34;font-weight:bold}.fail{color:#c0392b;
font-weight:bold}.warn{background:#fff4e0;border-left:4px solid #e07b24;padding:4px 8px;
margin:3px 0}.muted{color:#666}.t{overflow-x:auto}code{background:#f5f5f5;padding:0 3px;word-break:break-all}"""
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _size(n) -> str:
    if not isinstance(n, (int, float)):
        return "–"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def _header(r: dict) -> str:
    m, run, tool = r.get("model") or {}, r.get("run") or {}, r.get("tool") or {}
    ver, cal = r.get("verification") or {}, r.get("calibration") or {}
    cmd = run.get("command")
    stats = m.get("stats_before") or m.get("stats") or {}
    after = m.get("stats_after") or {}
    rows = [("model", m.get("path")), ("format", m.get("format")),
            ("source size", f"{_size(m.get('size_bytes'))} ({m.get('size_bytes')} bytes)"),
            ("parameters", f"{stats.get('params', '–'):,}" if isinstance(stats.get("params"), int)
             else None),
            ("parameters after passes", f"{after['params']:,}"
             if isinstance(after.get("params"), int) else None),
            ("command", "autoglm-compress " + shlex.join(map(str, cmd)) if cmd else
             ("recipe" if run.get("recipe") else None)),
            ("verified on", f"{ver.get('samples')} {ver.get('source')} samples, reference: "
                            f"{ver.get('reference')}"),
            ("calibration", ", ".join(f"{k} {cal[k]}" for k in ("source", "kind", "method",
                                                                  "samples") if k in cal) or None),
            ("run", f"{run.get('timestamp')} · {r.get('seconds')} s · id {run.get('id')}"),
            ("runtimes", ", ".join(f"{k} {v}" for k, v in (run.get("runtimes") or {}).items())),
            ("tool", f"{tool.get('name')} {tool.get('version')} · report schema "
                     f"{r.get('schema_version')}")]
    return table(None, [(k, v) for k, v in rows if v is not None])


def _summary(r: dict) -> str:
    s = json_summary(r, None, 0)
    src = (s.get("source") or {}).get("size_bytes")
    rows = []
    for a, j in zip(r.get("artifacts") or [], s["artifacts"]):
        lat = a.get("latency") or {}
        ms = (lat.get(a.get("precision")) or {}).get("median_ms")
        ratio = j.get("latency_ratio_vs_fp32")
        rows.append((name_of(a), a.get("target"), j.get("format"), a.get("precision"),
                     a.get("runtime"), _size(a.get("size_bytes")), a.get("size_bytes"),
                     None if j["size_ratio_vs_source"] is None
                     else f"{j['size_ratio_vs_source']:.3f}×",
                     j.get("cosine_min"), _acc(j), ms,
                     None if not ratio else f"{1 / ratio:.2f}× ({j.get('latency_measured_on')})"))
    head = ("artifact", "target", "format", "precision", "runtime", "size", "bytes",
            "size vs source", "worst cosine vs FP32", "accuracy (FP32)", "latency ms",
            "speed vs FP32")
    return (f"<p>Source model: <b>{esc(_size(src))}</b> ({esc(src)} bytes).</p>"
            + table(head, rows, numeric=(6, 7, 8, 10)))


def _acc(j: dict):
    if j.get("accuracy") is None:
        return None
    return f"{j['accuracy']:.4f} ({j.get('accuracy_fp32', float('nan')):.4f})"


# --max-latency-ratio: which figure a gate compared (report.json's gates[].figure)
_FIGURE = {"wall_time": "median time", "arm_instructions": "instructions, {cpu} (emulated)"}


def _gates(r: dict) -> str:
    gates = r.get("gates") or []
    if not gates:
        return '<p class="muted">No budget was given (--min-cosine, --max-drop, --max-size, ' \
               "--max-latency-ratio).</p>"
    rows = [(g.get("option"), g.get("artifact"),
             _FIGURE.get(g.get("figure"), "").replace("{cpu}", str(g.get("cpu"))),
             g.get("value"), g.get("limit"),
             Raw('<span class="pass">PASS</span>' if g.get("passed")
                 else '<span class="fail">FAIL</span>'),
             g.get("message") if not g.get("passed") else g.get("measure")) for g in gates]
    failed = sum(not g.get("passed") for g in gates)
    return (f"<p>{len(gates) - failed} of {len(gates)} passed.</p>"
            + table(("budget", "artifact", "figure", "value", "limit", "result", "detail"), rows,
                    numeric=(3, 4)))


def _warnings(r: dict) -> list[str]:
    out = list(r.get("warnings") or [])
    for sec in ("verification", "calibration"):
        d = r.get(sec) or {}
        out += [d[k] for k in ("warning", "preprocess_warning") if d.get(k)]
    for a in r.get("artifacts") or []:
        out += flag_messages(a.get("fidelity") or {}, name_of(a))
        out += [f"{name_of(a)}: {n}" for n in a.get("notes") or ()]
        layers = a.get("layers") or {}
        if (a.get("precision") == "int8" and layers and layers.get("int8", 1) == 0
                and not layers.get("weight_only_nodes")):
            out.append(f"{name_of(a)} is labelled int8 but no layer runs in int8")
    qg = r.get("quality_gate") or {}
    if qg.get("passed") is False and qg.get("message"):
        out.append(qg["message"])
    return out


_KNOWN = ("cosine", "cosine_min", "cosine_min_sample", "cosine_mean", "cosine_pooled", "max_abs_err", "mean_abs_err", "top1_agreement", "accuracy", "accuracy_ref")


def _fid_rows(name: str, where: str, fid: dict, cols: list[str]):
    for out, m in (fid.get("outputs") or {}).items():
        yield (name, where, out, *[m.get(c) for c in cols], m.get("flags") or None)


def _fidelity(r: dict) -> str:
    arts = r.get("artifacts") or []
    sets = []  # (artifact, where, fidelity dict)
    for a in arts:
        fid = a.get("fidelity") or {}
        sets.append((name_of(a), a.get("runtime", ""), fid))
        for k, sub in fid.items():  # e.g. aarch64: the same figures on ARM code under qemu
            if isinstance(sub, dict) and isinstance(sub.get("outputs"), dict):
                sets.append((name_of(a), sub.get("runtime") or k, sub))
    keys = {k for _, _, f in sets for m in (f.get("outputs") or {}).values() if isinstance(m, dict)
            for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    cols = [c for c in _KNOWN if c in keys] + sorted(keys - set(_KNOWN))
    rows = [row for n, w, f in sets for row in _fid_rows(n, w, f, cols)]
    scalars = [(n, w, k, v) for n, w, f in sets for k, v in f.items()
               if k not in ("outputs", "flagged") and not isinstance(v, (bool, list))
               and not (isinstance(v, dict) and ("outputs" in v or not v))]
    return (table(("artifact", "runtime", "output", *cols, "flags"), rows,
                  numeric=tuple(range(3, 3 + len(cols))))
            + "<p>Per artifact and runtime (worst over its outputs and samples):</p>"
            + table(("artifact", "runtime", "figure", "value"), scalars, numeric=(3,)))


def _passes(r: dict) -> str:
    rows = []
    for p in r.get("passes") or []:
        st = p.get("stats") or {}
        changes = ", ".join(f"{k} {v}" for k, v in st.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool) and v)
        lists = ", ".join(f"{k}: {len(v)}" for k, v in st.items() if isinstance(v, list) and v)
        rows.append((p.get("name"), p.get("modified"), p.get("seconds"),
                     "; ".join(x for x in (changes, lists) if x) or None,
                     {k: v for k, v in (p.get("config") or {}).items() if v not in (None, [], {})}
                     or None))
    return table(("pass", "changed the model", "seconds", "changes (counts)", "settings"), rows,
                 numeric=(2,))


def render_html(report: dict) -> str:
    """The page for ``report`` (a report.json dict)."""
    r = report
    title = f"autoglm-compress: {Path(str((r.get('model') or {}).get('path', '?'))).name}"
    warns = _warnings(r)
    parts = [
        ("Summary", _header(r) + _summary(r)),
        ("Gates", _gates(r)),
        ("Warnings and notes", "".join(f'<div class="warn">{esc(w)}</div>' for w in warns)
         or '<p class="muted">None.</p>'),
        ("Fidelity vs FP32", _fidelity(r)),
        ("Latency", latency_section(r)),
        ("Per-layer error (SQNR) per target", sqnr_section(r)),
        ("Layers left in float, and why", layers_section(r)),
        ("Passes", _passes(r)),
        ("Pruning and distillation", training_section(r)),
    ]
    nav = " · ".join(f'<a href="#s{i}">{esc(h)}</a>' for i, (h, _) in enumerate(parts))
    body = "".join(f'<h2 id="s{i}">{esc(h)}</h2>{b}' for i, (h, b) in enumerate(parts))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{esc(title)}</h1><p>{nav}</p>{body}"
            '<p class="muted">Written from report.json (the machine-readable record) by the same '
            "run.</p></body></html>\n")


def write_html(report: dict, path: Path) -> Path:
    """``render_html(report)`` written atomically to ``path``. A page that fails to render (a
    bug) must not cost the run its artifacts: the page then says so and points at report.json."""
    try:
        text = render_html(report)
    except Exception as e:  # noqa: BLE001 - see above; logged, the page names the error
        logger.warning("report.html could not be rendered (%s: %s); report.json is complete",
                       type(e).__name__, e)
        text = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>report"
                f"</title></head><body><p>This page could not be rendered ({esc(type(e).__name__)}"
                f": {esc(e)}); report.json beside it holds the run's results.</p></body></html>\n")
    return write_bytes_atomic(path, text.encode("utf-8"))

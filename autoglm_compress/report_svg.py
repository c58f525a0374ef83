"""Markup for report.html: escaping, tables, and inline SVG charts (horizontal bar groups, line
curves), as text.

No script, no external font or style: each chart is one ``<svg>`` element sized in pixels. Every
label goes through :func:`esc` (model, node and output names come from the user's model); a
label cut to fit keeps its full text in a ``<title>`` (the browser's tooltip).
"""

from __future__ import annotations

import html
import json
import math

__all__ = ["COLORS", "Raw", "bar_groups", "cell", "esc", "line_chart", "table"]

COLORS = {"fp32": "#8c8c8c", "fp16": "#3b75c4", "int8": "#e07b24", "low": "#c0392b",
          "training batch loss": "#3b75c4", "held-out loss": "#e07b24"}
_PALETTE = ("#3b75c4", "#e07b24", "#3a9a5b", "#8e5bb5", "#c0392b", "#8c8c8c")
_FONT = 'font-family="sans-serif" font-size="12"'


def esc(s) -> str:
    """``s`` as HTML/SVG text or attribute value (quotes escaped too)."""
    return html.escape(str(s), quote=True)


class Raw(str):
    """Markup made here (already escaped): ``cell`` passes it through."""


def cell(v) -> str:
    if isinstance(v, Raw):
        return v
    if v is None:
        return '<span class="muted">–</span>'
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return esc(", ".join(str(x) for x in v))
    if isinstance(v, dict):
        return f"<code>{esc(json.dumps(v, default=str))}</code>"
    return esc(v)


def table(head, rows, numeric=()) -> str:
    """An HTML table (scrolls sideways when wider than the page); ``head`` None: no header row;
    ``numeric``: column indexes right-aligned."""
    th = "" if head is None else "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{cell(v)}</td>'
                         for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="t"><table>{th}{body}</table></div>'


def _num(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else "…" + s[-(n - 1):]


def bar_groups(groups, unit: str, *, width: int = 640, label_chars: int = 28,
               own_scale: bool = False) -> str:
    """Horizontal bars: ``groups`` = [(heading, [(label, value or None, color key)])]. A None
    value draws no bar and says "not measured" (or the color key when it is not a color name:
    the reason). Bars share one scale from 0 to the largest value; ``own_scale``: each group
    its own (figures compared within a group only, e.g. one runtime's FP32 / INT8 times)."""

    def peak(rows):
        return max([v for _, v, _ in rows if _finite(v) and v > 0], default=1.0)

    top = max([peak(rows) for _, rows in groups], default=1.0)
    left, right, row_h = 8 + 7 * label_chars, 70, 18
    span = width - left - right
    out, y = [], 4
    for heading, rows in groups:
        scale = peak(rows) if own_scale else top
        if heading:
            out.append(f'<text x="4" y="{y + 13}" font-weight="bold">{esc(heading)}</text>')
            y += row_h
        for label, v, key in rows:
            text = str(label)
            out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">'
                       f'<title>{esc(text)}</title>{esc(_cut(text, label_chars))}</text>')
            if _finite(v):
                w = max(span * max(v, 0.0) / scale, 1.0)
                color = COLORS.get(key, _PALETTE[sum(map(ord, str(key))) % len(_PALETTE)])
                out.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
                           f'fill="{color}"><title>{esc(text)}: {esc(_num(v))} {esc(unit)}'
                           f'</title></rect>')
                out.append(f'<text x="{left + w + 4:.1f}" y="{y + 13}">{esc(_num(v))}</text>')
            else:
                why = key if key not in COLORS else "not measured"
                out.append(f'<text x="{left + 4}" y="{y + 13}" fill="#666" font-style="italic">'
                           f'{esc(why)}</text>')
            y += row_h
    axis = (f'<text x="{left}" y="{y + 14}" fill="#666">'
            + (f"{esc(unit)}; each group on its own scale" if own_scale
               else f"0 … {esc(_num(top))} {esc(unit)}") + "</text>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y + 22}" '
            f'role="img" {_FONT}>' + "".join(out) + axis + "</svg>")


def line_chart(series, xlabel: str, ylabel: str, *, width: int = 640, height: int = 220) -> str:
    """Curves ``series`` = [(name, [(x, y), …])] on shared axes (linear), with a legend."""
    pts = [(x, y) for _, s in series for x, y in s if _finite(x) and _finite(y)]
    if not pts:
        return ""
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(0.0, min(p[1] for p in pts)), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    ml, mr, mt, mb = 56, 12, 24, 36
    w, h = width - ml - mr, height - mt - mb

    def px(x, y):
        return ml + w * (x - x0) / (x1 - x0), mt + h * (1 - (y - y0) / (y1 - y0))

    out = [f'<rect x="{ml}" y="{mt}" width="{w}" height="{h}" fill="none" stroke="#bbb"/>',
           f'<text x="{ml - 4}" y="{mt + 4}" text-anchor="end">{esc(_num(y1))}</text>',
           f'<text x="{ml - 4}" y="{mt + h}" text-anchor="end">{esc(_num(y0))}</text>',
           f'<text x="{ml}" y="{mt + h + 14}">{esc(_num(x0))}</text>',
           f'<text x="{ml + w}" y="{mt + h + 14}" text-anchor="end">{esc(_num(x1))}</text>',
           f'<text x="{ml + w / 2}" y="{height - 4}" text-anchor="middle">{esc(xlabel)}</text>',
           f'<text x="4" y="14">{esc(ylabel)}</text>']
    for k, (name, s) in enumerate(series):
        color = COLORS.get(name, _PALETTE[k % len(_PALETTE)])
        xy = [px(x, y) for x, y in s if _finite(x) and _finite(y)]
        if not xy:
            continue
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{color}"/>' for a, b in xy]
        lx = ml + 120 + 170 * k
        out.append(f'<rect x="{lx}" y="5" width="10" height="10" fill="{color}"/>'
                   f'<text x="{lx + 14}" y="14">{esc(name)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img" {_FONT}>' + "".join(out) + "</svg>")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

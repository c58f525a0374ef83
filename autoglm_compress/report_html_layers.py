"""report.html sections drawn from the per-target records: latency per runtime, per-layer SQNR
per target, the layers left in float and why, pruning and distillation (see ``report_html``)."""

from __future__ import annotations

import math
from pathlib import Path

from autoglm_compress.report_svg import bar_groups, esc, line_chart, table

__all__ = ["latency_section", "layers_section", "name_of", "runtime_paragraph", "sqnr_section",
           "training_section"]

PRECISIONS = ("fp32", "fp16", "int8")
LOW_SQNR_DB = 20.0  # below this a layer's bar is drawn red (error ≥ 1 % of the signal's power)


def name_of(a: dict) -> str:
    return Path(str(a.get("path", "?"))).name


def _ms(side: dict) -> list:
    return [(p, side[p]["median_ms"], p) for p in PRECISIONS
            if isinstance(side.get(p), dict) and "median_ms" in side[p]]


def latency_section(r: dict) -> str:
    groups, insns = [], []
    for a in r.get("artifacts") or []:
        lat, name = a.get("latency") or {}, name_of(a)
        if _ms(lat):
            groups.append((f"{name} · {lat.get('measured_on', a.get('runtime', ''))}", _ms(lat)))
        for key, side in lat.items():
            if isinstance(side, dict) and key not in PRECISIONS and key != "arm_insns" \
                    and _ms(side):
                threads = f", {side['threads']} threads" if side.get("threads") else ""
                groups.append((f"{name} · {key} side by side{threads}", _ms(side)))
        for cpu, per in (lat.get("arm_insns") or {}).items():
            if isinstance(per, dict):
                insns.append((f"{name} · {cpu} (qemu-aarch64)",
                              [(p, per[p], p) for p in PRECISIONS if p in per]))
    if not groups:
        return '<p class="muted">No latency was measured.</p>'
    out = ("<p>Median milliseconds per inference, FP32 / FP16 / INT8 of the same model in the "
           "same runtime (shorter is faster).</p>" + bar_groups(groups, "ms", own_scale=True))
    if insns:
        out += ("<p>Guest instructions per inference on emulated ARM CPUs (one thread; a count, "
                "not a time).</p>" + bar_groups(insns, "instructions", own_scale=True))
    return out


def quantize_record(r: dict, a: dict) -> dict | None:
    """The ``quantize[<target>]`` pass record that made int8 artifact ``a``: the k-th such record
    for the k-th int8 artifact of that target (the run quantizes once per artifact format)."""
    target = a.get("target")
    fmt = (a.get("extra") or {}).get("format")
    tags = {f"quantize[{target}]", f"quantize[{target}/{fmt}]"}  # arm records carry the format
    recs = [p for p in r.get("passes") or [] if p.get("name") in tags]
    mine = [x for x in r.get("artifacts") or [] if x.get("target") == target
            and (x.get("extra") or {}).get("format") == fmt and x.get("precision") == "int8"]
    k = next((i for i, x in enumerate(mine) if x is a), None)
    return recs[k] if k is not None and k < len(recs) else None


def sqnr_section(r: dict) -> str:
    out = [f"<p>SQNR = 10·log10(Σy² / Σ(y − ŷ)²) in dB of each quantized layer's output: the "
           "target's quantized model (its own INT8 scheme, as QDQ maths in onnxruntime) against "
           "the FP32 model, on up to 8 held-out calibration samples. The error is cumulative "
           "(each layer sees the previous layers' error); a drop from one layer to the next "
           f"shows where a target loses accuracy. Red: below {LOW_SQNR_DB:g} dB. FP16 "
           "artifacts: the same measure, each tensor read in the artifact's runtime.</p>"]
    for a in r.get("artifacts") or []:
        name = name_of(a)
        if a.get("precision") == "fp16":
            out.append(f"<h3>{esc(name)} <span class=muted>({esc(a.get('target'))}, FP16)"
                       "</span></h3>" + runtime_paragraph(a))
            continue
        if a.get("precision") != "int8":
            out.append(f"<p><b>{esc(name)}</b>: {esc(a.get('precision'))} — no per-layer "
                       "figure (measured for INT8 and FP16 artifacts).</p>")
            continue
        rec = quantize_record(r, a)
        st = (rec or {}).get("stats") or {}
        rows = [_sqnr_row(x, "not measured") for x in st.get("layers") or []]
        rows += [(x.get("node"), None, f"FP32 ({x.get('reason')})")
                 for x in st.get("layers_fp32") or []]
        scheme = ((rec or {}).get("config") or {}).get("scheme", "")
        out.append(f"<h3>{esc(name)} <span class=muted>({esc(a.get('target'))}, scheme "
                   f"{esc(scheme or '?')})</span></h3>")
        if not any(v is not None for _, v, _ in rows):
            why = ("no quantize record for it in the report" if rec is None else
                   "no held-out calibration samples to measure it on" if st.get("layers")
                   else "no layer of this model was quantized")
            out.append(f"<p class=muted>Per-layer SQNR not available: {esc(why)}.</p>")
        else:
            out.append(bar_groups([("QDQ simulation (onnxruntime), per quantized layer", rows)],
                                  "dB", label_chars=40))
        out.append(runtime_paragraph(a))
        fb = st.get("fallback")
        if isinstance(fb, dict) and fb.get("ranking"):
            out.append(f"<p>--min-cosine fallback: target {esc(fb.get('target'))}, reached "
                       f"{esc(fb.get('reached'))}; layers ranked by the output cosine with that "
                       "layer alone quantized (worst first):</p>"
                       + table(("layer", "isolated cosine"),
                               [(x.get("node"), x.get("isolated_cosine"))
                                for x in fb["ranking"]], numeric=(1,)))
    return "".join(out)


def _sqnr_row(x: dict, none_means: str, key: str = "int8") -> tuple:
    """A bar: layer (op), SQNR; red below LOW_SQNR_DB; no bar for +inf (no error) or None."""
    v, label = x.get("sqnr_db"), f"{x.get('node')} ({x.get('op')})"
    if v is None or (isinstance(v, float) and math.isinf(v) and v > 0):
        return label, None, none_means if v is None else "no error (identical)"
    return label, v, "low" if v < LOW_SQNR_DB else key


def _worst(le: dict) -> str:
    """The layers where the error arises (``layer_error.worst``), worst first."""
    items = [f"{esc(' → '.join(map(str, w.get('nodes') or [w.get('node')])))} "
             f"({esc(w.get('op'))}): {esc(w.get('sqnr_db'))} dB, from "
             + ("exact inputs" if w.get("input_sqnr_db") is None
                else f"{esc(w.get('input_sqnr_db'))} dB at its inputs")
             for w in le.get("worst") or []]
    return ("<p>Worst layers (where the SQNR falls most, worst first): " + "; ".join(items)
            + ".</p>") if items else ""


def runtime_paragraph(a: dict) -> str:
    """The same measure read in the artifact's own runtime (``extra.layer_error``), or why not."""
    extra = a.get("extra") or {}
    sim = (extra.get("vs_qdq_simulation") or {}).get("cosine_min")
    le = extra.get("layer_error") or {}
    if a.get("target") in ("x86", "cuda") and a.get("precision") == "int8":
        return ("<p class=muted>This artifact is the QDQ model itself: the figures above are its "
                "own (before onnxruntime's graph fusions).</p>")
    ort8 = (extra.get("vs_qdq_simulation_ort_int8") or {}).get("cosine_min")
    out = ("" if sim is None else f"<p class=muted>The artifact's outputs agree with the QDQ "
           f"simulation with cosine {esc(f'{sim:.6f}')}"
           + ("" if ort8 is None else f" (onnxruntime's own int8 kernels: {esc(f'{ort8:.6f}')}, "
              f"{esc(extra['vs_qdq_simulation_ort_int8'].get('host_cpu'))} CPU)") + ".</p>")
    key = "fp16" if a.get("precision") == "fp16" else "int8"
    rows = [_sqnr_row(t, "no error (identical)", key) for t in le.get("tensors") or []]
    if rows:
        runtime, skipped = str(le.get("runtime", "?")), le.get("not_compared")
        short = runtime.split()[0] if runtime.split() else runtime
        return out + bar_groups([(f"in the artifact's runtime: {short}, per tensor", rows)], "dB",
                                label_chars=40) + _worst(le) + (
            f"<p class=muted>Read in {esc(runtime)} on {esc(le.get('samples'))} samples: each "
            "tensor the artifact shares with the FP32 model (same name)"
            + (f"; {esc(skipped)} more not compared (no FP32 tensor of that shape, or int8 "
               "codes)" if skipped else "") + ".</p>")
    why = le.get("error") or "the report has no per-tensor figures for this artifact's runtime"
    return out + f"<p class=muted>Not measured in the artifact's own runtime: {esc(why)}.</p>"


def layers_section(r: dict) -> str:
    out = []
    for a in r.get("artifacts") or []:
        name, layers = name_of(a), a.get("layers") or {}
        extra = a.get("extra") or {}
        rec = quantize_record(r, a) if a.get("precision") == "int8" else None
        rows, seen = [], set()
        for x in ((rec or {}).get("stats") or {}).get("layers_fp32") or []:
            why = ("kept by --keep-fp32" if x.get("reason") == "--keep-fp32" else
                   "returned to FP32 by the --min-cosine fallback (worst first)"
                   if x.get("reason") == "fallback" else x.get("reason"))
            rows.append((x.get("node"), None, why, None, None))
            seen.add(x.get("node"))
        for f in (extra.get("tflite_ops") or {}).get("float_ops") or []:
            rows.append((f.get("node") or None, f.get("op"), f.get("reason"), f.get("macs"),
                         f.get("weight_bytes")))
            seen.add(f.get("node"))
        for n in layers.get("float_nodes") or []:
            if n not in seen:
                rows.append((n, None, f"float in the artifact ({layers.get('counted_from')})",
                             None, None))
        head = (f"<h3>{esc(name)}</h3><p>{esc(a.get('precision'))}: {esc(layers.get('int8', '–'))}"
                f" int8 and {esc(layers.get('float', '–'))} float layers, counted from "
                f"{esc(layers.get('counted_from', '–'))}")
        share = layers.get("float_mac_share")
        head += (f"; float share of the MACs {share:.1%}" if isinstance(share, float) else "")
        out.append(head + ".</p>")
        if rows:
            out.append(table(("layer", "op", "why float", "MACs", "float weight bytes"), rows,
                             numeric=(3, 4)))
    return "".join(out) or '<p class="muted">No artifact.</p>'


_CURVES = {"loss_curve": "training batch loss", "heldout_curve": "held-out loss"}


def training_section(r: dict) -> str:
    out = []
    for p in r.get("passes") or []:  # distill, and any pass that records *_curve
        st, name = p.get("stats") or {}, str(p.get("name"))
        if name == "prune":
            out.append(_prune(st))
        curves = [(_CURVES.get(k, k.removesuffix("_curve")), v)
                  for k, v in st.items() if k.endswith("_curve") and isinstance(v, list)]
        losses = [(k, st[k]) for k in ("loss_before", "loss_after", "heldout_loss_before",
                                       "heldout_loss_after", "kept_step", "steps", "lr_tried")
                  if k in st]
        if losses:
            out.append(f"<h3>{esc(name)}</h3>" + table(("figure", "value"), losses, numeric=(1,)))
        if curves:
            pts = [(n, [(x, y) for x, y in v]) for n, v in curves]
            loss = str(st.get("loss", "loss"))
            if loss == "normalised mse" or len(pts) < 2:  # one scale: one chart
                out.append(line_chart(pts, "step", loss))
            else:  # the held-out loss is normalised MSE whatever the training minimised
                out += [line_chart([c], "step", loss if c[0] == _CURVES["loss_curve"]
                                   else "normalised mse") for c in pts]
        elif losses:
            out.append("<p class=muted>No per-step curve in the report (before/after only).</p>")
    return "".join(out) or '<p class="muted">Neither pruning nor distillation ran.</p>'


def _prune(st: dict) -> str:
    figs = [(k, st[k]) for k in ("importance", "params_before", "params_after", "macs_before",
                                 "macs_after", "groups_pruned", "groups_frozen") if k in st]
    groups = [(", ".join(g.get("sources") or []) or None, g.get("channels"), g.get("kept"))
              for g in st.get("groups") or [] if isinstance(g, dict)]
    frozen = [(", ".join(g.get("values") or []), g.get("channels"), ", ".join(g.get("why") or []))
              for g in st.get("frozen") or [] if isinstance(g, dict)]
    out = "<h3>prune</h3>" + table(("figure", "value"), figs, numeric=(1,))
    if groups:
        out += table(("channels of", "channels", "kept"), groups, numeric=(1, 2))
    if frozen:
        out += "<p>Left whole:</p>" + table(("values", "channels", "why"), frozen, numeric=(1,))
    return out

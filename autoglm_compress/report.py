"""report.json (machine-readable, versioned: ``report_schema.json`` beside this file describes it)
and the short summary table printed at the end of a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

from autoglm_compress.gates import latency_ratio
from autoglm_compress.ir_utils import write_bytes_atomic
from autoglm_compress.metrics import accuracy_output, flag_messages

__all__ = ["REPORT_SCHEMA_VERSION", "json_summary", "schema", "summary_table", "validate_report",
           "write_report"]

REPORT_SCHEMA_VERSION = "2.2"
SCHEMA_PATH = Path(__file__).with_name("report_schema.json")


def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_report(report: dict) -> None:
    """Raise ``jsonschema.ValidationError`` when ``report`` does not follow the schema."""
    import jsonschema

    jsonschema.validate(json.loads(json.dumps(report, default=str)), schema())


def write_report(report: dict, path: Path) -> Path:
    return write_bytes_atomic(path, (json.dumps(report, indent=2, default=str) + "\n").encode())


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def summary_table(report: dict) -> str:
    src = (report.get("model") or {}).get("size_bytes") or 0
    rows = [("artifact", "size", "vs source", "cosine min@sample", "cosine mean", "max|err|", "top-1|NN",
             "acc", "latency", "vs fp32")]
    flagged: list[str] = []
    footnotes: list[str] = []
    for a in report["artifacts"]:
        fid = a.get("fidelity", {})
        outs = list(fid.get("outputs", {}).values())
        scored = accuracy_output(fid)
        cls = scored[1] if scored else next((m for m in outs if "top1_agreement" in m), {})
        ratio, ms, _ = latency_ratio(a.get("latency", {}), a["precision"])
        acc = cls.get("accuracy")
        acc_s = "-" if acc is None else f"{acc:.3f} ({cls['accuracy_ref']:.3f})"
        top1 = cls.get("top1_agreement")
        nn = next((m["nn_agreement"] for m in outs if "nn_agreement" in m), None)
        agree = "-" if top1 is None else f"{top1:.3f}"
        if top1 is None and nn is not None:
            agree = f"{nn:.3f} NN"
        max_err = max((m.get("max_abs_err", float("nan")) for m in outs), default=float("nan"))
        name = Path(a["path"]).name
        flagged += flag_messages(fid, name)
        footnotes += _footnotes(a, name) + _hidden_sample_warning(fid, name)
        rows.append(
            (
                Path(a["path"]).name + (" (+.bin)" if len(a.get("files") or {}) > 1 else ""),
                _fmt_size(a["size_bytes"]),
                f"{a['size_bytes'] / src:.2f}×" if src else "-",
                _cos_at(fid),
                f"{fid.get('cosine_mean', float('nan')):.5f}",
                f"{max_err:.3g}",
                agree,
                acc_s,
                f"{ms:.3f} ms",
                _speed(1.0 / ratio if ratio > 0 else float("nan")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m = report["model"]
    head = (
        f"{m['path']}: {m['format']}, {m['stats']['params']:,} params, "
        f"passes: {', '.join(p['name'] for p in report['passes']) or 'none'}; "
        f"verified on {report['verification']['samples']} {report['verification']['source']} samples"
    )
    lines += [f"flagged: {f}" for f in flagged] + footnotes + _latency_legend(report)
    for warn in ((report.get("verification") or {}).get("warning"),
                 (report.get("calibration") or {}).get("preprocess_warning")):
        if warn:
            lines.append(f"WARNING: {warn}")
    gates = report.get("gates") or []
    if gates:
        failed = sum(not g["passed"] for g in gates)
        lines.append(f"gates: {len(gates) - failed} of {len(gates)} passed"
                     + (f", {failed} failed (listed below)" if failed else ""))
    return head + "\n" + "\n".join(lines)


_RESHAPING = ("prune", "distill", "sparsify")  # passes after which "the FP32 model" is ambiguous


def _latency_legend(report: dict) -> list[str]:
    """What each row's "vs fp32" is measured against, when a pass changed the FP32 graph (pruned,
    retrained): onnxruntime rows against the model as loaded, LiteRT / ncnn rows against this run's
    FP32 graph in their runtime, timed side by side — two different baselines after a prune."""
    ran = {p["name"].split("[")[0] for p in report.get("passes") or []}
    if not ran & set(_RESHAPING):
        return []
    parts = []
    for a in report["artifacts"]:
        ratio, _, where = latency_ratio(a.get("latency", {}), a["precision"])
        if not math.isfinite(ratio):
            continue
        side = "side by side" in where
        basis = (f"this run's FP32 graph (after {', '.join(sorted(ran & set(_RESHAPING)))}) in {where}"
                 if side else f"the FP32 model as loaded, in {where}")
        parts.append(f"{Path(a['path']).name} against {basis}")
    return [f"vs fp32: {'; '.join(parts)}"] if parts else []


HIDDEN_MIN, HIDDEN_MEAN = 0.9, 0.99  # a sample this far off while the mean looks this good


def _cos_at(fid: dict) -> str:
    """The worst sample's cosine and where: ``0.61234 @7`` (``@7 out_b`` with several outputs)."""
    cos, worst = fid.get("cosine_min", float("nan")), fid.get("worst") or {}
    if worst.get("sample") is None:
        return f"{cos:.5f}"
    many = len(fid.get("outputs") or {}) > 1
    return f"{cos:.5f} @{worst['sample']}" + (f" {worst['output']}" if many else "")


def _hidden_sample_warning(fid: dict, name: str) -> list[str]:
    """A WARNING when one verification sample is far from FP32 (min < 0.9) while the mean over
    samples still reads fine (≥ 0.99): a pooled or mean figure alone would hide it."""
    out = []
    for oname, m in (fid.get("outputs") or {}).items():
        lo, mean = m.get("cosine_min"), m.get("cosine_mean")
        if lo is not None and mean is not None and lo < HIDDEN_MIN and mean >= HIDDEN_MEAN:
            out.append(f"WARNING: {name}: output {oname!r} sample {m.get('cosine_min_sample')} has "
                       f"cosine {lo:.4f} vs FP32 while the mean over samples is {mean:.4f}: one "
                       "input is far from FP32 (the mean hides it)")
    return out


def _ratio(num, den, digits: int = 4):
    ok = isinstance(num, (int, float)) and isinstance(den, (int, float)) and den > 0
    return round(num / den, digits) if ok and math.isfinite(num / den) else None


def _artifact_summary(a: dict, source_bytes) -> dict:
    fid, lat = a.get("fidelity") or {}, a.get("latency") or {}
    scored = accuracy_output(fid)
    ratio, _, where = latency_ratio(lat, a["precision"])
    out = {
        "path": a["path"], "files": [f["path"] for f in (a.get("files") or {}).values()],
        "target": a["target"], "format": (a.get("extra") or {}).get("format"),
        "precision": a["precision"], "runtime": a.get("runtime"), "sha256": a.get("sha256"),
        "size_bytes": a["size_bytes"], "size_ratio_vs_source": _ratio(a["size_bytes"], source_bytes),
        "cosine_min": fid.get("cosine_min"),
        "cosine_min_at": fid.get("worst"),
        "cosine_mean": fid.get("cosine_mean"),
        "accuracy": scored[1]["accuracy"] if scored else None,
        "accuracy_fp32": scored[1]["accuracy_ref"] if scored else None,
        "latency_ratio_vs_fp32": round(ratio, 4) if math.isfinite(ratio) else None,
        "latency_measured_on": where,
    }
    insns = lat.get("arm_insns")
    if isinstance(insns, dict):
        out["arm_insns_ratio_vs_fp32"] = {
            cpu: _ratio(per.get(a["precision"]), per.get("fp32"))
            for cpu, per in insns.items() if isinstance(per, dict) and "fp32" in per}
    return out


def json_summary(report: dict | None, report_path, exit_code: int, errors=()) -> dict:
    """What ``--json`` prints on stdout: per artifact its size and ratio vs the source, fidelity,
    latency ratio vs FP32; the gates; the exit code and the error lines (when it failed)."""
    report = report or {}
    model = report.get("model") or {}
    src = model.get("size_bytes")
    gates = report.get("gates") or []
    return {
        "exit_code": exit_code,
        "passed": exit_code == 0,
        "errors": list(errors),
        "report": None if report_path is None else str(report_path),
        "source": {"path": model.get("path"), "size_bytes": src} if model else None,
        "artifacts": [_artifact_summary(a, src) for a in report.get("artifacts", [])],
        "gates": gates,
        "seconds": report.get("seconds"),
        "run": report.get("run"),
    }


def _speed(ratio) -> str:
    if ratio is None or math.isnan(ratio):
        return "-"
    return f"{ratio:.2f}× faster" if ratio >= 1.0 else f"{ratio:.2f}× (slower)"


def _footnotes(a: dict, name: str) -> list[str]:
    out = []
    layers = a.get("layers") or {}
    if (a["precision"] == "int8" and layers and layers.get("int8", 1) == 0
            and not layers.get("weight_only_nodes")):
        out.append(
            f"WARNING: {name} is labelled int8 but no layer runs in int8 "
            "(every quantizable layer fell back to FP32)"
        )
    out += [f"WARNING: {name}: {n[len('WARNING: '):]}" for n in a.get("notes") or ()
            if n.startswith("WARNING: ")]  # a target's own warnings (arm: float MACs, lowering)
    for key, label in (("litert", "LiteRT"), ("ncnn", "ncnn")):
        side = (a.get("latency") or {}).get(key)
        if side:
            cells = ", ".join(f"{k} {side[k]['median_ms']:.3g} ms" for k in ("fp32", "fp16", "int8")
                              if k in side)
            out.append(f"note: {name}: {label} side by side ({side.get('threads')} threads): "
                       f"{cells}")
    out += [f"note: {name}: {n}" for n in a.get("notes") or ()
            if "(emulated; an instruction count, not a time)" in n
            or n.startswith(("not run on aarch64", "not verified on aarch64",
                             "--ncnn-int8-layers measured-arm", "--latency-guard (arm)"))]
    measured = (a.get("latency") or {}).get("measured_on", "")
    if a["target"] != "x86" and "onnxruntime" in measured:
        out.append(f"note: {name}: latency measured with {measured}")
    return out

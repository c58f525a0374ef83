"""Time and memory on real-size models: autoglm-compress vs onnxruntime ``quantize_static`` MinMax.

    .venv/bin/python bench/bench_real.py [--models effnet,yolo,bert] [--samples 128]
        [--work /tmp/bench_real] [--out bench/real_results.json] [--write-results]

Models: EfficientNet-Lite1 (ImageNet weights, 240×240, TorchScript) and nudenet's YOLOv8n (ONNX,
320×320) with natural-image crops (builders in ``tests/real/zoo.py``), and a 35 M-parameter
``transformers`` BertModel (hidden 512, 6 layers, 8 heads, seq 128, random weights, traced with
token ids + mask) for memory. Each run is a fresh subprocess whose own peak RSS (VmHWM) is
reported: ours = ``compress(int8=True)`` (x86, minmax, 128 samples, verification on 64 held-out
samples included) and ``compress(fp16=True)``; ORT = ``quant_pre_process`` + ``quantize_static``
(QDQ, per-channel, u8/s8, MinMax) on the FP32 ONNX our front end loads, its calibration timed
apart (``collect_data`` + ``compute_data``). Then both INT8 models run in onnxruntime on the eval
samples: cosine vs FP32 (worst sample, first output), top-1 agreement (classifier only) and
latency (median, interleaved) relative to FP32. ``--write-results`` puts the table in
bench/RESULTS.md under its own heading (the rest of the file is left as it is).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "real")]
from common import fidelity_vs_fp32, peak_rss_mb  # noqa: E402

__all__ = ["main"]

logger = logging.getLogger(__name__)
HEADING = "## Real-size models: time and memory vs onnxruntime `quantize_static` MinMax"


def build(name: str, work: Path, n_calib: int, n_eval: int) -> dict:
    """Model file, FP32 ONNX (our front end, for ORT) and calibration / eval .npz."""
    from autoglm_compress import load
    from autoglm_compress.ir_utils import save_atomic

    if name == "bert":
        src, calib, ev = _bert(work, n_calib, n_eval)
    else:
        import zoo

        fn = {"effnet": zoo.efficientnet_lite1, "yolo": zoo.nudenet_yolov8n}[name]
        rm = fn(work, n_calib=n_calib, n_eval=n_eval)
        src, calib, ev = rm.model, rm.calib, rm.eval
    fp32 = work / f"{name}.fp32.onnx"
    if not fp32.exists():
        save_atomic(load(src), fp32)
    return {"src": str(src), "fp32": str(fp32), "calib": str(calib), "eval": str(ev)}


def _bert(work: Path, n_calib: int, n_eval: int):
    import torch
    from transformers import BertConfig, BertModel

    path = work / "bert_h512_l6.pt"
    pc, pe = work / "bert_calib.npz", work / "bert_eval.npz"
    if path.exists():
        return path, pc, pe
    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        intermediate_size=2048,
        return_dict=False,
    )
    rng = np.random.default_rng(0)
    n, seq = n_calib + n_eval, 128
    ids = rng.integers(5, cfg.vocab_size, (n, seq)).astype(np.int64)
    mask = (np.arange(seq)[None] < rng.integers(seq // 4, seq + 1, n)[:, None]).astype(np.int64)
    net = BertModel(cfg).eval()
    ex = (torch.from_numpy(ids[:1]), torch.from_numpy(mask[:1]))
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(net, ex), str(path))
    np.savez(pc, input_ids=ids[:n_calib], attention_mask=mask[:n_calib])
    np.savez(pe, input_ids=ids[n_calib:], attention_mask=mask[n_calib:])
    return path, pc, pe


def child_ours(m: dict, out: Path, samples: int, precision: str) -> dict:
    from autoglm_compress import compress

    t0 = time.perf_counter()
    kw = (
        {"int8": True, "calib": m["calib"], "calib_samples": samples}
        if precision == "int8"
        else {"fp16": True}
    )
    res = compress(m["src"], targets=("x86",), eval_data=m["eval"], out_dir=out, **kw)
    wall = time.perf_counter() - t0
    cal = res.report.get("calibration") or {}
    return {
        "wall_s": wall,
        "calib_s": cal.get("seconds"),
        "backend": cal.get("backend"),
        "artifact": str(res.artifacts[0].path),
    }


def child_ort(m: dict, out: Path, samples: int, method: str = "MinMax") -> dict:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")
    calib_s = [0.0]
    make = ort_quantize.create_calibrator

    def timed_calibrator(*a, **k):  # times collect_data + compute_data: calibration alone
        cal = make(*a, **k)
        for meth in ("collect_data", "compute_data"):
            fn = getattr(cal, meth)

            def wrapped(*x, _fn=fn):
                t = time.perf_counter()
                try:
                    return _fn(*x)
                finally:
                    calib_s[0] += time.perf_counter() - t

            setattr(cal, meth, wrapped)
        return cal

    ort_quantize.create_calibrator = timed_calibrator
    data = dict(np.load(m["calib"]))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= samples:
                return None
            self.i += 1
            return {k: v[self.i - 1 : self.i] for k, v in data.items()}

    t0 = time.perf_counter()
    pre = out / "ort.pre.onnx"
    src = m["src"] if m["src"].endswith(".onnx") else m["fp32"]  # ORT gets the original ONNX
    try:
        quant_pre_process(src, str(pre))
    except Exception:  # noqa: BLE001 - dynamic dims its symbolic inference cannot resolve
        quant_pre_process(src, str(pre), skip_symbolic_shape=True)
    dst = out / f"ort.{method}.int8.onnx"
    quantize_static(
        str(pre),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
    )
    return {"wall_s": time.perf_counter() - t0, "calib_s": calib_s[0], "artifact": str(dst)}


def spawn(kind: str, name: str, m: dict, work: Path, samples: int) -> dict:
    """Run one job in a fresh interpreter; its own peak RSS comes back with the result."""
    out = work / f"{name}.{kind}"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--spec",
        json.dumps(m),
        "--outdir",
        str(out),
        "--samples",
        str(samples),
    ]
    # cwd: quant_pre_process leaves temp files (sym_shape_infer_temp.onnx, *.data) where it runs
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=3600, cwd=out)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def fidelity(m: dict, ours: str, ort_path: str, n: int = 64, repeats: int = 20) -> dict:
    """Cosine / top-1 vs FP32 of both INT8 models and their latency relative to FP32 (ORT)."""
    return fidelity_vs_fp32(m["fp32"], {"ours": ours, "ort": ort_path}, m["eval"], n, repeats)


def run_model(name: str, work: Path, samples: int, fp16: bool) -> dict:
    m = build(name, work, samples, 64)
    row = {"model": name, "samples": samples}
    row["ours_int8"] = spawn("ours-int8", name, m, work, samples)
    row["ort_int8"] = spawn("ort", name, m, work, samples)
    if fp16:
        row["ours_fp16"] = spawn("ours-fp16", name, m, work, samples)
    ok = "error" not in row["ours_int8"] and "error" not in row["ort_int8"]
    if ok:
        row["fidelity"] = fidelity(m, row["ours_int8"]["artifact"], row["ort_int8"]["artifact"])
    print(json.dumps(row, indent=1), flush=True)
    return row


def _f(x, fmt="{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def table(rows: list[dict]) -> str:
    head = (
        "| model | ours INT8 wall s | ORT wall s | ratio | ours calib s | ORT calib s | ratio "
        "| ours peak MB | ORT peak MB | ours FP16 wall s / peak MB | cosine min ours / ORT "
        "| top-1 ours / ORT | INT8 latency vs FP32 ours / ORT | INT8 MB ours / ORT |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        o, t, f16 = r["ours_int8"], r["ort_int8"], r.get("ours_fp16", {})
        fid = r.get("fidelity", {})
        fo, ft = fid.get("ours", {}), fid.get("ort", {})
        lines.append(
            "| "
            + " | ".join(
                [
                    r["model"],
                    _f(o.get("wall_s")),
                    _f(t.get("wall_s")),
                    _f(_ratio(o.get("wall_s"), t.get("wall_s")), "{:.2f}×"),
                    _f(o.get("calib_s")),
                    _f(t.get("calib_s")),
                    _f(_ratio(o.get("calib_s"), t.get("calib_s")), "{:.2f}×"),
                    _f(o.get("peak_mb"), "{:.0f}"),
                    _f(t.get("peak_mb"), "{:.0f}"),
                    f"{_f(f16.get('wall_s'))} / {_f(f16.get('peak_mb'), '{:.0f}')}",
                    f"{_f(fo.get('cosine_min'), '{:.4f}')} / {_f(ft.get('cosine_min'), '{:.4f}')}",
                    f"{_f(fo.get('top1'), '{:.3f}')} / {_f(ft.get('top1'), '{:.3f}')}",
                    f"{_f(fo.get('latency_vs_fp32'), '{:.2f}')} / {_f(ft.get('latency_vs_fp32'), '{:.2f}')}",
                    f"{_f(_mb(o.get('artifact')))} / {_f(_mb(t.get('artifact')))}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _mb(path) -> float | None:
    return Path(path).stat().st_size / 1e6 if path and Path(path).is_file() else None


def _ratio(a, b):
    return None if a is None or not b else a / b


NOTES = """
2026-12-03 (this machine has AVX512-VNNI; new INT8 defaults: 8-bit weights on VNNI, layer-wise
reconstruction tried when weight rounding is ≥ 30 % of the int8 error). EfficientNet-Lite1 is where
reconstruction is used: top-1 agreement 0.969 vs ORT's 0.844, for a wall time of 3.8× ORT's (issue
9's ≤ 2× target missed; `--no-reconstruct` gives 1.2×) and a peak of 1.15 GB (the Hessians and the
activations they are summed from; target ≤ 1 GB missed). YOLOv8n and BERT skip it (weight rounding
8 % and 3 % of their int8 error): 1.21× and 2.02× ORT's wall time.
Ours = `compress(int8=True)` end to end (load, cleanup + fold_bn, calibration, bias correction,
QDQ, per-layer SQNR table, verification with latency); ORT = `quant_pre_process` +
`quantize_static` only (no verification). Calibration: minmax statistics in onnxruntime on an
augmented graph (`calibration/ort_stats.py`: reductions inside the graph, exact derivations for
reshapes/Relu/Clip; equality with the executor's statistics in `tests/test_ort_stats.py`); FP32
reference and per-layer SQNR in onnxruntime as well. Before this work (same machine, same data,
one run each, under heavier load): EfficientNet-Lite1 26.7 s wall, 7.7 s calibration (executor,
vmap), 1.62 GB peak; BERT (hidden 512, 6 layers) INT8 stopped with `CalibrationError` on its
-inf attention mask in either calibration backend (now: ±inf tensors stay in float, NaN fails).
Targets (issue 9): INT8 wall ≤ 2× ORT's, calibration ≤ 1× ORT's, peak ≤ 1 GB for a 224² CNN and
≤ 2 GB for a ~30 M-parameter transformer, FP16 ≤ 15 s. Timings on this shared 2-core machine vary
±30 % between runs (calibration ratios of 0.67–1.15× were seen for the same code), so read ratios
near 1× as "about equal". BERT is where targets are missed: FP16 just over 15 s (TorchScript
export + simplify + check ≈ 6 s, then the 64-sample verification of a 35 M-parameter model in
onnxruntime: FP32 reference and FP16 artifact, ≈ 45 ms a run each) and calibration ≈ 1.1× ORT's
(FP32 inference itself is most of both).
Tried and not kept: 8 calibration samples per onnxruntime call when the batch is symbolic
(YOLOv8n: calibration 5.7 s vs ORT's 4.8 s, peak 1.6 GB — the arena grows, 2 cores gain nothing).
"""


def write_results(md: str, command: str) -> None:
    """Replace (or append) this benchmark's own section of bench/RESULTS.md."""
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else ""
    body = (
        f"{HEADING}\n\nCommand: `{command}` (2-core x86 machine shared with other jobs — 2026-12-03: an AMD EPYC with AVX512-VNNI; "
        "each column a fresh process; peak = the process's own max RSS).\n\n" + md + "\n" + NOTES
    )
    if HEADING in text:
        start = text.index(HEADING)
        nxt = text.find("\n## ", start + len(HEADING))
        text = text[:start] + body + ("" if nxt < 0 else text[nxt:])
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text)


def _child(args) -> None:
    m, out = json.loads(args.spec), Path(args.outdir)
    logging.basicConfig(level=logging.WARNING)
    if args.child == "ort":
        res = child_ort(m, out, args.samples)
    else:
        res = child_ours(m, out, args.samples, args.child.split("-")[1])
    res["peak_mb"] = peak_rss_mb()
    print(json.dumps(res))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="effnet,yolo,bert")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--work", default="/tmp/bench_real")
    ap.add_argument("--out", default=str(ROOT / "bench" / "real_results.json"))
    ap.add_argument("--no-fp16", action="store_true")
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--outdir", help=argparse.SUPPRESS)
    ap.add_argument("--render", help="write RESULTS.md from a results JSON, without running")
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    if args.render:
        rows = json.loads(Path(args.render).read_text())
        return write_results(table(rows), rows[0].get("command", "python bench/bench_real.py"))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [run_model(n, work, args.samples, not args.no_fp16) for n in args.models.split(",")]
    cmd = "python bench/bench_real.py " + " ".join(argv if argv is not None else sys.argv[1:])
    cmd = cmd.replace(" --write-results", "").strip()
    for r in rows:
        r["command"] = cmd
    Path(args.out).write_text(json.dumps(rows, indent=1))
    md = table(rows)
    print(md)
    if args.write_results:
        write_results(md, cmd)
    return None


if __name__ == "__main__":
    main()

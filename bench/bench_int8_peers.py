"""INT8 fidelity on real models: autoglm-compress vs onnxruntime ``quantize_static`` (MinMax,
Percentile, Entropy) vs NNCF, same FP32 model, calibration and held-out data, one run.

    .venv/bin/python bench/bench_int8_peers.py [--models effnet1,effnet2,yolo,ocr,bert]
        [--samples 128] [--eval 64] [--nncf-python /tmp/nncf_venv/bin/python]
        [--work /tmp/bench_peers] [--write-results]

Models (builders in ``tests/real/zoo.py``): EfficientNet-Lite1 / -Lite2 (ImageNet weights, 240² /
260², natural-image crops), nudenet's YOLOv8n (ONNX, 320²), RapidOCR's PP-OCR DBNet text detector
(paddle2onnx ONNX, text on photos at 640², fewer samples: ORT's Entropy keeps every activation),
and a ``transformers`` BertModel (hidden 512, 6 layers, random weights, seq 128, token ids + mask).
Ours = ``compress(int8=True)`` on the model file with default flags (x86; verification included in
its wall time; calibration ``auto``), and with ``--calib-method minmax`` (the default before
``auto``; on YOLOv8n also ``mse`` everywhere).
ORT = ``quant_pre_process`` + ``quantize_static`` (QDQ, per-channel, u8
activations / s8 weights). NNCF = ``nncf.quantize`` (ONNX backend, default preset;
``model_type=TRANSFORMER`` on BERT) in its own virtualenv (``pip install nncf openvino``). ORT and
NNCF get the original ONNX where there is one, else the FP32 ONNX our front end makes of the
TorchScript file. Every quantization runs in a fresh process (wall time and peak RSS its own);
then all artifacts run in onnxruntime on the held-out samples: top-1 agreement (classifiers),
detection agreement (YOLO: of FP32's top-50 anchors, the share kept with the same class), cosine
vs FP32 (mean and worst sample, first output) and latency (median, interleaved) relative to FP32.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "real")]
from common import fidelity_vs_fp32, peak_rss_mb  # noqa: E402

HEADING = "## INT8 fidelity on real models vs onnxruntime and NNCF"
ORT_METHODS = ("MinMax", "Percentile", "Entropy")
# model -> (calibration samples cap, eval samples cap): ORT Entropy holds every activation of every
# calibration sample in memory, which a 640² DBNet cannot afford at 128
CAPS = {"ocr": (32, 16)}
# the previous default (min/max everywhere) next to the defaults (auto), and mse everywhere on YOLO
EXTRA = {"yolo": ("ours-minmax", "ours-mse")}
EXTRA_ALL = ("ours-minmax",)


def build(name: str, work: Path, n_calib: int, n_eval: int) -> dict:
    """Model file, FP32 ONNX (our front end) and calibration / eval .npz."""
    import zoo
    from bench_real import _bert

    from autoglm_compress import load
    from autoglm_compress.ir_utils import save_atomic

    n_calib, n_eval = (min(a, b) for a, b in zip((n_calib, n_eval), CAPS.get(name, (n_calib, n_eval))))
    if name == "bert":
        src, calib, ev = _bert(work, n_calib, n_eval)
    else:
        rm = {
            "effnet1": lambda: zoo.efficientnet_lite(work, 1, n_calib=n_calib, n_eval=n_eval),
            "effnet2": lambda: zoo.efficientnet_lite(work, 2, n_calib=n_calib, n_eval=n_eval),
            "yolo": lambda: zoo.nudenet_yolov8n(work, n_calib=n_calib, n_eval=n_eval),
            "ocr": lambda: zoo.ppocr(work, "det", n_calib=n_calib, n_eval=n_eval, size=640),
        }[name]()
        src, calib, ev = rm.model, rm.calib, rm.eval
    fp32 = work / f"{name}.fp32.onnx"
    if not fp32.exists():
        save_atomic(load(src), fp32)
    peer_in = str(src) if str(src).endswith(".onnx") else str(fp32)
    peer_in = _opset13(peer_in, work / f"{name}.opset13.onnx")
    return {"name": name, "src": str(src), "fp32": str(fp32), "peer_in": peer_in,
            "calib": str(calib), "eval": str(ev), "samples": n_calib}


def _opset13(path: str, dst: Path) -> str:
    """Per-channel QDQ (DequantizeLinear's axis) needs opset 13: an older model (PP-OCR's
    paddle2onnx export is opset 11) is converted for the peers first, as their docs advise —
    onnxruntime otherwise writes a model it cannot load."""
    import onnx

    m = onnx.load(path)
    if max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=13) >= 13:
        return path
    if not dst.exists():
        onnx.save(onnx.version_converter.convert_version(m, 13), str(dst))
    return str(dst)


def child(kind: str, m: dict, out: Path) -> dict:
    """One quantization, in this (fresh) process."""
    t0 = time.perf_counter()
    if kind.startswith("ours"):
        from autoglm_compress import compress

        kw = {"calib_method": kind.split("-")[1]} if "-" in kind else {}
        res = compress(m["src"], targets=("x86",), int8=True, calib=m["calib"],
                       calib_samples=m["samples"], out_dir=out, **kw)
        art = str(res.artifacts[0].path)
        res = {"wall_s": time.perf_counter() - t0, "artifact": art}
    else:
        from bench_real import child_ort

        res = child_ort({**m, "src": m["peer_in"]}, out, m["samples"], kind.split("-")[1])
    res["peak_mb"] = peak_rss_mb()
    return res


def spawn(kind: str, m: dict, work: Path, nncf_python: str | None, reuse: bool = False) -> dict:
    out = work / f"{m['name']}.{kind}"
    out.mkdir(parents=True, exist_ok=True)
    done = out / "job.json"
    if reuse and done.exists():
        return json.loads(done.read_text())
    res = _spawn(kind, m, out, nncf_python)
    done.write_text(json.dumps(res))
    return res


def _spawn(kind: str, m: dict, out: Path, nncf_python: str | None) -> dict:
    if kind == "nncf":
        if not nncf_python or not Path(nncf_python).exists():
            return {"error": "no NNCF virtualenv (--nncf-python)"}
        dst = out / "nncf.int8.onnx"
        cmd = [nncf_python, str(ROOT / "bench" / "peers" / "nncf_quantize.py"), m["peer_in"],
               m["calib"], str(dst), str(m["samples"])] + ["--transformer"] * (m["name"] == "bert")
        t0 = time.perf_counter()
    else:
        cmd = [sys.executable, __file__, "--child", kind, "--spec", json.dumps(m), "--outdir", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=out)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if kind == "nncf":  # its own wall_s excludes imports
        res.update(artifact=str(dst), process_s=time.perf_counter() - t0)
    return res


def run_model(name: str, work: Path, a) -> dict:
    m = build(name, work, a.samples, a.eval)
    kinds = ["ours", *EXTRA.get(name, EXTRA_ALL)] + [f"ort-{x}" for x in ORT_METHODS] + ["nncf"]
    jobs = {k: spawn(k, m, work, a.nncf_python, a.reuse) for k in kinds}
    for k, j in jobs.items():
        print(f"{name} {k}: {j}", flush=True)
    ok = {k: j["artifact"] for k, j in jobs.items() if "artifact" in j}
    fid = fidelity_vs_fp32(m["fp32"], ok, m["eval"], a.eval, detector=name == "yolo") if ok else {}
    for k, f in fid.items():
        if isinstance(f, dict) and "error" in f:
            jobs[k] = {**jobs[k], "error": f["error"]}
    row = {"model": name, "samples": m["samples"], "jobs": jobs, "fidelity": fid}
    print(json.dumps(row), flush=True)
    return row


NOTES = """
2026-12-03, this 2-core AVX512-VNNI machine (ours picks 8-bit weights there; `--cpu avx2` numbers
are in "x86 INT8 weight width per layer"). 128 calibration samples (PP-OCR 32 at 640²), 128
held-out (PP-OCR 16). Peer rows were quantized in an earlier run and re-evaluated with ours
(`--reuse`); latency is interleaved within a model's rows. The ocr and bert rows of **ours** were
rerun after x86 GELU fusion landed (their `minmax` rows predate it). Goal (issue 12): the best
fidelity of the three on every model at ≤ 0.6× FP32 latency on the CNNs.

- **Ahead of onnxruntime and NNCF on every row**: EfficientNet-Lite1 / -Lite2 top-1 0.961 / 0.953
  (best peer 0.867 / 0.938), YOLOv8n detection agreement 0.755 (NNCF 0.735), PP-OCR worst cosine
  0.962 (0.945), BERT mean / worst cosine 0.99992 / 0.99989 (NNCF 0.99991 / 0.99922, at 1.4× FP32
  latency). Latency 0.44–0.56× FP32 on the CNNs (YOLOv8n 0.60×); EfficientNet-Lite1 0.54× is above
  the 0.5× asked of the EfficientNets (Lite2 0.44×).
- **Default calibration is now `auto`** (min/max for inputs and bounded activations, a clipped
  minimum-MSE histogram range for unbounded tensors); the `minmax` rows are the previous default:
  EfficientNet-Lite1 top-1 0.953 → 0.961, YOLOv8n 0.729 → 0.755 (unclipped `mse` everywhere
  0.778), BERT 0.99984 → 0.99992 (with GELU fusion), EfficientNet-Lite2 unchanged.
- **x86 INT8 fuses GELU** (one float Gelu kernel between DQ and Q): PP-OCR 0.66× → 0.56× FP32,
  worst cosine 0.954 → 0.962 (minmax without fusion: 0.968 / 0.72×).
- Cost of `auto`: compress wall time +3–14 s on the CNNs (the histogram tensors are streamed out
  of onnxruntime, the rest reduced in the graph), +43 s on the BERT (most of its tensors are
  unbounded; the reconstruction gate also tries reconstruction there now that activation error
  shrank). Peak memory ≤ 2.2 GB; the peers' histogram calibrators and NNCF 8–20 GB, and
  onnxruntime's fail on the BERT's −inf attention mask.
- NNCF's QDQ models leave most convs unfused in onnxruntime (Q after ReLU6/Clip, signed
  activations): 5–6× slower than FP32 on the EfficientNets. PP-OCR is opset 11: the peers get it
  converted to opset 13 (onnxruntime's per-channel output of the opset-11 file does not load).
"""

LABELS = {"ours": "**ours**", "ours-mse": "ours `--calib-method mse`",
          "ours-minmax": "ours `--calib-method minmax`", "ort-MinMax": "ORT MinMax", "ort-Percentile": "ORT Percentile",
          "ort-Entropy": "ORT Entropy", "nncf": "NNCF"}


def _f(x, fmt) -> str:
    return "-" if x is None else fmt.format(x)


def table(rows: list[dict]) -> str:
    lines = ["| model | tool | top-1 / detections agree | cosine mean | cosine worst | latency vs FP32 "
             "| quantize wall s | peak MB |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for k, j in row["jobs"].items():
            f = row["fidelity"].get(k, {})
            if "error" in j:
                lines.append(f"| {row['model']} | {LABELS[k]} | failed: {j['error']} |  |  |  |  |  |")
                continue
            agree = f.get("top1", f.get("det_agree"))
            lines.append(
                f"| {row['model']} | {LABELS[k]} | {_f(agree, '{:.3f}')} | "
                f"{_f(f.get('cosine_mean'), '{:.5f}')} | {_f(f.get('cosine_min'), '{:.5f}')} | "
                f"{_f(f.get('latency_vs_fp32'), '{:.2f}×')} | {_f(j.get('wall_s'), '{:.1f}')} | "
                f"{_f(j.get('peak_mb'), '{:.0f}')} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="effnet1,effnet2,yolo,ocr,bert")
    ap.add_argument("--samples", type=int, default=128, help="calibration samples")
    ap.add_argument("--eval", type=int, default=64, help="held-out samples")
    ap.add_argument("--nncf-python", default="/tmp/nncf_venv/bin/python")
    ap.add_argument("--work", default="/tmp/bench_peers")
    ap.add_argument("--out", default=str(ROOT / "bench" / "int8_peers_results.json"))
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--reuse", action="store_true",
                    help="take quantized models already in --work (job.json) instead of rerunning")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--outdir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(child(a.child, json.loads(a.spec), Path(a.outdir))))
        return
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in a.models.split(","):
        rows.append(run_model(n, work, a))
        Path(a.out).write_text(json.dumps(rows, indent=1))
    cmd = "python bench/bench_int8_peers.py " + " ".join(
        x for x in (argv if argv is not None else sys.argv[1:]) if x not in ("--write-results", "--reuse"))
    md = table(rows)
    print(md)
    if a.write_results:
        from bench_arm import write_results

        write_results(f"{HEADING}\n\nCommand: `{cmd.strip()}`\n\n{md}\n{NOTES}", HEADING)


if __name__ == "__main__":
    main()

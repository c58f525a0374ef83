"""Calibration cost on a small high-resolution model (issue 31): ours vs onnxruntime
``quantize_static``, side by side in one run.

    .venv/bin/python bench/bench_calib_cost.py [--size 256] [--samples 48] [--eval 16]
        [--work /tmp/bench_calib_cost]

The model is the Zero-DCE-like low-light enhancer of ``tests/models.py`` (79 K parameters, seven
3×3 convs of 32 channels at full resolution, tanh curve maps, 8 curve steps; seeded weights),
exported to ONNX at ``--size``²; calibration and held-out data are darkened random crops of
scikit-image's photos. Jobs, each in a fresh process (its own wall time and peak RSS):
ours = ``compress(int8=True, targets=x86)`` with the default calibration (``auto``: 48 histogram
tensors here) and with ``--calib-method mse`` / ``minmax``; ORT = ``quant_pre_process`` +
``quantize_static`` (QDQ, per-channel, u8/s8) with MinMax, its default (``--kinds`` can add
``ort-Percentile``, whose calibrator holds every activation of every sample: 19 GB at 256², 48).
Calibration seconds: ours = ``report.json``'s ``calibration.seconds`` (onnxruntime statistics
pass) plus the range searches (``quantize`` pass, reported apart), ORT = its calibrator's
``collect_data`` + ``compute_data``. Fidelity: every artifact vs FP32 in onnxruntime on the
held-out crops, PSNR (peak 1: images in [0, 1]) and cosine, mean and worst sample.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]
from common import peak_rss_mb  # noqa: E402

KINDS = ("ours", "ours-mse", "ours-minmax", "ort-MinMax")  # ort-Percentile: every activation held


def build(work: Path, size: int, n_calib: int, n_eval: int) -> dict:
    import models

    model = work / f"zero_dce{size}.onnx"
    if not model.exists():
        models.save_onnx(models.zero_dce(size), model)
    calib, ev = work / f"calib{size}_{n_calib}.npz", work / f"eval{size}_{n_eval}.npz"
    if not calib.exists():
        np.savez(calib, input=models.dark_crops(size, n_calib, seed=0))
        np.savez(ev, input=models.dark_crops(size, n_eval, seed=1))
    return {"src": str(model), "fp32": str(model), "calib": str(calib), "eval": str(ev),
            "samples": n_calib}


def child(kind: str, m: dict, out: Path) -> dict:
    if kind.startswith("ours"):
        from autoglm_compress import compress

        t0 = time.perf_counter()
        kw = {"calib_method": kind.split("-")[1]} if "-" in kind else {}
        res = compress(m["src"], targets=("x86",), int8=True, calib=m["calib"],
                       calib_samples=m["samples"], eval_data=m["eval"], out_dir=out, **kw)
        rep = res.report
        quant = next(p["seconds"] for p in rep["passes"] if p["name"].startswith("quantize"))
        job = {"wall_s": time.perf_counter() - t0, "calib_s": rep["calibration"]["seconds"],
               "quantize_pass_s": quant, "artifact": str(res.artifacts[0].path)}
    else:
        from bench_real import child_ort

        job = child_ort(m, out, m["samples"], kind.split("-")[1])
    job["peak_mb"] = peak_rss_mb()
    return job


def spawn(kind: str, m: dict, work: Path) -> dict:
    out = work / kind
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", kind, "--spec", json.dumps(m), "--outdir", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=7200, cwd=out)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def fidelity(fp32: str, art: str, eval_npz: str) -> dict:
    from autoglm_compress.ir_utils import ort_session
    from autoglm_compress.metrics import _cos

    x = np.load(eval_npz)["input"]
    ref, got = ort_session(fp32), ort_session(art)
    psnr, cos = [], []
    for i in range(len(x)):
        a = ref.run(None, {"input": x[i : i + 1]})[0].astype(np.float64)
        b = got.run(None, {"input": x[i : i + 1]})[0].astype(np.float64)
        psnr.append(10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-20)))
        cos.append(_cos(a, b))
    return {"psnr_mean": float(np.mean(psnr)), "psnr_min": float(np.min(psnr)),
            "cos_mean": float(np.mean(cos)), "cos_min": float(np.min(cos))}


def table(rows: dict) -> str:
    head = ("| job | calibration s | quantize pass s | total wall s | peak RSS MB | PSNR mean / worst dB "
            "| cosine mean / worst |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for k, j in rows.items():
        if "error" in j:
            lines.append(f"| {k} | failed: {j['error']} |  |  |  |  |  |")
            continue
        q = j.get("quantize_pass_s")
        lines.append(
            f"| {k} | {j['calib_s']:.1f} | {'-' if q is None else f'{q:.1f}'} | {j['wall_s']:.1f} | "
            f"{j['peak_mb']:.0f} | {j['psnr_mean']:.2f} / {j['psnr_min']:.2f} | "
            f"{j['cos_mean']:.6f} / {j['cos_min']:.6f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--samples", type=int, default=48, help="calibration samples")
    ap.add_argument("--eval", type=int, default=16, help="held-out samples")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--work", default="/tmp/bench_calib_cost")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--outdir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, json.loads(a.spec), Path(a.outdir))))
        return
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    m = build(work, a.size, a.samples, a.eval)
    rows = {}
    for kind in a.kinds.split(","):
        job = spawn(kind, m, work)
        if "artifact" in job:
            job.update(fidelity(m["fp32"], job["artifact"], m["eval"]))
        rows[kind] = job
        print(kind, json.dumps(job), flush=True)
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()

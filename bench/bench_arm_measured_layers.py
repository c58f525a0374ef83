"""Whole-network aarch64 guest instructions of ncnn INT8 EfficientNet-Lite1, YOLOv8n (or the digits CNN) as
``--ncnn-int8-layers`` all / measured (x86 one-layer timings) / measured-arm (aarch64 one-layer
instruction counts) decide, against the FP32 file of the same model (issue 28 item 4).

Each mode is compressed once (``--verify-arm off``: its x86 verification only), then the FP32 file
and the three INT8 files run in ONE qemu-aarch64 guest process (targets/arm_emulation
``run_jobs``), one warm-up and ``--n`` counted inferences each on the eval samples.

    .venv/bin/python bench/bench_arm_measured_layers.py --model effnet --cpu cortex-a76
    .venv/bin/python bench/bench_arm_measured_layers.py --model yolo --cpu cortex-a76

``yolo``: nudenet's YOLOv8n (320n.onnx, 320×320, shapes fixed to the data's: ``static_shapes``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "real")]


def _model(name: str, work: Path):
    if name == "digits":
        ex = ROOT / "examples"
        return ex / "digits_cnn.pt", ex / "digits_calib.npz", ex / "digits_eval.npz"
    import zoo

    if name == "yolo":
        rm = zoo.nudenet_yolov8n(work, n_calib=16, n_eval=4)
    else:
        rm = zoo.efficientnet_lite1(work, n_calib=16, n_eval=4)
    return rm.model, rm.calib, rm.eval


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("digits", "effnet", "yolo"), default="effnet")
    ap.add_argument("--cpu", default="cortex-a76")
    ap.add_argument("--n", type=int, default=1, help="counted inferences per file")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)

    from autoglm_compress import compress
    from autoglm_compress.targets.arm_emulation.runner import Job, run_jobs
    from autoglm_compress.targets.arm_emulation.verify import ncnn_io

    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="agc_bench_arm_layers_") as tmp:
        work = Path(tmp)
        model, calib, ev = _model(a.model, work)
        arts = {}
        for mode, kw in (("fp32", {}), ("all", {"int8": True}),
                         ("measured", {"int8": True, "ncnn_int8_layers": "measured"}),
                         ("measured-arm", {"int8": True, "ncnn_int8_layers": "measured-arm"})):
            t0 = time.perf_counter()
            res = compress(model, targets="arm", arm_format="ncnn", calib=calib, eval_data=ev,
                           samples=4, latency_repeats=3, verify_arm="off", arm_cpu=a.cpu,
                           out_dir=work / mode, static_shapes=a.model == "yolo", **kw)
            art = res.artifact("arm", "ncnn")
            q = art.extra.get("ncnn_int8", {})
            m = q.get("measured", {})
            rows[mode] = {"compress_s": round(time.perf_counter() - t0, 1),
                          "cosine_min_x86": art.fidelity["cosine_min"],
                          "int8_layers": q.get("int8"), "float_layers": q.get("float"),
                          "kept_float": m.get("kept_float"),
                          "x86_ncnn_ms": ((art.latency.get("ncnn") or {}).get(art.precision)
                                         or {}).get("median_ms")}
            if mode == "measured-arm":
                rows[mode]["layer_counts"] = {k: m.get(k) for k in (
                    "sum_fp32_insns", "sum_int8_insns", "sum_chosen_insns", "fallback")}
            arts[mode] = art
        with np.load(ev) as z:
            x = z[z.files[0]][:a.n].astype(np.float32)
        (name,) = arts["fp32"].extra["blobs"]["inputs"]  # one-input models
        feeds = [{name: x[i:i + 1]} for i in range(len(x))]
        jobs = []
        for art in arts.values():
            io = ncnn_io(art, {k: [-1] for k in art.extra["blobs"]["outputs"]})
            jobs.append(Job(dict(art.files), "ncnn", art.precision, io, n=a.n))
        t0 = time.perf_counter()
        got = run_jobs(jobs, feeds, cpu=a.cpu, timeout=3600)
        emu_s = time.perf_counter() - t0
    fp32 = got[0][1]
    ref = np.concatenate([o.ravel() for out in got[0][0] for o in out]).astype(np.float64)
    for (mode, row), (outs, insns) in zip(rows.items(), got, strict=True):
        row["arm_insns"] = int(round(insns))
        row["vs_fp32"] = round(insns / fp32, 3)
        # the aarch64 outputs against the FP32 file's aarch64 outputs (same feeds, pooled)
        v = np.concatenate([o.ravel() for out in outs for o in out]).astype(np.float64)
        row["cosine_vs_fp32_aarch64"] = round(float(v @ ref / (np.linalg.norm(v) *
                                                              np.linalg.norm(ref) + 1e-30)), 6)
    out = {"model": a.model, "cpu": a.cpu, "inferences": a.n, "emulation_s": round(emu_s, 1),
           "modes": rows}
    print(json.dumps(out, indent=1))
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

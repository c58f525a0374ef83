"""``--latency-guard`` on the arm target (TFLite): per int8 op type, the aarch64 LiteRT guest
instructions of the INT8 .tflite with that op type left float, against the INT8 file as quantized
and the FP32 file (issue 28 item 4), and what the guard kept float.

One ``compress --target arm --int8 --latency-guard --verify-arm off`` per model; the guard's
counts run in one qemu-aarch64 guest process (``-cpu --cpu``), one warm-up and one counted
inference on one held-out calibration sample. Cosine: the x86 verification of the written file.

    .venv/bin/python bench/bench_arm_latency_guard.py --model yolo --cpu cortex-a76
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "real"), str(ROOT / "bench")]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("digits", "effnet", "yolo"), default="yolo")
    ap.add_argument("--cpu", default="cortex-a76")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)

    from bench_arm_measured_layers import _model

    from autoglm_compress import compress

    with tempfile.TemporaryDirectory(prefix="agc_bench_arm_guard_") as tmp:
        work = Path(tmp)
        model, calib, ev = _model(a.model, work)
        t0 = time.perf_counter()
        res = compress(model, targets="arm", int8=True, calib=calib, eval_data=ev, samples=4,
                       latency_repeats=3, verify_arm="off", arm_cpu=a.cpu, latency_guard=True,
                       static_shapes=a.model == "yolo", out_dir=work / "out")
        (art,) = res.artifacts
        rec = next(p for p in res.report["passes"] if p["name"] == "quantize[arm/tflite]")
        guard = rec["stats"]["latency_guard"]
    out = {"model": a.model, "cpu": a.cpu, "compress_s": round(time.perf_counter() - t0, 1),
           "cosine_min_x86": art.fidelity["cosine_min"],
           "tflite_float_ops": art.extra["tflite_ops"]["float"],
           "notes": [n for n in art.notes if "latency-guard" in n], "latency_guard": guard}
    print(json.dumps(out, indent=1))
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

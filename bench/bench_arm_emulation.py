"""ARM artifacts under qemu-aarch64 (issue 28): FP32 / FP16 / INT8 guest instruction counts per
inference on two CPU models, aarch64-vs-x86 fidelity, and a check of the count as a time proxy.

    .venv/bin/python bench/bench_arm_emulation.py [--models digits,effnet,yolo,ppocr,bert]
        [--cpus cortex-a53,cortex-a76] [--precisions fp32,fp16,int8] [--timeout 1800]
        [--calib 32] [--eval 4] [--insns-samples 1] [--work /tmp/bench_arm_emulation] [--no-proxy]
        [--heading "## …"] [--write-results] [--proxy-only]

Models (bench_ncnn.load_models): digits, EfficientNet-Lite1, nudenet's YOLOv8n (320n.onnx), the
PP-OCR recognizer (rapidocr), the BERT encoder (batch 1). ``--precisions`` picks the
precisions compressed on their own for aarch64 fidelity (the INT8 run also counts FP32 / FP16 /
INT8 side by side; without int8, no counts; fewer precisions → no proxy check); ``--timeout`` bounds each qemu run (past it
the rows carry the 'not verified on aarch64' note). Fidelity is taken on the last ``--cpus``.

Per model: ``compress`` to ``--target arm --format all`` at FP32, FP16 and INT8 with
``--verify-arm auto`` (the INT8 run with ``--arm-cpu`` = every CPU: its ``latency.arm_insns``
holds the FP32 / FP16 / INT8 files of the same model side by side) and ``--arm-threads 1``. Proxy
check: the same FP32 / FP16 / INT8 artifacts in this machine's x86 LiteRT / ncnn, counted under
``qemu-x86_64 -cpu max`` with the same plugin, against their measured x86 latency (one thread,
the INT8 run's side-by-side timing): Pearson correlation of log(instructions) and log(ms), and the
INT8/FP32 ratio of each. ``--proxy-only``: that check alone — FP32 / FP16 / INT8 compressed with
``--verify-arm off`` (x86 verification and timing only; no aarch64 runs, no instruction or fidelity
tables), then the qemu-x86_64 counts; Pearson r over all files and per model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "real"), str(ROOT / "bench")]

HEADING = "## ARM artifacts under qemu-aarch64 (issue 28)"
PRECISIONS = ("fp32", "fp16", "int8")


SHOWN = {"digits": "digits", "effnet": "EfficientNet-Lite1", "yolo": "YOLOv8n (nudenet 320n)",
         "ppocr": "PP-OCR rec", "bert": "BERT encoder"}
# arm formats per model (a model missing here: both)
FORMATS: dict[str, tuple[str, ...]] = {}


def _models(names, work: Path, n_calib: int, n_eval: int) -> dict:
    """bench_ncnn's loaders (bench_arm's digits / EfficientNet-Lite1 / nudenet YOLOv8n, the BERT
    encoder at batch 1, the PP-OCR recognizer), keyed by short name."""
    from bench_ncnn import load_models

    work.mkdir(parents=True, exist_ok=True)
    return load_models(names, work, n_calib, n_eval)


def _compress(model, calib, ev, prec: str, cpus: str, out: Path, n_eval: int, fmts=None,
              verify_arm: str = "auto", calib_samples: int = 32):
    from autoglm_compress import compress
    from autoglm_compress.targets.arm_emulation import verify

    verify.AUTO_MAX_MACS = float("inf")  # auto's checks (XNNPACK only) on every model size

    t = time.perf_counter()
    fmt = "all" if fmts is None or len(fmts) > 1 else fmts[0]
    res = compress(model, targets="arm", arm_format=fmt, int8=prec == "int8",
                   fp16=prec == "fp16", calib=calib, eval_data=ev, samples=n_eval,
                   calib_samples=calib_samples, verify_arm=verify_arm, arm_cpu=cpus,
                   arm_threads=1,
                   latency_repeats=10, out_dir=out)
    print(f"  {prec}: {time.perf_counter() - t:.0f} s", flush=True)
    for art, d in zip(res.artifacts, res.report["artifacts"], strict=True):
        art.extra["output_shapes"] = {o["name"]: o["shape"] for o in d["io"]["outputs"]}
    return {a.extra["format"]: a for a in res.artifacts}


def _x86_insns(arts: dict, feeds) -> dict:
    """x86 instruction count per inference of each artifact (format, precision) in this
    machine's runtimes under qemu-x86_64."""
    from autoglm_compress.targets.arm_emulation.runner import Job, run_jobs
    from autoglm_compress.targets.arm_emulation.verify import ncnn_io

    out = {}
    for (fmt, prec), a in arts.items():
        io = ncnn_io(a, a.extra["output_shapes"]) if fmt == "ncnn" else None
        (_, n), = run_jobs([Job(dict(a.files), fmt, prec, io, n=1)], feeds, cpu="max",
                           arch="x86_64")
        out[fmt, prec] = n
    return out


def _pearson(x, y) -> float:
    x, y = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.corrcoef(x, y)[0, 1])


def _m(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def _row_timeout(seconds: float) -> None:
    """Every aarch64 run (one qemu process per CPU and artifact) gets ``seconds``; past it the
    artifact carries a 'not verified on aarch64: … timed out' note and its rows say so."""
    import functools

    from autoglm_compress.targets.arm_emulation import verify

    verify.run_jobs = functools.partial(verify.run_jobs, timeout=seconds)


def _note(art) -> str:
    return next((n for n in art.notes if "aarch64" in n and "not " in n), "no aarch64 result")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="digits,effnet",
                    help="of digits,effnet,yolo,ppocr,bert")
    ap.add_argument("--cpus", default="cortex-a53,cortex-a76")
    ap.add_argument("--precisions", default="fp32,fp16,int8",
                    help="precisions compressed on their own for their aarch64 fidelity (the INT8 "
                    "run also counts FP32 / FP16 / INT8 side by side: without it, no counts)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per aarch64 run")
    ap.add_argument("--heading", default=HEADING)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--eval", type=int, default=4, help="verification samples (≤ 8 on aarch64)")
    ap.add_argument("--insns-samples", type=int, default=1,
                    help="inferences counted per precision (after one warm-up)")
    ap.add_argument("--work", default="/tmp/bench_arm_emulation")
    ap.add_argument("--no-proxy", action="store_true")
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--proxy-only", action="store_true",
                    help="only the x86 proxy check (every precision, --verify-arm off)")
    a = ap.parse_args()
    if a.proxy_only:
        a.no_proxy, a.precisions = False, ",".join(PRECISIONS)
    from autoglm_compress.targets.arm_emulation import verify

    verify.INSNS_SAMPLES = a.insns_samples  # counts vary < 0.1% between inferences
    work = Path(a.work)
    cpus = a.cpus.split(",")
    _row_timeout(a.timeout)
    precs = [p for p in PRECISIONS if p in a.precisions.split(",")]
    insn_rows, fid_rows, proxy_rows = [], [], []
    # (model, x86 insns, x86 ms, aarch64 insns or None)
    proxy_pts: list[tuple[str, float, float, float | None]] = []
    t0 = time.perf_counter()
    # fidelity is taken on the first CPU of a run: the last of --cpus for every precision
    fid_cpus = ",".join([cpus[-1], *cpus[:-1]])
    for key, (model, calib, ev) in _models(a.models.split(","), work, a.calib, a.eval).items():
        name, fmts = SHOWN[key], FORMATS.get(key, ("tflite", "ncnn"))
        print(name, flush=True)
        runs = {p: _compress(model, calib, ev, p, fid_cpus if p == "int8" else cpus[-1],
                             work / key / p, a.eval, fmts,
                             "off" if a.proxy_only else "auto", a.calib) for p in precs}
        for fmt in fmts:
            q = runs.get("int8", {}).get(fmt)
            for cpu in cpus if q is not None and not a.proxy_only else ():
                per = q.latency.get("arm_insns", {}).get(cpu)
                if per is None:
                    insn_rows.append(f"| {name} | {fmt} | {cpu} | {_note(q)} | | |")
                    continue
                insn_rows.append(f"| {name} | {fmt} | {cpu} | {_m(per['fp32'])} | "
                                 f"{per['vs_fp32']['fp16']:.2f}× | {per['vs_fp32']['int8']:.2f}× |")
            for p in precs if not a.proxy_only else ():
                art = runs[p][fmt]
                a64 = art.fidelity.get("aarch64")
                if a64 is None:
                    fid_rows.append(f"| {name} | {fmt} | {p} | {art.fidelity['cosine_min']:.5f} "
                                    f"| {_note(art)} | | |")
                    continue
                top1 = next(iter(a64["outputs"].values())).get("top1_agreement")
                fid_rows.append(
                    f"| {name} | {fmt} | {p} | {art.fidelity['cosine_min']:.5f} | "
                    f"{a64['cosine_min']:.5f} | {a64['vs_x86_cosine_min']:.6f} | "
                    f"{'-' if top1 is None else f'{top1:.3f}'} |")
            if a.no_proxy or len(precs) < 3:
                continue
            side = q.latency["litert" if fmt == "tflite" else "ncnn"]
            feeds = _feeds(ev)
            x86 = _x86_insns({(fmt, p): runs[p][fmt] for p in PRECISIONS}, feeds)
            a64 = q.latency.get("arm_insns", {}).get(cpus[-1]) or {}
            for p in PRECISIONS:
                proxy_pts.append((name, x86[fmt, p], side[p]["median_ms"], a64.get(p)))
            proxy_rows.append(
                f"| {name} | {fmt} | " + " | ".join(
                    f"{_m(x86[fmt, p])} / {side[p]['median_ms']:.3g} ms" for p in PRECISIONS)
                + f" | {x86[fmt, 'int8'] / x86[fmt, 'fp32']:.2f}× / "
                f"{side['int8']['median_ms'] / side['fp32']['median_ms']:.2f}× |")
    text = _text(a, cpus, insn_rows, fid_rows, proxy_rows, proxy_pts, time.perf_counter() - t0)
    print(text)
    if a.write_results:
        from bench_arm import write_results

        write_results(text, a.heading)


def _feeds(ev: Path) -> list[dict]:
    """The first two eval samples, every input (token ids keep their integer type)."""
    with np.load(ev) as z:
        xs = {k: z[k][:2] for k in z.files if k != "labels"}
    xs = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in xs.items()}
    n = len(next(iter(xs.values())))
    return [{k: v[i:i + 1] for k, v in xs.items()} for i in range(n)]


def _text(a, cpus, insn_rows, fid_rows, proxy_rows, pts, seconds) -> str:
    import platform

    from autoglm_compress.targets.arm_emulation import setup

    man = setup().manifest()
    lines = [
        a.heading, "",
        f"`.venv/bin/python bench/bench_arm_emulation.py --models {a.models} --cpus {a.cpus} "
        f"--precisions {a.precisions} --timeout {a.timeout:.0f} "
        f"--calib {a.calib} --eval {a.eval} --insns-samples {a.insns_samples}"
        f"{' --proxy-only' if a.proxy_only else ' --no-proxy' if a.no_proxy else ''}` "
        f"({seconds / 60:.0f} min on "
        f"{platform.machine()}; {man['qemu']}; aarch64 wheels {', '.join(man['wheels'])}).",
        "",
        "The artifacts `--target arm --format all` writes, run in aarch64 LiteRT (XNNPACK) and "
        "aarch64 ncnn under qemu-aarch64 (targets/arm_emulation: Debian arm64 python3.11 root + "
        "the aarch64 wheels of the same versions, one thread). Counts are guest instructions per "
        "inference (a TCG plugin, between markers after one warm-up inference): **an instruction "
        "count, not a time** — a NEON/SDOT instruction and a scalar one count the same, and "
        "cache misses are invisible. FP32/FP16 of the INT8 run are lowered side by side from the "
        "same FP32 IR, as the x86 latency does.", "",
        "Instructions per inference (FP32) and FP16 / INT8 relative to FP32:", "",
        "| model | format | -cpu | FP32 | FP16 / FP32 | INT8 / FP32 |",
        "|---|---|---|---|---|---|", *insn_rows, "",
        f"Fidelity on aarch64 ({cpus[-1]}, ≤ 8 eval samples) vs the FP32 model in onnxruntime, "
        "and aarch64 vs x86 outputs of the same file (a discrepancy is flagged below 0.9999 "
        "for FP32/FP16, 0.999 for INT8):", "",
        "| model | format | precision | x86 cosine | aarch64 cosine | aarch64 vs x86 cosine | "
        "aarch64 top-1 agr. |",
        "|---|---|---|---|---|---|---|", *fid_rows, "",
    ]
    if a.proxy_only:  # no aarch64 runs: the instruction / fidelity tables are empty
        lines = lines[:4] + ["Proxy check only (`--proxy-only`: every precision compressed with "
                             "`--verify-arm off`, no aarch64 runs).", ""]
    if proxy_rows:
        _, x86i, ms, _ = zip(*pts, strict=True)
        with_a64 = [(m, t) for _, _, t, m in pts if m is not None]
        per_model = {n: [(i, t) for m, i, t, _ in pts if m == n] for n in dict.fromkeys(
            p[0] for p in pts)}
        a64_text = (f"; of log(aarch64 {cpus[-1]} instructions) vs log(x86 ms): "
                    f"{_pearson(*zip(*with_a64, strict=True)):.3f}" if len(with_a64) > 2 else "")
        lines += [
            "Proxy check on x86: the same FP32 / FP16 / INT8 files in this machine's x86 "
            "LiteRT / ncnn, instructions counted under `qemu-x86_64 -cpu max` (same plugin) vs "
            "measured x86 latency (1 thread, interleaved medians of the INT8 run's side-by-side "
            "timing):", "",
            "| model | format | FP32 insns / ms | FP16 insns / ms | INT8 insns / ms | "
            "INT8/FP32 insns / time |",
            "|---|---|---|---|---|---|", *proxy_rows, "",
            f"Pearson r of log(x86 instructions) vs log(x86 ms) over these {len(pts)} files: "
            f"**{_pearson(x86i, ms):.3f}**{a64_text}. Within one model (its "
            "tflite and ncnn files): " + ", ".join(
                f"{n} {_pearson(*zip(*v, strict=True)):.3f}" for n, v in per_model.items()
                if len(v) > 2) + ".", "",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

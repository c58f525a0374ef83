"""INT8 benchmark: autoglm-compress vs onnxruntime.quantization.quantize_static on the same FP32 model,
calibration data and eval data, on one machine, in one run.

    .venv/bin/python bench/bench_int8.py [--models digits,cnn,transformer] [--out bench/int8_results.json]

Per model and method: accuracy (digits, with labels), top-1 agreement and cosine vs FP32 on held-out
data, quantize wall time (calibration + QDQ) and peak RSS measured in a fresh subprocess, artifact
size, and onnxruntime latency of FP32 / ours / ORT measured interleaved in one process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "examples")]

from common import peak_rss_mb  # noqa: E402

ORT_METHODS = ("MinMax", "Percentile", "Entropy")
OUR_METHODS = ("minmax", "percentile", "entropy", "mse")


def prepare(name: str, work: Path, n_calib: int = 128, n_eval: int = 500) -> dict:
    """FP32 ONNX (our front end + cleanup + fold_bn), calibration and eval feeds saved as .npz."""
    import torch

    from autoglm_compress import load
    from autoglm_compress.inputs import random_feeds
    from autoglm_compress.ir_utils import save_atomic
    from autoglm_compress.pipeline import Pipeline, build_passes

    labels = None
    if name == "digits":
        import digits

        src = ROOT / "examples" / "digits_cnn.pt"
        if not src.exists():
            subprocess.run(
                [sys.executable, str(ROOT / "examples" / "make_demo_model.py")], check=True
            )
        calib = dict(np.load(ROOT / "examples" / "digits_calib.npz"))
        ev = dict(np.load(ROOT / "examples" / "digits_eval.npz"))
        labels = ev.pop("labels")
        _ = digits
    else:
        import models

        src = work / f"{name}.onnx"
        models.save_onnx(wide_cnn() if name == "wide_cnn" else models.ZOO[name](), src)
    model = load(src)
    Pipeline(build_passes(["cleanup", "fold_bn"]), progress=False).run(model)
    fp32 = work / f"{name}.fp32.onnx"
    save_atomic(model, fp32)
    if name != "digits":
        feeds = random_feeds(model, n=n_calib + min(n_eval, 200), seed=0)
        stack = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        calib = {k: v[:n_calib] for k, v in stack.items()}
        ev = {k: v[n_calib:] for k, v in stack.items()}
    np.savez(work / f"{name}.calib.npz", **calib)
    np.savez(work / f"{name}.eval.npz", **ev)
    torch.set_num_threads(2)
    return {
        "fp32": fp32,
        "calib": work / f"{name}.calib.npz",
        "eval": work / f"{name}.eval.npz",
        "labels": labels,
    }


def wide_cnn():
    """A ResNet-style CNN big enough that kernels, not per-op overhead, dominate latency
    (1×3×96×96, 32→64→128 channels, 9 convs, ~0.6 M params; random weights, randomized BN)."""
    import models
    import torch
    from torch import nn

    def block(cin, cout, stride):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        block(32, 32, 1),
        block(32, 64, 2),
        block(64, 128, 2),
        block(128, 128, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    ).eval()
    models._randomize_bn(net, torch.Generator().manual_seed(1))
    return models.ZooModel(
        "wide_cnn", net, {"x": torch.randn(1, 3, 96, 96)}, ["logits"], "classifier"
    )


def _per_sample(npz: Path) -> list[dict]:
    d = dict(np.load(npz))
    n = len(next(iter(d.values())))
    return [{k: v[i : i + 1] for k, v in d.items()} for i in range(n)]


def quantize_one(tool: str, method: str, fp32: str, calib: str, out: str, samples: int) -> dict:
    """Runs in a fresh subprocess so wall time and peak RSS belong to this quantization alone.
    ``seconds`` excludes module imports (torch for us, onnxruntime for ORT); ``process_s`` includes them."""
    t_proc = time.perf_counter()
    if tool == "ours":
        from qhelpers import quantize_with as _quantize

        from autoglm_compress import load
        from autoglm_compress.ir_utils import save_atomic
        from autoglm_compress.quantization.collect import collect_stats
        from autoglm_compress.targets.x86 import X86Target

        t0 = time.perf_counter()
        model = load(fp32, simplify=False)
        feeds = _cycle(_per_sample(Path(calib)), samples)
        stats = collect_stats(model, feeds, method, limit=samples)
        q, _ = _quantize(model, X86Target(), stats, (), False)
        save_atomic(q, out)
    else:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        t0 = time.perf_counter()

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(_cycle(_per_sample(Path(calib)), samples))

            def get_next(self):
                return next(self.it, None)

        quantize_static(
            fp32,
            out,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
        )
    return {
        "seconds": round(time.perf_counter() - t0, 3),
        "process_s": round(time.perf_counter() - t_proc, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _cycle(feeds: list[dict], n: int):
    for i in range(n):
        yield feeds[i % len(feeds)]


def run_sub(tool, method, fp32, calib, out, samples) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        tool,
        method,
        str(fp32),
        str(calib),
        str(out),
        str(samples),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def evaluate(fp32: Path, artifacts: dict[str, Path], eval_npz: Path, labels) -> dict:
    from autoglm_compress.ir_utils import ort_run, ort_session
    from autoglm_compress.metrics import compare_latency, fidelity
    from autoglm_compress.targets.x86.fusion import fusion_report

    feeds = _per_sample(eval_npz)
    ref_sess = ort_session(str(fp32))
    ref = [ort_run(ref_sess, f) for f in feeds]
    names = [o.name for o in ref_sess.get_outputs()]
    sessions = {"fp32": ref_sess}
    res: dict = {"fp32": {"size_bytes": fp32.stat().st_size}}
    if labels is not None:
        res["fp32"]["accuracy"] = float(
            (np.concatenate([r[0] for r in ref]).argmax(-1) == labels).mean()
        )
    for key, path in artifacts.items():
        sess = ort_session(str(path))
        sessions[key] = sess
        fid = fidelity(ref, [ort_run(sess, f) for f in feeds], names, labels)
        first = next(iter(fid["outputs"].values()))
        fus = fusion_report(str(path))
        res[key] = {
            "size_bytes": path.stat().st_size,
            "cosine": fid["cosine_min"],
            "top1_agreement": first.get("top1_agreement"),
            "accuracy": first.get("accuracy"),
            "int8_nodes": fus["int8_compute_nodes"],
            "float_compute_nodes": fus["float_compute_nodes"],
        }
    feed = feeds[0]
    lat = compare_latency(  # all repeats: a benchmark, not a verification budget
        {k: (lambda s=s: ort_run(s, feed)) for k, s in sessions.items()},
        repeats=200,
        warmup=20,
        budget_s=float("inf"),
    )
    for k in sessions:
        res[k]["latency_ms"] = lat[k]["median_ms"]
        res[k]["latency_vs_fp32"] = round(lat[k]["median_ms"] / lat["fp32"]["median_ms"], 3)
    return res


def bench_model(name: str, work: Path, samples: int) -> dict:
    d = prepare(name, work)
    artifacts, timing = {}, {}
    for m in OUR_METHODS:
        out = work / f"{name}.ours-{m}.onnx"
        timing[f"ours-{m}"] = run_sub("ours", m, d["fp32"], d["calib"], out, samples)
        if "error" not in timing[f"ours-{m}"]:
            artifacts[f"ours-{m}"] = out
    for m in ORT_METHODS:
        out = work / f"{name}.ort-{m}.onnx"
        timing[f"ort-{m}"] = run_sub("ort", m, d["fp32"], d["calib"], out, samples)
        if "error" not in timing[f"ort-{m}"]:
            artifacts[f"ort-{m}"] = out
    res = evaluate(d["fp32"], artifacts, d["eval"], d["labels"])
    for k, t in timing.items():
        res.setdefault(k, {}).update(t)
    return res


def memory_scaling(work: Path) -> dict:
    d = prepare("cnn", work)
    return {
        n: run_sub("ours", "entropy", d["fp32"], d["calib"], work / f"mem{n}.onnx", n)
        for n in (128, 2048)
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        tool, method, fp32, calib, out, samples = sys.argv[2:8]
        print(json.dumps(quantize_one(tool, method, fp32, calib, out, int(samples))))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="digits,cnn,wide_cnn,transformer")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "bench" / "int8_results.json"))
    ap.add_argument("--no-memory", action="store_true")
    a = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            results[name] = bench_model(name, Path(tmp), a.samples)
            print(name, json.dumps(results[name], indent=1), flush=True)
        if not a.no_memory:
            results["memory_scaling_cnn_entropy"] = memory_scaling(Path(tmp))
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))


def format_table(results: dict) -> str:
    lines = []
    for name, res in results.items():
        if name.startswith("memory"):
            lines.append(
                f"\n{name}: "
                + ", ".join(f"{n} samples: {v.get('peak_rss_mb')} MB" for n, v in res.items())
            )
            continue
        lines += [
            f"\n### {name}",
            "| method | acc | top-1 agr | cosine | size | latency vs fp32 | "
            "int8/float nodes | quantize s | peak MB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for k, r in res.items():
            acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.4f}"
            agr = "-" if r.get("top1_agreement") is None else f"{r['top1_agreement']:.4f}"
            cos = "-" if r.get("cosine") is None else f"{r['cosine']:.5f}"
            lines.append(
                f"| {k} | {acc} | {agr} | {cos} | {r.get('size_bytes', 0) / 1e3:.0f} KB | "
                f"{r.get('latency_vs_fp32', '-')} | {r.get('int8_nodes', '-')}/"
                f"{r.get('float_compute_nodes', '-')} | {r.get('seconds', '-')} | "
                f"{r.get('peak_rss_mb', '-')} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

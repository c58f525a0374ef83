"""QAT benchmark: PTQ vs PTQ + QAT (distillation from FP32) on trained digits models, per target scheme.

    .venv/bin/python bench/bench_qat.py [--steps 300] [--out bench/qat_results.json]

Models: the shipped digits CNN, and a depthwise-separable digits net with ReLU6 (trained here for 30
epochs, ~15 s; per-tensor weights make it the hard case). 128 calibration samples; QAT trains on
samples 17-144 of the calibration file (the first 16 are held out for the PTQ/QAT choice); fidelity on the 500 labelled eval digits, artifacts run in
onnxruntime. rel MSE = Σ(y_q − y)² / Σy² over the eval logits.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "examples")]


class DepthwiseDigits(nn.Module):
    def __init__(self):
        super().__init__()

        def dw_sep(cin, cout, stride):
            return nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.ReLU6(),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU6(),
            )

        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU6())
        self.body = nn.Sequential(dw_sep(16, 32, 1), dw_sep(32, 64, 2), dw_sep(64, 64, 1))
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def train_depthwise(epochs: int = 30) -> nn.Module:
    from digits import load_digits_split

    x_tr, y_tr = load_digits_split()[:2]
    torch.manual_seed(0)
    m = DepthwiseDigits()
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    x, y = torch.from_numpy(x_tr), torch.from_numpy(y_tr).long()
    for _ in range(epochs):  # a fixed epoch count (not seconds): the same net on every machine
        for i in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x[i]), y[i]).backward()
            opt.step()
    return m.eval()


def _score(q, feeds, labels, ref):
    from autoglm_compress.ir_utils import ort_run, ort_session
    from autoglm_compress.metrics import fidelity

    sess = ort_session(q)
    outs = [ort_run(sess, f) for f in feeds]
    fid = fidelity(ref, outs, [v.name for v in q.graph.outputs])
    err = sum(float(((o[0] - r[0]) ** 2).sum()) for o, r in zip(outs, ref))
    acc = float(np.mean([o[0].argmax() == lab for o, lab in zip(outs, labels)]))
    return {
        "acc": acc,
        "cosine_min": round(fid["cosine_min"], 6),
        "rel_mse": err / sum(float((r[0] ** 2).sum()) for r in ref),
    }


def bench_model(name, path, steps: int) -> list[dict]:
    from qhelpers import calibrate_with as calibrate
    from qhelpers import finetune_with
    from qhelpers import quantize_with as _quantize

    from autoglm_compress import load
    from autoglm_compress.inputs import load_npz_feeds
    from autoglm_compress.ir_utils import ort_run, ort_session
    from autoglm_compress.pipeline import Pipeline, build_passes
    from autoglm_compress.targets.cuda import CudaTarget
    from autoglm_compress.targets.x86 import X86Target

    model = load(path)
    Pipeline(build_passes(["cleanup", "fold_bn"]), progress=False).run(model)
    stats, _ = calibrate(
        model, str(ROOT / "examples/digits_calib.npz"), "minmax", 128, False, False
    )
    feeds, labels = load_npz_feeds(ROOT / "examples/digits_eval.npz", model, limit=500)
    ref = [ort_run(ort_session(model), f) for f in feeds]
    fp32_acc = float(np.mean([r[0].argmax() == lab for r, lab in zip(ref, labels)]))
    rows = []
    for tgt, per_tensor in [
        (X86Target(), False),
        (X86Target(), True),
        (CudaTarget(), False),
        (CudaTarget(), True),
    ]:
        ptq, _ = _quantize(model, tgt, stats, [], per_tensor, True)
        t0 = time.perf_counter()
        q, _, rec = finetune_with(model, ptq, tgt, stats, steps=steps, per_tensor=per_tensor)
        row = {
            "model": name,
            "target": tgt.name,
            "weights": "per-tensor" if per_tensor else "per-channel",
            "fp32_acc": fp32_acc,
            "ptq": _score(ptq, feeds, labels, ref),
            "qat": _score(q, feeds, labels, ref),
            "qat_seconds": round(time.perf_counter() - t0, 2),
            "kept": rec.stats["kept"],
            "loss_before": rec.stats["loss_before"],
            "loss_after": rec.stats["loss_after"],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "bench" / "qat_results.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    import models

    rows = bench_model("digits_cnn", ROOT / "examples" / "digits_cnn.pt", args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        dw = models.ZooModel(
            "depthwise", train_depthwise(), {"x": torch.zeros(1, 1, 8, 8)}, ["output"], "classifier"
        )
        rows += bench_model(
            "depthwise_relu6", models.save_onnx(dw, Path(tmp) / "dw.onnx"), args.steps
        )
    Path(args.out).write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=1))
    print(
        "\n| model | target | weights | fp32 acc | PTQ acc | QAT acc | PTQ rel MSE | QAT rel MSE "
        "| ratio | PTQ cos | QAT cos | kept | QAT s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p, q = r["ptq"], r["qat"]
        print(
            f"| {r['model']} | {r['target']} | {r['weights']} | {r['fp32_acc']:.3f} | "
            f"{p['acc']:.3f} | {q['acc']:.3f} | {p['rel_mse']:.2e} | {q['rel_mse']:.2e} | "
            f"{q['rel_mse'] / p['rel_mse']:.2f} | {p['cosine_min']:.5f} | {q['cosine_min']:.5f} | "
            f"{r['kept']} | {r['qat_seconds']} |"
        )


if __name__ == "__main__":
    main()

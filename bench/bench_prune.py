"""Structured pruning + distillation (+ INT8) side by side in one run.

    .venv/bin/python bench/bench_prune.py [--ratios 0.3,0.5,0.7] [--steps 2000] [--effnet]
        [--bert-steps N] [--yolo] [--resnet-steps N] [--torch-pruning DIR] [--work /tmp/bench_prune]
        [--write-results]

Digits CNN (examples/): for each ratio, ``compress --prune R`` (no fine-tuning), then with
``--distill-steps N`` on the 1297 training images (label-free, from the unpruned model), then that
plus ``--int8`` (x86): params, MACs, onnxruntime latency vs the unpruned FP32 model (the report's
interleaved timing), accuracy on the 500 held-out digits. ``--effnet``: EfficientNet-Lite1 (ImageNet
weights) pruned without fine-tuning — MACs, params and onnxruntime latency at each ratio (its
accuracy needs ImageNet-scale distillation data, not available here). ``--bert-steps N``: a
BERT-style encoder (hidden 512, 6 layers, 8 heads; attention heads and FFN units pruned) without and
with N distillation steps. ``--yolo``: the nudenet YOLOv8n pruned through its C2f Splits.
``--resnet-steps N``: the wider ResNet-style CNN (bench/resnet_digits.py, 32×32 digits) pruned,
distilled N steps and INT8. ``--torch-pruning DIR``: the peer on the digits CNN (and the ResNet) at
the same ratios and distillation recipe.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples"), str(ROOT / "tests" / "real"),
                str(ROOT / "bench")]
HEADING = "## Structured pruning and distillation"
EXTRA_TABLES: list[list[str]] = []  # tables a model section adds after the main one


def _row(label, res, t0) -> dict:
    art = next(iter(res.artifacts))
    rep = res.report
    out = next(iter(art.fidelity["outputs"].values()))
    return {"model": label[0], "run": label[1],
            "params": rep["model"]["stats_after"]["params"],
            "macs_m": round(rep["model"]["stats_after"]["macs"] / 1e6, 2),
            "macs_ratio": round(rep["model"]["stats_after"]["macs"]
                                / rep["model"]["stats_before"]["macs"], 3),
            "accuracy": out.get("accuracy"), "top1": out.get("top1_agreement"),
            "cosine": round(art.fidelity["cosine_min"], 4),
            "latency_vs_fp32": round(1 / art.latency["speedup_vs_fp32"], 2),
            "wall_s": round(time.perf_counter() - t0, 1)}


def _latency_ratio(fp32: str, path: str, repeats: int = 200, feed: dict | None = None) -> float:
    """Median latency of ``path`` over ``fp32``'s, interleaved in one process (onnxruntime);
    ``feed`` by input name (default: one zero digit)."""
    from autoglm_compress.ir_utils import ort_session

    s = {k: ort_session(p) for k, p in (("a", fp32), ("b", path))}
    if feed is None:
        feed = {s["a"].get_inputs()[0].name: np.zeros((1, 1, 8, 8), np.float32)}
    t = {"a": [], "b": []}
    for _ in range(repeats):
        for k, sess in s.items():
            x = {i.name: feed[i.name] for i in sess.get_inputs()}
            t0 = time.perf_counter()
            sess.run(None, x)
            t[k].append(time.perf_counter() - t0)
    return float(np.median(t["b"]) / np.median(t["a"]))


def _torch_pruning(ratios, steps, work, train, tp_path, rows, model="digits", ev=None,
                   weights=None, lr: float | None = None) -> list[dict]:
    """torch-pruning at the same channel ratios + the same distillation recipe (label-free);
    latency of its ONNX and of ours at that ratio, each against our FP32 artifact."""
    import json
    import os
    import subprocess

    fp32 = next(r["onnx"] for r in rows if r["run"] == "FP32" and r["model"] == model)
    ev = ev or ROOT / "examples" / "digits_eval.npz"
    feed = {"x": np.load(ev)["x"][:1]}
    out = []
    for r in ratios:
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": tp_path, "OMP_NUM_THREADS": "1"}
        extra = ["--model", model] + (["--weights", str(weights)] if weights else []) + (
            ["--lr", str(lr)] if lr else [])
        p = subprocess.run([sys.executable, str(ROOT / "bench" / "peers" / "tp_prune.py"),
                            "--ratio", str(r), "--round-to", "8", "--steps", str(steps),
                            "--train", str(train), "--eval", str(ev), *extra,
                            "--out", str(work / f"tp_{model}_{r}")], capture_output=True,
                           text=True, env=env, check=True)
        peer = json.loads(p.stdout.strip().splitlines()[-1])
        ours = next(x for x in rows
                    if x["run"] == f"prune {r} + distill {steps}" and x["model"] == model)
        out.append({"model": model, "run": f"torch-pruning {r} + same distill {steps}",
                    "params": peer["params"], "macs_m": round(peer["macs"] / 1e6, 2),
                    "macs_ratio": round(peer["macs_ratio"], 3), "accuracy": peer["accuracy"],
                    "top1": "-", "cosine": "-",
                    "latency_vs_fp32": round(_latency_ratio(fp32, peer["onnx"], feed=feed), 2),
                    "wall_s": round(time.perf_counter() - t0, 1),
                    "vs_ours": round(_latency_ratio(ours["onnx"], peer["onnx"], feed=feed), 2)})
        print(out[-1], flush=True)
    return out


def run(ratios, steps, effnet, work: Path, tp_path: str | None = None) -> list[dict]:
    from digits import load_digits_split

    from autoglm_compress import compress

    ex = ROOT / "examples"
    x_train = load_digits_split()[0]
    train = work / "digits_train.npz"
    np.savez(train, x=x_train)
    rows = []
    common = dict(targets="x86", eval_data=ex / "digits_eval.npz", samples=500,
                  latency_repeats=30)
    for r in [0.0, *ratios]:
        runs = [("FP32", {})] if r == 0 else [
            (f"prune {r}", {"prune": r}),
            (f"prune {r} + distill {steps}", {"prune": r, "distill_steps": steps}),
            (f"prune {r} + distill {steps} + INT8", {"prune": r, "distill_steps": steps,
                                                     "int8": True})]
        for name, kw in runs:
            t0 = time.perf_counter()
            res = compress(ex / "digits_cnn.pt", calib=train, calib_samples=len(x_train),
                           out_dir=work / name.replace(" ", "_"), **common, **kw)
            rows.append(_row(("digits", name), res, t0))
            rows[-1]["onnx"] = str(res.artifacts[0].path)
            print(rows[-1], flush=True)
    y_train = load_digits_split()[1]
    labelled = work / "digits_train_labels.npz"
    np.savez(labelled, x=x_train, labels=y_train)
    for name, kw in (
        (f"MACs 0.5 (multiple 4) + distill {steps}, labels", {}),
        (f"MACs 0.5 (multiple 4) + distill {steps}, labels + INT8", {"int8": True}),
    ):
        t0 = time.perf_counter()
        res = compress(ex / "digits_cnn.pt", calib=train, calib_samples=len(x_train),
                       out_dir=work / f"macs_{len(rows)}", prune_macs=0.5, prune_multiple=4,
                       distill_steps=steps, train_data=labelled, **common, **kw)
        rows.append(_row(("digits", name), res, t0))
        print(rows[-1], flush=True)
    if tp_path:
        rows += _torch_pruning(ratios, steps, work, train, tp_path, rows)
    if effnet:
        import zoo

        rm = zoo.efficientnet_lite1(work / "effnet", 64, 64)
        rows += _pruned_only("effnet", rm, EFFNET_RATIOS, work, calib=True)
        if tp_path:
            rows += _tp_effnet(EFFNET_RATIOS, work, rm, rows[-1 - 2 * len(EFFNET_RATIOS)]["onnx"],
                               tp_path)
    return rows


# a pretrained mobile CNN collapses at 0.3 without ImageNet fine-tuning (every tool measured):
# its pruned-only rows compare the criteria where they still differ
EFFNET_RATIOS = (0.05, 0.1, 0.2)


def _tp_bert(ratios, work: Path, pe: Path, fp32_onnx: str, tp_path: str) -> list[dict]:
    """torch-pruning's heads + FFN at the same ratios (no fine-tuning): params, hidden-state
    cosine, onnxruntime latency against our unpruned FP32 artifact (interleaved)."""
    import json
    import os
    import subprocess

    from autoglm_compress import load
    from autoglm_compress.ir_utils import save_atomic

    feed = {k: v[:1] for k, v in np.load(pe).items()}
    out = []
    for r in ratios:
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": tp_path}
        p = subprocess.run([sys.executable, str(ROOT / "bench" / "peers" / "tp_prune_bert.py"),
                            "--ratio", str(r), "--eval", str(pe), "--out",
                            str(work / f"tp_bert_{r}")], capture_output=True, text=True, env=env,
                           check=True)
        peer = json.loads(p.stdout.strip().splitlines()[-1])
        onnx_path = work / f"tp_bert_{r}" / "tp_bert.onnx"
        save_atomic(load(peer["onnx"]), onnx_path)
        out.append({"model": "bert", "run": f"torch-pruning {r} (heads {peer['heads'][0]}/8, "
                    f"FFN {peer['ffn'][0]}/2048)", "params": peer["params"], "macs_m": "-",
                    "macs_ratio": "-", "accuracy": None, "top1": "-",
                    "cosine": round(peer["cosine"], 4),
                    "latency_vs_fp32": round(_latency_ratio(fp32_onnx, str(onnx_path), 30,
                                                            feed), 2),
                    "wall_s": round(time.perf_counter() - t0, 1)})
        print(out[-1], flush=True)
    return out


def run_bert(ratios, steps: int, work: Path, tp_path: str | None = None) -> list[dict]:
    """The BERT-style encoder of bench_real (hidden 512, 6 layers, 8 heads of 64, FFN 2048,
    seq 128, random weights): heads + FFN units pruned at each ratio, without and with ``steps``
    of distillation on 64 random-token sequences; cosine on 16 held-out ones."""
    from bench_real import _bert

    from autoglm_compress import compress

    path, pc, pe = _bert(work, 64, 16)
    rows = []
    common = dict(targets="x86", calib=pc, eval_data=pe, samples=16, latency_repeats=20)
    for r in [0.0, *ratios]:
        runs = [("FP32", {})] if r == 0 else [(f"prune {r}", {"prune": r})] + (
            [(f"prune {r} + distill {steps}", {"prune": r, "distill_steps": steps,
                                               "distill_samples": 64})] if steps else [])
        for name, kw in runs:
            t0 = time.perf_counter()
            res = compress(path, out_dir=work / f"bert_{name.replace(' ', '_')}", **common,
                           **kw)
            rows.append(_row(("bert", name), res, t0))
            rows[-1]["onnx"] = str(res.artifacts[0].path)
            print(rows[-1], flush=True)
    if tp_path:
        rows += _tp_bert(ratios, work, pe, rows[0]["onnx"], tp_path)
    return rows


def _pruned_only(label: str, rm, ratios, work: Path, calib: bool = False) -> list[dict]:
    """A real model (zoo) at each ratio without fine-tuning: MACs, params, latency, fidelity;
    ``calib``: each ratio also with the model's calibration data (act importance + compensation,
    the defaults with data)."""
    from autoglm_compress import compress

    rows = []
    for r in [0.0, *ratios]:
        runs = [("FP32", {})] if not r else [(f"prune {r}", {"prune": r})] + (
            [(f"prune {r}, calib (act + compensate)", {"prune": r, "calib": rm.calib})]
            if calib else [])
        for name, kw in runs:
            t0 = time.perf_counter()
            res = compress(rm.model, targets="x86", eval_data=rm.eval, samples=16,
                           latency_repeats=20, out_dir=work / f"{label}_{name.split(',')[0]}_"
                           f"{len(rows)}", **kw)
            rows.append(_row((label, name), res, t0))
            rows[-1]["onnx"] = str(res.artifacts[0].path)
            print(rows[-1], flush=True)
    return rows


def _tp_effnet(ratios, work: Path, rm, fp32_onnx: str, tp_path: str) -> list[dict]:
    """torch-pruning on EfficientNet-Lite1 at the same ratios (L1 and Taylor, no fine-tuning):
    params, MACs share, fidelity on the same eval crops, latency against our FP32 artifact."""
    import json
    import os
    import subprocess

    from autoglm_compress import load
    from autoglm_compress.ir_utils import save_atomic

    feed = {"inputs": np.load(rm.eval)["inputs"][:1]}
    out = []
    for r in ratios:
        for imp in ("l1", "taylor"):
            t0 = time.perf_counter()
            dest = work / f"tp_effnet_{imp}_{r}"
            p = subprocess.run([sys.executable, str(ROOT / "bench" / "peers" / "tp_prune_effnet.py"),
                                "--ratio", str(r), "--importance", imp, "--calib", str(rm.calib),
                                "--eval", str(rm.eval), "--out", str(dest)], capture_output=True,
                               text=True, env={**os.environ, "PYTHONPATH": tp_path}, check=True)
            peer = json.loads(p.stdout.strip().splitlines()[-1])
            onnx_path = dest / "tp_effnet.onnx"
            m = load(peer["pt"])
            save_atomic(m, onnx_path)
            feed[m.graph.inputs[0].name] = feed["inputs"]
            out.append({"model": "effnet", "run": f"torch-pruning {r} ({imp})",
                        "params": peer["params"], "macs_m": "-",
                        "macs_ratio": round(peer["macs_ratio"], 3), "accuracy": None,
                        "top1": round(peer["top1"], 3), "cosine": round(peer["cosine"], 4),
                        "latency_vs_fp32": round(_latency_ratio(fp32_onnx, str(onnx_path), 30,
                                                                feed), 2),
                        "wall_s": round(time.perf_counter() - t0, 1)})
            print(out[-1], flush=True)
    return out


def run_effnet_distill(steps: int, work: Path, n_train: int = 1024) -> list[dict]:
    """EfficientNet-Lite1 pruned to half its MACs (global L1), distilled for ``steps`` on
    ``n_train`` random crops of the bundled calibration photos (no ImageNet here: the teacher's
    outputs are the only labels); then that artifact to INT8 (x86, default flags, 128 of the crops
    as calibration). Top-1 agreement / cosine with the unpruned FP32 model on 128 crops of the
    held-out photos (the INT8 row computed here against the original, not the pruned model)."""
    import real_data as rd
    import zoo

    from autoglm_compress import compress, load
    from autoglm_compress.ir_utils import ort_run, ort_session

    rm = zoo.efficientnet_lite1(work / "effnet_kd", n_calib=32, n_eval=128)
    train = work / "effnet_train.npz"
    if not train.exists():
        np.savez(train, inputs=rd.natural_crops(n_train, 240, split="calib", seed=7))
    t0 = time.perf_counter()
    res0 = compress(rm.model, targets="x86", calib=train, calib_samples=n_train, prune_macs=0.5,
                    prune_scope="global", eval_data=rm.eval, samples=128, latency_repeats=20,
                    out_dir=work / "effnet_prune_fp32")
    row0 = _row(("effnet", "MACs 0.5 global, calib (act + compensate)"), res0, t0)
    print(row0, flush=True)
    t0 = time.perf_counter()
    res = compress(rm.model, targets="x86", calib=train, calib_samples=n_train, train_data=train,
                   distill_samples=n_train, distill_steps=steps, prune_macs=0.5,
                   prune_scope="global", eval_data=rm.eval, samples=128, latency_repeats=20,
                   out_dir=work / "effnet_kd_fp32")
    rows = [row0, _row(("effnet", f"MACs 0.5 global + distill {steps}"), res, t0)]
    print(rows[-1], flush=True)
    t0 = time.perf_counter()
    q = compress(res.artifacts[0].path, targets="x86", int8=True, calib=train, calib_samples=128,
                 eval_data=rm.eval, samples=128, latency_repeats=20, out_dir=work / "effnet_kd_q")
    row = _row(("effnet", f"MACs 0.5 global + distill {steps} + INT8"), q, t0)
    x = np.load(rm.eval)["inputs"]
    ref_sess, q_sess = ort_session(load(rm.model)), ort_session(q.artifacts[0].path)
    ref = np.concatenate([ort_run(ref_sess, {"inputs": x[i:i + 1]})[0] for i in range(len(x))])
    got = np.concatenate([ort_run(q_sess, {"inputs": x[i:i + 1]})[0] for i in range(len(x))])
    cos = (ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got)  # as the report's
    row.update(top1=round(float((ref.argmax(1) == got.argmax(1)).mean()), 3),
               cosine=round(float(cos), 4), macs_ratio=rows[0]["macs_ratio"],
               latency_vs_fp32=round(rows[0]["latency_vs_fp32"] * row["latency_vs_fp32"], 2))
    rows.append(row)
    print(rows[-1], flush=True)
    import effnet_fidelity

    arts = {r["run"]: (str(a.artifacts[0].path), r["macs_ratio"]) for r, a in
            zip(rows, (res0, res, q))}
    fid = effnet_fidelity.table(work, rm.model, rm.eval, arts)
    EXTRA_TABLES.append(["", "EfficientNet-Lite1 fidelity beyond top-1 agreement (bench/"
                         "effnet_fidelity.py; 128 natural-image crops of held-out photos, 20 "
                         "labelled ImageNet validation photos from foolbox's wheel):", "",
                         *effnet_fidelity.render(fid)])
    print("\n".join(EXTRA_TABLES[-1]), flush=True)
    return rows


def _resnet_files(work: Path, epochs: int = 6) -> dict[str, Path]:
    """The ResNet-style digits CNN (bench/resnet_digits.py) trained once per work folder:
    TorchScript + state_dict, 32×32 train (with labels), calibration and eval npz files."""
    import torch
    from resnet_digits import resnet_data, train_resnet

    f = {k: work / f"resnet_{k}" for k in ("model.pt", "state.pt", "train.npz", "eval.npz")}
    if not all(p.exists() for p in f.values()):
        model, acc = train_resnet(epochs)
        print(f"resnet trained: held-out accuracy {acc:.3f}", flush=True)
        d = resnet_data()
        torch.jit.save(torch.jit.trace(model, torch.from_numpy(d["x_eval"][:1])), str(f["model.pt"]))
        torch.save(model.state_dict(), f["state.pt"])
        np.savez(f["train.npz"], x=d["x_train"], labels=d["y_train"])
        np.savez(f["eval.npz"], x=d["x_eval"], labels=d["y_eval"])
    return f


def run_resnet(ratios, steps: int, work: Path, tp_path: str | None = None) -> list[dict]:
    """The wider ResNet-style CNN (widths 32/64/128, 0.7 M params, 32×32 digits): at each ratio
    pruned (calibration data: act importance + compensation), + ``steps`` of label-free
    distillation on the 1297 training images, + INT8; accuracy on the 500 held-out digits;
    torch-pruning at the same ratios with the same recipe."""
    from autoglm_compress import compress

    f = _resnet_files(work)
    rows = []
    common = dict(targets="x86", eval_data=f["eval.npz"], samples=500, latency_repeats=30,
                  calib=f["train.npz"], calib_samples=256)
    for r in [0.0, *ratios]:
        runs = [("FP32", {})] if r == 0 else [
            (f"prune {r}", {"prune": r}),
            (f"prune {r} + distill {steps}", {"prune": r, "distill_steps": steps,
                                              "train_data": f["train.npz"],
                                              "distill_label_weight": 0.0}),
            (f"prune {r} + distill {steps} + INT8", {"prune": r, "distill_steps": steps,
                                                     "train_data": f["train.npz"],
                                                     "distill_label_weight": 0.0, "int8": True})]
        for name, kw in runs:
            t0 = time.perf_counter()
            res = compress(f["model.pt"], out_dir=work / f"resnet_{name.replace(' ', '_')}",
                           **common, **kw)
            rows.append(_row(("resnet", name), res, t0))
            rows[-1]["onnx"] = str(res.artifacts[0].path)
            if r:  # timed as the peer's: against our FP32 artifact, interleaved, 200 runs
                rows[-1]["latency_vs_fp32"] = round(_latency_ratio(
                    rows[0]["onnx"], rows[-1]["onnx"], feed={"x": np.load(f["eval.npz"])["x"][:1]}), 2)
            print(rows[-1], flush=True)
    if tp_path:
        # the peer's default lr 3e-3 diverges on this model (0.088 after 300 steps); 1e-3 is its
        # best of 3e-3 / 1e-3 / 3e-4 here
        rows += _torch_pruning(ratios, steps, work, f["train.npz"], tp_path, rows, "resnet",
                               f["eval.npz"], f["state.pt"], lr=1e-3)
    return rows


def _det_agree(fp32_onnx: str, onnx_path: str, ev: Path) -> float:
    """Top-50 detection agreement (bench/common.py) of ``onnx_path`` with the FP32 model."""
    from common import detection_agreement

    from autoglm_compress.ir_utils import ort_session

    x = next(iter(np.load(ev).values()))
    runs = []
    for p in (fp32_onnx, onnx_path):
        sess = ort_session(p)
        name = sess.get_inputs()[0].name
        runs.append([sess.run(None, {name: x[i:i + 1]}) for i in range(len(x))])
    return detection_agreement(*runs)["det_agree"]


def run_yolo(ratios, work: Path, tp_path: str | None = None) -> list[dict]:
    """nudenet YOLOv8n (C2f: Split + Concat + residuals), pruned without fine-tuning; with
    ``tp_path`` torch-pruning at the same ratios (bench/peers/tp_prune_yolo.py). Each row also gets
    the top-50 detection agreement with the unpruned model."""
    import json
    import os
    import subprocess

    import zoo

    rm = zoo.nudenet_yolov8n(work / "yolo", 64, 16)
    rows = _pruned_only("yolov8n", rm, ratios, work, calib=True)
    fp32 = rows[0]["onnx"]
    for r in rows:
        r["top1"] = _det_agree(fp32, r["onnx"], rm.eval)  # the column holds detection agreement
    for r in ratios if tp_path else []:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, str(ROOT / "bench" / "peers" / "tp_prune_yolo.py"),
                            "--model", str(rm.model), "--ratio", str(r), "--eval", str(rm.eval),
                            "--out", str(work / f"tp_yolo_{r}")], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": tp_path}, check=True)
        peer = json.loads(p.stdout.strip().splitlines()[-1])
        feed = {"images": next(iter(np.load(rm.eval).values()))[:1]}
        rows.append({"model": "yolov8n", "run": f"torch-pruning {r} (L1, head ignored)",
                     "params": peer["params"], "macs_m": "-",
                     "macs_ratio": round(peer["macs_ratio"], 3), "accuracy": None,
                     "top1": _det_agree(fp32, peer["onnx"], rm.eval),
                     "cosine": round(peer["cosine"], 4),
                     "latency_vs_fp32": round(_latency_ratio(fp32, peer["onnx"], 30, feed), 2),
                     "wall_s": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    return rows


def render(rows, cmd) -> str:
    lines = [HEADING, "", f"`{cmd}` (2-core AVX2 VM shared with other jobs; onnxruntime CPU; "
             "latency = the artifact's median over the unpruned FP32 model's in the same "
             "interleaved run)", "",
             "| model | run | params | MACs (M) | MACs vs FP32 | accuracy | top-1 agree | cosine "
             "| latency vs FP32 | wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['run']} | {r['params']} | {r['macs_m']} | {r['macs_ratio']} | "
              f"{r['accuracy'] if r['accuracy'] is not None else '-'} | {r['top1']} | "
              f"{r['cosine']} | {r['latency_vs_fp32']}× | {r['wall_s']} |" for r in rows]
    lines += ["", "Distillation is label-free (normalised MSE to the unpruned model's outputs, "
              "default lr 0.05 relative to each tensor's RMS) on the 1297 digits training images, "
              "except the 'labels' rows (+ 0.5·cross-entropy); accuracy is on the 500 held-out "
              "digits. torch-pruning rows: its MetaPruner (L1, round_to 8, classifier ignored) "
              "and the same distillation recipe in plain PyTorch (bench/peers/tp_prune.py); "
              "latency against our FP32 artifact, interleaved (200 runs). 'calib' rows: the same prune "
              "with the model's calibration data (64 samples), i.e. our defaults with data: act "
              "importance + regression compensation; rows without it have no data (l1). "
              "EfficientNet pruned-only rows: 64 natural-image crops each for calibration and "
              "evaluation, torch-pruning rows on the same crops (bench/peers/tp_prune_effnet.py, "
              "MetaPruner uniform, round_to 8, L1 or Taylor on 16 crops). The EfficientNet "
              "distill rows train on 1024 crops of the calibration photos and are compared on "
              "128 crops of five other photos.", ""]
    for extra in EXTRA_TABLES:
        lines += [*extra, ""]
    return "\n".join(lines)


def main() -> None:
    from bench_arm import write_results

    ap = argparse.ArgumentParser()
    ap.add_argument("--ratios", default="0.3,0.5,0.7")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--effnet", action="store_true")
    ap.add_argument("--bert-steps", type=int, default=-1,
                    help="run the BERT-style encoder rows with this many distillation steps "
                    "(0: pruned only; default: not run)")
    ap.add_argument("--yolo", action="store_true", help="run the YOLOv8n rows (pruned only)")
    ap.add_argument("--resnet-steps", type=int, default=0,
                    help="the ResNet-style digits CNN rows with this many distillation steps "
                    "(0: not run)")
    ap.add_argument("--effnet-steps", type=int, default=0,
                    help="EfficientNet-Lite1 at half the MACs + this many distillation steps "
                    "(+ INT8); 0: not run")
    ap.add_argument("--only-extra", action="store_true",
                    help="skip the digits rows (run only --bert-steps / --yolo / --effnet-steps)")
    ap.add_argument("--torch-pruning", default="",
                    help="folder holding the torch_pruning package (pip install --target DIR "
                    "--no-deps torch-pruning) to run the peer")
    ap.add_argument("--work", default="/tmp/bench_prune")
    ap.add_argument("--write-results", action="store_true")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    ratios = [float(r) for r in a.ratios.split(",")]
    rows = [] if a.only_extra else run(ratios, a.steps, a.effnet, work, a.torch_pruning or None)
    if a.effnet_steps:
        rows += run_effnet_distill(a.effnet_steps, work)
    if a.bert_steps >= 0:
        rows += run_bert(ratios, a.bert_steps, work, a.torch_pruning or None)
    if a.yolo:
        rows += run_yolo(ratios, work, a.torch_pruning or None)
    if a.resnet_steps:
        rows += run_resnet(ratios, a.resnet_steps, work, a.torch_pruning or None)
    cmd = f"python bench/bench_prune.py --ratios {a.ratios} --steps {a.steps}" + (
        " --effnet" if a.effnet else "") + (
        f" --torch-pruning {a.torch_pruning}" if a.torch_pruning else "") + (
        f" --bert-steps {a.bert_steps}" if a.bert_steps >= 0 else "") + (
        " --yolo" if a.yolo else "") + (
        f" --resnet-steps {a.resnet_steps}" if a.resnet_steps else "") + (
        f" --effnet-steps {a.effnet_steps}" if a.effnet_steps else "") + (
        " --only-extra" if a.only_extra else "")
    text = render(rows, cmd)
    print(text)
    if a.write_results:
        write_results(text, HEADING)


if __name__ == "__main__":
    main()

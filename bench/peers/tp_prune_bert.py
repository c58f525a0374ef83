"""Peer: torch-pruning (PyPI ``torch-pruning``) on the bench's BERT-style encoder — whole attention
heads and FFN units at the same ratio as ours, the hidden size kept (as our channel analysis keeps the
LayerNorm'd residual stream) — no fine-tuning. Run by ``bench/bench_prune.py --bert-steps N
--torch-pruning DIR`` with torch_pruning on the path:

    PYTHONPATH=DIR .venv/bin/python bench/peers/tp_prune_bert.py --ratio 0.5 --model M.pt
        --eval EVAL.npz --out DIR

The encoder is rebuilt exactly as ``bench_real._bert`` builds it (same config, seed 0), pruned with
MetaPruner (L1 magnitude, ``num_heads`` of every query/key/value, ``prune_num_heads``, head dims
kept), traced to TorchScript like the unpruned encoder. Prints one JSON line: params, heads and FFN
units per layer, hidden-state cosine with the unpruned model on the eval sequences, the .pt path.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    import torch_pruning as tp
    from transformers import BertConfig, BertModel

    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=float, required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                     intermediate_size=2048, return_dict=False)
    model = BertModel(cfg).eval()
    ev = np.load(a.eval)
    ids, mask = torch.from_numpy(ev["input_ids"]), torch.from_numpy(ev["attention_mask"])
    with torch.no_grad():
        ref = torch.cat([model(ids[i:i + 1], mask[i:i + 1])[0] for i in range(len(ids))])
    heads, ffn = {}, {}
    for layer in model.encoder.layer:
        att = layer.attention.self
        for lin in (att.query, att.key, att.value):
            heads[lin] = att.num_attention_heads
            ffn[lin] = a.ratio  # the heads' group must not be skipped at ratio 0
        ffn[layer.intermediate.dense] = a.ratio
    keep_hidden = [model.embeddings, model.pooler]  # the residual width: pruning_ratio 0 elsewhere
    ex = (ids[:1], mask[:1])
    pruner = tp.pruner.MetaPruner(
        model, {"input_ids": ids[:1], "attention_mask": mask[:1]}, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.0,
        pruning_ratio_dict=ffn, ignored_layers=keep_hidden, num_heads=heads,
        prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=a.ratio,
        output_transform=lambda out: out[0].sum())
    pruner.step()
    for layer in model.encoder.layer:  # as torch-pruning's HF example does after pruning heads
        att = layer.attention.self
        att.num_attention_heads = att.query.out_features // att.attention_head_size
        att.all_head_size = att.query.out_features
    with torch.no_grad():
        got = torch.cat([model(ids[i:i + 1], mask[i:i + 1])[0] for i in range(len(ids))])
    cos = float(torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "tp_bert.pt"  # TorchScript, loaded by our tool as our own BERT is
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, ex), str(onnx_path))
    print(json.dumps({"params": int(sum(p.numel() for p in model.parameters())), "cosine": cos,
                      "heads": [layer.attention.self.num_attention_heads
                                for layer in model.encoder.layer],
                      "ffn": [layer.intermediate.dense.out_features
                              for layer in model.encoder.layer],
                      "onnx": str(onnx_path)}))


if __name__ == "__main__":
    main()

"""Structured pruning on real models through the CLI (issue 14): a transformers BERT encoder loses
half its attention heads and FFN units and distillation brings it back; the nudenet YOLOv8n (C2f
blocks: channel Split + Concat + residual) is pruned through its Splits. Each run is verified by the
tool itself against the unpruned FP32 model; the tests assert the report's numbers."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest
import zoo

pytestmark = pytest.mark.real


def _cli(out: Path, *args) -> dict:
    from autoglm_compress.cli import main

    rc = main([str(a) for a in (*args, "--target", "x86", "--samples", 16,
                                "--latency-repeats", 2, "-o", out)])
    assert rc == 0
    return json.loads((out / "report.json").read_text())


def _pass(rep: dict, name: str) -> dict:
    return next(p for p in rep["passes"] if p["name"] == name)["stats"]


def _cosines(rep: dict) -> dict[str, float]:
    return {k: v["cosine_pooled"] for k, v in rep["artifacts"][0]["fidelity"]["outputs"].items()}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    if find_spec("transformers") is None:
        pytest.skip("transformers not installed")
    return zoo.bert_encoder(tmp_path_factory.mktemp("bert_prune"), dict_output=False)


@pytest.mark.slow
def test_bert_heads_and_ffn_pruned_then_distilled(bert, tmp_path):
    """Half the heads (2 of 4 per layer) and FFN units (256 of 512): ≈ half the MACs. Measured on
    the calibration sequences (act importance + compensation, the defaults with data) the pruned
    encoder stays at cosine ≥ 0.9995 without training; from the weight-only prune (l1, no
    compensation) 150 distillation steps lift both outputs above 0.999; distilling the compensated
    one keeps the best held-out checkpoint, never worse than its start."""
    data = ("--calib", bert.calib, "--eval", bert.eval)
    weights_only = ("--prune-importance", "l1", "--no-prune-compensate")
    bare = _cli(tmp_path / "bare", bert.model, "--prune", 0.5, *data)
    st = _pass(bare, "prune")
    kinds = sorted((g["kind"], g["channels"], g["kept"]) for g in st["groups"])
    assert kinds == [("channels", 512, 256)] * 2 + [("heads", 4, 2)] * 2
    assert st["macs_after"] < 0.55 * st["macs_before"]
    assert st["importance"] == "act" and st["readers_compensated"] == 4
    assert any("LayerNormalization" in w for f in st["frozen"] for w in f["why"])
    assert min(_cosines(bare).values()) > 0.9995
    plain = _cli(tmp_path / "plain", bert.model, "--prune", 0.5, *weights_only, *data)
    tuned = _cli(tmp_path / "tuned", bert.model, "--prune", 0.5, "--distill-steps", 150,
                 *weights_only, *data)
    before, after = _cosines(plain), _cosines(tuned)
    assert min(before.values()) > 0.99  # random-weight heads are redundant, not nothing
    for k in before:
        assert after[k] > before[k] and after[k] > 0.999, (k, before[k], after[k])
    again = _cli(tmp_path / "again", bert.model, "--prune", 0.5, "--distill-steps", 150, *data)
    dst = _pass(again, "distill")
    assert dst["heldout_samples"] >= 2 and dst["heldout_loss_after"] <= dst["heldout_loss_before"]
    for k, c in _cosines(bare).items():
        assert _cosines(again)[k] >= c - 1e-6, (k, c, _cosines(again)[k])


def test_yolov8n_pruned_through_its_splits(tmp_path):
    for pkg in ("nudenet",):
        if find_spec(pkg) is None:
            pytest.skip(f"wheel {pkg!r} not installed (requirements-real.txt)")
    m = zoo.nudenet_yolov8n(tmp_path)
    rep = _cli(tmp_path / "out", m.model, "--prune", 0.3, "--calib", m.calib, "--eval", m.eval)
    st = _pass(rep, "prune")
    via_split = [g for g in st["groups"] if any("Split" in s or "Slice" in s
                                                 for s in g["sources"])]
    assert st["groups_pruned"] >= 50 and len(via_split) >= 8, (st["groups_pruned"], via_split)
    stats = rep["model"]
    assert stats["stats_after"]["macs"] < 0.6 * stats["stats_before"]["macs"]
    assert min(_cosines(rep).values()) > 0.95  # no fine-tuning: boxes and scores still close



def test_bert_dynamic_axes_onnx_export(tmp_path):
    """Hugging Face BERT exported to ONNX with dynamic batch/sequence axes (heads as −1 in the
    head Reshapes, ``Shape(ffn)[:2]`` readers on the FFN values, an identity
    ``reshape(b, -1, s, d)``): with symbolic dims the FFN units are pruned (the Shape readers
    only look at batch and length) and the artifact keeps its dynamic axes; the heads stay and
    the report says to fix the shapes; with --static-shapes the no-op reshape goes in cleanup
    and heads are pruned too."""
    if find_spec("transformers") is None:
        pytest.skip("transformers not installed")
    import numpy as np
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=512, max_position_embeddings=64, return_dict=False)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = BertModel(cfg)

        def forward(self, ids, mask):
            return self.m(input_ids=ids, attention_mask=mask)

    data = zoo._tokens(8, 32, 1000, seed=0)
    np.savez(tmp_path / "tokens.npz", **data)
    ex = tuple(torch.from_numpy(data[k][:2]) for k in ("input_ids", "attention_mask"))
    path = tmp_path / "bert_dyn.onnx"
    dyn = {0: "batch", 1: "seq"}
    torch.onnx.export(Wrap().eval(), ex, str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state", "pooler_output"],
                      dynamic_axes={"input_ids": dyn, "attention_mask": dyn})
    args = (path, "--prune", 0.5, "--calib", tmp_path / "tokens.npz", "--eval",
            tmp_path / "tokens.npz")
    st = _pass(_cli(tmp_path / "dyn", *args), "prune")
    assert sorted((g["kind"], g["channels"], g["kept"]) for g in st["groups"]) == [
        ("channels", 512, 256)] * 2 and "--static-shapes" in st["hint"]
    import onnxruntime as ort

    feed = {"input_ids": np.random.default_rng(0).integers(0, 1000, (3, 20)).astype(np.int64),
            "attention_mask": np.ones((3, 20), np.int64)}
    got, ref = (ort.InferenceSession(str(p)).run(None, feed)[0] for p in (
        tmp_path / "dyn" / "bert_dyn.x86.fp32.onnx", path))
    assert got.shape == (3, 20, 128)  # still dynamic: another batch and length than the data's
    assert (got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref) > 0.999
    rep = _cli(tmp_path / "static", *args, "--static-shapes")
    assert _pass(rep, "cleanup")["noop_reshapes_removed"] >= 2  # one per layer
    st = _pass(rep, "prune")
    kinds = sorted((g["kind"], g["channels"], g["kept"]) for g in st["groups"])
    assert kinds == [("channels", 512, 256)] * 2 + [("heads", 4, 2)] * 2 and "hint" not in st
    assert st["macs_after"] < 0.55 * st["macs_before"]
    assert min(_cosines(rep).values()) > 0.999

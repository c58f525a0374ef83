"""prune: structured channel pruning on the IR (the first part of issue 14: dependency analysis and
the pass; distillation comes next). The pruned IR is valid (full ONNX check), smaller, runs the same
in onnxruntime and in our torch executor, keeps the most important channels, and removing channels
that contribute nothing changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from autoglm_compress import load
from autoglm_compress.ir_utils import ort_run, ort_session
from autoglm_compress.pipeline import Pipeline, build_passes
from autoglm_compress.pruning.groups import channel_groups
from autoglm_compress.runtime.executor import run_model
from autoglm_compress.stats import model_stats

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "digits_cnn.pt"


def _prepared(src) -> ir.Model:
    m = load(src)
    Pipeline(build_passes(["cleanup", "fold_bn"]), progress=False).run(m)
    return m


def _prune(m: ir.Model, ratio: float = 0.5, multiple: int = 8):
    recs = Pipeline(build_passes(["prune"], {"prune": {"ratio": ratio, "multiple": multiple}}),
                    progress=False).run(m)
    return recs[0]


def _feed(m: ir.Model, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in v.shape])
            .astype(np.float32) for v in m.graph.inputs}


def _exported(net, path: Path):
    """The torch module as prepared IR, a feed, and its onnxruntime output before pruning."""
    import torch

    torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    m = _prepared(path)
    feed = _feed(m)
    return m, feed, ort_run(ort_session(m), feed)[0]


def _check(m: ir.Model) -> list[np.ndarray]:
    onnx.checker.check_model(ir.to_proto(m), full_check=True)
    feed = _feed(m)
    got = ort_run(ort_session(m), feed)
    ex = run_model(m, feed)
    for name, g in zip([v.name for v in m.graph.outputs], got):
        np.testing.assert_allclose(np.asarray(ex[name]), g, rtol=1e-4, atol=1e-5)
    return got


def test_digits_half_the_channels_quarter_the_macs():
    m = _prepared(DEMO)
    macs0, params0 = model_stats(m).macs, model_stats(m).params
    rec = _prune(m, 0.5)
    assert rec.stats["groups_pruned"] == 3 and rec.modified
    convs = [n for n in m.graph if n.op_type == "Conv"]
    assert [int(n.inputs[1].shape[0]) for n in convs] == [8, 16, 16]  # 16/32/32 → half, ×8
    gemm = next(n for n in m.graph if n.op_type == "Gemm")
    assert gemm.inputs[1].shape[1] == 16 or gemm.inputs[1].shape[0] == 16
    assert model_stats(m).macs < 0.3 * macs0 and model_stats(m).params < 0.3 * params0
    _check(m)
    assert rec.stats["frozen"][0]["why"] == ["graph output"]  # the logits are never pruned


def test_kept_channels_are_the_largest_filters():
    """L1 importance of a channel: its filter's norm over the mean filter's + the next layer's
    input slice's norm over the mean slice's."""
    m = _prepared(DEMO)
    conv, nxt = [n for n in m.graph if n.op_type == "Conv"][:2]
    w, w2 = conv.inputs[1].const_value.numpy(), nxt.inputs[1].const_value.numpy()
    a = np.abs(w).reshape(w.shape[0], -1).sum(1)
    b = np.abs(w2).sum(axis=(0, 2, 3))
    top = np.sort(np.argsort(-(a / a.mean() + b / b.mean()))[:8])
    _prune(m, 0.5)
    np.testing.assert_array_equal(conv.inputs[1].const_value.numpy(), w[top])


def test_dead_channels_removed_exactly(tmp_path):
    """Filters that are all zero (and zero bias) feed nothing: pruning them keeps every output."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 16, 3),
                        nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 4))
    with torch.no_grad():
        net[0].weight[16:] = 0
        net[0].bias[16:] = 0
        net[3].running_var.uniform_(0.5, 2)
    net.eval()
    m, feed, before = _exported(net, tmp_path / "dead.onnx")
    rec = _prune(m, 0.5, multiple=16)  # the 32-channel space → its 16 live channels
    assert rec.stats["groups_pruned"] == 1 and rec.stats["groups"][0]["kept"] == 16
    np.testing.assert_allclose(ort_run(ort_session(m), feed)[0], before, rtol=1e-5, atol=1e-5)
    _check(m)


def test_residual_depthwise_pruned_together_concat_frozen(saved):
    """Zoo CNN: a residual Add's branches and the depthwise conv in a space shrink together; the
    Concat's branches are frozen, with the reason listed."""
    m = _prepared(saved("cnn", "onnx"))
    groups = channel_groups(m)
    reasons = [w for g in groups for w in g.frozen]
    assert any("Concat" in w for w in reasons) and "graph output" in reasons
    res = [g for g in groups if g.prunable and len(g.sources) >= 2]
    assert res, "a residual space has several producers"
    rec = _prune(m, 0.5)
    assert rec.stats["groups_pruned"] >= 3
    for n in m.graph:
        if n.op_type == "Add" and all(v.producer() is not None for v in n.inputs):
            a, b = (v.shape[1] for v in n.inputs)
            assert a == b  # both branches of every residual Add kept the same channels
        if n.op_type == "Conv" and n.attributes.get_int("group", 1) > 1:
            assert n.attributes.get_int("group", 1) == n.inputs[1].shape[0]
    _check(m)


def test_small_spaces_and_ratio_zero_are_left_alone():
    m = _prepared(DEMO)
    rec = _prune(m, 0.0)
    assert rec.stats["groups_pruned"] == 0 and not rec.modified
    m = _prepared(DEMO)
    rec = _prune(m, 0.5, multiple=16)  # 16 channels → 16 kept: that space is not touched
    convs = [n for n in m.graph if n.op_type == "Conv"]
    assert [int(n.inputs[1].shape[0]) for n in convs] == [16, 16, 16]
    _check(m)


def test_cli_prune_then_int8_for_x86_and_arm(tmp_path):
    """`--prune 0.5 --int8`: pruned before precision lowering, verified against the unpruned
    FP32 model (no distillation yet, so the accuracy drop shows in the report)."""
    import json

    from autoglm_compress.cli import main

    rc = main([str(DEMO), "--prune", "0.5", "--int8", "--calib",
               str(ROOT / "examples" / "digits_calib.npz"), "--target", "x86", "--target", "arm",
               "--samples", "16", "-o", str(tmp_path)])
    assert rc == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    prune = next(p for p in rep["passes"] if p["name"] == "prune")
    assert prune["stats"]["groups_pruned"] == 3 and prune["config"]["ratio"] == 0.5
    assert rep["model"]["stats_after"]["macs"] < 0.3 * rep["model"]["stats_before"]["macs"]
    assert {a["target"] for a in rep["artifacts"]} == {"x86", "arm"}


def test_distill_recovers_the_pruned_digits_cnn(tmp_path):
    """prune 0.5 alone: the digits accuracy collapses; 400 distillation steps from the unpruned
    model on the 200 calibration images bring most of it back (label-free)."""
    from autoglm_compress import compress

    calib, ev = ROOT / "examples" / "digits_calib.npz", ROOT / "examples" / "digits_eval.npz"
    kw = dict(targets="x86", calib=calib, calib_samples=200, eval_data=ev, samples=300,
              latency_repeats=3, prune=0.5)
    bare = compress(DEMO, out_dir=tmp_path / "p", **kw).artifact("x86")
    res = compress(DEMO, out_dir=tmp_path / "d", distill_steps=400, distill_lr=1.5e-2, **kw)
    art = res.artifact("x86")
    acc = lambda a: next(iter(a.fidelity["outputs"].values()))["accuracy"]  # noqa: E731
    rec = next(p for p in res.report["passes"] if p["name"] == "distill")
    assert rec["stats"]["loss_after"] < 0.5 * rec["stats"]["loss_before"]
    assert acc(bare) < 0.5 and acc(art) > acc(bare) + 0.3


def test_concat_branches_pruned_with_offsets(tmp_path):
    """Two branches concatenated into a conv: the first branch's dead half is removed and the
    conv after the Concat loses exactly those input channels (offset 0 … 31), the second branch's
    channels shift down; outputs unchanged, shapes valid."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 32, 3, padding=1)
            self.b = nn.Conv2d(3, 16, 1)
            self.c = nn.Conv2d(48, 8, 3)

        def forward(self, x):
            return self.c(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.a.weight[::2] = 0  # every other filter of branch a is dead
        net.a.bias[::2] = 0
    m, feed, before = _exported(net, tmp_path / "cat.onnx")
    rec = _prune(m, 0.5, multiple=16)
    assert rec.stats["groups_pruned"] == 1
    c = [n for n in m.graph if n.op_type == "Conv"][-1]
    assert tuple(c.inputs[1].shape) == (8, 32, 3, 3)
    np.testing.assert_allclose(ort_run(ort_session(m), feed)[0], before, rtol=1e-5, atol=1e-5)
    _check(m)


def test_prune_to_a_macs_budget():
    """--prune-macs 0.5: the smallest uniform ratio whose model has at most half the MACs."""
    m = _prepared(DEMO)
    macs0 = model_stats(m).macs
    recs = Pipeline(build_passes(["prune"], {"prune": {"macs": 0.5}}), progress=False).run(m)
    st = recs[0].stats
    assert st["macs_share"] <= 0.5 and model_stats(m).macs == st["macs_after"]
    assert model_stats(m).macs <= 0.5 * macs0 and 0 < st["ratio_found"] < 0.95
    lighter = _prepared(DEMO)  # a slightly smaller ratio no longer meets the budget
    _prune(lighter, max(st["ratio_found"] - 1 / 64, 0.0))
    assert model_stats(lighter).macs > 0.5 * macs0
    _check(m)


def test_global_scope_spends_the_budget_where_filters_are_weak(saved):
    """scope=global: one importance threshold across spaces — spaces lose different shares, the
    total removed is about the ratio, and the IR stays valid."""
    m = _prepared(saved("cnn", "onnx"))
    recs = Pipeline(build_passes(["prune"], {"prune": {"ratio": 0.4, "scope": "global"}}),
                    progress=False).run(m)
    rows = recs[0].stats["groups"]
    shares = {round(r["kept"] / r["channels"], 3) for r in rows}
    assert rows and len(shares) > 1  # not the same share everywhere
    _check(m)


def test_train_data_for_distillation(tmp_path, capsys):
    """--train-data is what distillation trains on (no --calib needed); without any data
    --distill-steps is a usage error before loading."""
    import json
    import sys

    from autoglm_compress.cli import main

    sys.path.insert(0, str(ROOT / "examples"))
    from digits import load_digits_split

    train = tmp_path / "train.npz"
    np.savez(train, x=load_digits_split()[0][:300])
    assert main([str(DEMO), "--distill-steps", "5", "--target", "x86", "-o",
                 str(tmp_path / "a")]) == 2
    assert "--train-data" in capsys.readouterr().err
    assert main([str(DEMO), "--prune", "0.5", "--distill-steps", "20", "--train-data", str(train),
                 "--target", "x86", "--samples", "8", "-o", str(tmp_path / "b")]) == 0
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    rec = next(p for p in rep["passes"] if p["name"] == "distill")
    st = rec["stats"]
    assert st["samples"] + st["heldout_samples"] == 300 and st["heldout_samples"] == 37
    assert st["loss_after"] < st["loss_before"]


def test_taylor_importance_keeps_what_the_output_needs(tmp_path, capsys):
    """--prune-importance taylor (label-free, measured on data): at the same 0.5 ratio the pruned
    digits CNN keeps more accuracy before any fine-tuning than with filter L1 norms; without data
    it is a usage error."""
    import json
    import sys

    from autoglm_compress.cli import main

    sys.path.insert(0, str(ROOT / "examples"))
    from digits import load_digits_split

    train = tmp_path / "train.npz"
    np.savez(train, x=load_digits_split()[0][:256])
    ev = ROOT / "examples" / "digits_eval.npz"
    acc = {}
    for imp in ("l1", "taylor"):
        out = tmp_path / imp
        assert main([str(DEMO), "--prune", "0.5", "--prune-importance", imp, "--calib", str(train),
                     "--no-prune-compensate",  # the criterion alone
                     "--eval", str(ev), "--samples", "500", "--target", "x86", "-o", str(out)]) == 0
        rep = json.loads((out / "report.json").read_text())
        prune = next(p for p in rep["passes"] if p["name"] == "prune")
        assert prune["stats"]["importance"] == imp and prune["stats"]["groups_pruned"] == 3
        acc[imp] = next(iter(rep["artifacts"][0]["fidelity"]["outputs"].values()))["accuracy"]
    assert acc["taylor"] > acc["l1"] + 0.1, acc
    assert main([str(DEMO), "--prune", "0.5", "--prune-importance", "taylor", "--target", "x86",
                 "-o", str(tmp_path / "e")]) == 2
    assert "--prune-importance taylor" in capsys.readouterr().err


def _export_plain(net, path):
    import torch

    torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False,
                      opset_version=17, input_names=["x"], output_names=["y"],
                      do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
    return load(path)


def test_bn_scale_importance_prunes_before_folding(tmp_path):
    """bn: channels whose BatchNorm scale |γ|/σ is smallest go even when their filters are the
    largest (network slimming); the option puts prune before fold_bn."""
    torch = pytest.importorskip("torch")
    from autoglm_compress.config_build import from_flat

    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 8, 3))
    with torch.no_grad():
        net[0].weight[:8] *= 10  # large filters ...
        net[1].weight[:8] = 0.01  # ... behind a near-zero BN scale
    net.eval()
    m = _export_plain(net, tmp_path / "bn.onnx")
    cfg = from_flat("x.pt", prune=0.5, prune_importance="bn")
    assert cfg.pass_names[:3] == ["cleanup", "prune", "fold_bn"]
    recs = Pipeline(build_passes(["cleanup", "prune", "fold_bn"],
                                 {"prune": {"ratio": 0.5, "importance": "bn"}}),
                    progress=False).run(m)
    rec = next(r for r in recs if r.name == "prune")
    assert rec.stats["bn_scored"] == 1
    kept = next(n for n in m.graph if n.op_type == "Conv").inputs[1].const_value.numpy()
    w0 = net[0].weight.detach().numpy()
    assert kept.shape[0] == 8  # folded: kept filter i = w0[8 + i] · γ/σ, the same direction
    cos = [float(np.dot(kept[i].ravel(), w0[8 + i].ravel()) / np.linalg.norm(kept[i])
                 / np.linalg.norm(w0[8 + i])) for i in range(8)]
    assert min(cos) > 0.999
    _check(m)


def test_l2_importance_prefers_peaked_filters(tmp_path):
    """Filters 0–7 spread (large L1, small L2), 8–15 one large tap (small L1, large L2)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3))
    with torch.no_grad():
        net[0].weight[:8] = 0.5
        net[0].weight[8:] = 0
        net[0].weight[8:, 0, 1, 1] = 4.0
    for imp, want in (("l2", 4.0), ("l1", 0.5)):
        m = _export_plain(net.eval(), tmp_path / f"{imp}.onnx")
        Pipeline(build_passes(["cleanup", "prune"], {"prune": {"ratio": 0.5, "importance": imp}}),
                 progress=False).run(m)
        kept = next(n for n in m.graph if n.op_type == "Conv").inputs[1].const_value.numpy()
        assert kept.shape[0] == 8 and float(kept.max()) == want, imp
        _check(m)


def test_cleanup_drops_noop_reshapes_only_with_static_shapes():
    """A Reshape to −1 on an axis whose static size it keeps is an identity: cleanup removes it
    (same outputs); with a symbolic dim it stays."""
    import onnx

    from autoglm_compress.ir_utils import from_proto, ort_run, ort_session
    from autoglm_compress.passes.cleanup import CleanupPass

    def model(dims: str):
        return from_proto(onnx.shape_inference.infer_shapes(onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
            g (float[{dims}] x) => (float[{dims}] y) {{
                s = Constant <value = int64[4] {{0, -1, 3, 4}}> ()
                r = Reshape (x, s)
                y = Relu (r)
            }}""")))

    m = model("2,5,3,4")
    x = np.random.default_rng(0).normal(size=(2, 5, 3, 4)).astype(np.float32)
    before = ort_run(ort_session(m), {"x": x})
    CleanupPass()(m)
    assert [n.op_type for n in m.graph] == ["Relu"]
    np.testing.assert_array_equal(ort_run(ort_session(m), {"x": x})[0], before[0])
    m = model("N,5,3,4")
    CleanupPass()(m)
    assert "Reshape" in [n.op_type for n in m.graph]


def test_distill_flag_epochs_and_batch(tmp_path, capsys):
    """`--distill` alone runs the default 300 steps; `--distill-epochs E --distill-batch B` turns
    into ⌈E × training samples / B⌉ steps (the held-out eighth aside); steps and epochs together
    are a usage error before loading."""
    import json
    import sys

    from autoglm_compress.api import pass_configs
    from autoglm_compress.cli import main
    from autoglm_compress.config_build import from_flat

    cfg = from_flat(DEMO, prune=0.5, distill=True, calib="c.npz")
    assert "distill" in cfg.pass_names and pass_configs(cfg)["distill"]["steps"] == 300
    assert "distill" not in from_flat(DEMO, prune=0.5, calib="c.npz").pass_names

    sys.path.insert(0, str(ROOT / "examples"))
    from digits import load_digits_split

    train = tmp_path / "train.npz"
    np.savez(train, x=load_digits_split()[0][:300])
    assert main([str(DEMO), "--distill-steps", "5", "--distill-epochs", "1", "--train-data",
                 str(train), "--target", "x86", "-o", str(tmp_path / "a")]) == 2
    assert "choose one" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main([str(DEMO), "--prune", "0.5", "--distill-epochs", "2", "--distill-batch", "8",
                 "--train-data", str(train), "--target", "x86", "--samples", "8",
                 "-o", str(tmp_path / "b")]) == 0
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    st = next(p for p in rep["passes"] if p["name"] == "distill")["stats"]
    assert st["samples"] == 263 and st["batch"] == 8 and st["epochs"] == 2
    assert st["steps"] == -(-2 * 263 // 8) == 66
    assert st["loss_after"] < st["loss_before"]

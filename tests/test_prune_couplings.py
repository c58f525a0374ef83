"""prune on the couplings beyond conv chains (issue 14, item 1): channel Split (each output space
pruned on its own at its offset in the split value), a transformer FFN hidden dimension (channels
on the last axis of [B, S, F]) and whole attention heads (Q/K/V columns, the head Reshapes, the
output projection's rows). Each test removes channels/heads that contribute nothing and checks the
outputs are unchanged, the IR is valid and the executor agrees with onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from test_pass_prune import _check, _prepared, _prune

from autoglm_compress.ir_utils import ort_run, ort_session
from autoglm_compress.pruning.groups import channel_groups

torch = pytest.importorskip("torch")
nn = torch.nn


def _export(net, path, shape, fused: bool = False):
    """The exported module as users load it; ``fused``: onnxruntime's contrib Attention instead of
    the decomposed attention (newer onnx-simplifiers fuse it; our loader keeps standard ops)."""
    torch.onnx.export(net, (torch.randn(*shape),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    if fused:
        import onnx
        import onnxsim

        sim, _ = onnxsim.simplify(onnx.load(str(path)))
        if not any(n.op_type == "Attention" for n in sim.graph.node):
            pytest.skip("this onnx-simplifier does not fuse attention")
        onnx.save(sim, str(path))
    m = _prepared(path)
    feed = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    return m, feed, ort_run(ort_session(m), feed)[0]


class _SplitNet(nn.Module):
    """conv → split in 2 → [p, q]; q → conv → r; conv(cat[p, q, r]) — YOLOv8's C2f pattern.
    ``split``: torch.split (an ONNX Split); else chunk (two Slices in the legacy exporter)."""

    def __init__(self, split: bool):
        super().__init__()
        self.split = split
        self.a = nn.Conv2d(3, 32, 1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(48, 8, 3)

    def forward(self, x):
        y = torch.relu(self.a(x))
        p, q = y.split([16, 16], 1) if self.split else y.chunk(2, 1)
        return self.c(torch.cat([p, q, torch.relu(self.b(q))], 1))


@pytest.mark.parametrize("op", ["Split", "Slice"])
def test_split_outputs_pruned_at_their_offsets(tmp_path, op):
    torch.manual_seed(0)
    net = _SplitNet(op == "Split").eval()
    with torch.no_grad():
        for conv in (net.a, net.b):  # every other filter dead in both producers
            conv.weight[::2] = 0
            conv.bias[::2] = 0
    m, feed, before = _export(net, tmp_path / "split.onnx", (1, 3, 8, 8))
    assert any(n.op_type == op for n in m.graph)
    rec = _prune(m, 0.5)
    kinds = sorted(k for g in rec.stats["groups"] for k in g["sources"])
    assert rec.stats["groups_pruned"] == 3, kinds  # p, q (through the Split) and r
    a, b, c = [n for n in m.graph if n.op_type == "Conv"]
    assert a.inputs[1].shape[0] == 16 and tuple(b.inputs[1].shape[:2]) == (8, 8)
    assert c.inputs[1].shape[1] == 24
    cuts = [n for n in m.graph if n.op_type == op]
    if op == "Split":
        assert cuts[0].inputs[1].const_value.numpy().tolist() == [8, 8]
    else:
        assert sorted(int(n.inputs[2].const_value.numpy()[0]) for n in cuts) == [8, 16]
    np.testing.assert_allclose(ort_run(ort_session(m), feed)[0], before, rtol=1e-5, atol=1e-5)
    _check(m)


def test_split_of_a_value_read_elsewhere_is_frozen(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 32, 1)
            self.c = nn.Conv2d(48, 8, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            p, q = y.chunk(2, 1)
            return self.c(torch.cat([p * q, y], 1))

    m, _, _ = _export(Net().eval(), tmp_path / "split2.onnx", (1, 3, 8, 8))
    reasons = [w for g in channel_groups(m) for w in g.frozen]
    assert any("Slice" in w and "also read by Concat" in w for w in reasons), reasons


class _Encoder(nn.Module):
    """One post-LN transformer block: 4 heads of 16, FFN 128 with GELU; input [2, 10, 64]."""

    def __init__(self, hidden=64, heads=4, ffn=128):
        super().__init__()
        self.b, self.s = 2, 10  # constant Reshape shapes in the exported graph
        self.n, self.d = heads, hidden // heads
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))
        self.f1, self.f2 = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)

    def dims(self, x):
        return self.b, self.s, x.shape[-1]

    def forward(self, x):
        b, s, h = self.dims(x)

        def heads(t):
            return t.view(b, s, self.n, self.d).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d), -1) @ v
        x = self.ln1(x + self.o(att.transpose(1, 2).reshape(b, s, h)))
        return self.ln2(x + self.f2(torch.nn.functional.gelu(self.f1(x))))

    def kill_heads(self, *heads):
        """Zero the Q/K/V projections (weights and biases) of ``heads``: their context is 0."""
        with torch.no_grad():
            for lin in (self.q, self.k, self.v):
                for h in heads:
                    lin.weight[h * self.d:(h + 1) * self.d] = 0
                    lin.bias[h * self.d:(h + 1) * self.d] = 0


@pytest.mark.parametrize("fused", [True, False])
def test_dead_heads_and_ffn_units_removed_exactly(tmp_path, fused):
    """Heads 1 and 3 have zero Q/K/V projections (their context is 0), half the FFN units are 0:
    pruning half the heads and units removes exactly those, and nothing changes — in
    onnxruntime's fused Attention (packed QKV weight, num_heads) and in the decomposed graph."""
    torch.manual_seed(0)
    net = _Encoder().eval()
    net.kill_heads(1, 3)
    with torch.no_grad():
        net.f1.weight[1::2] = 0
        net.f1.bias[1::2] = 0
    m, feed, before = _export(net, tmp_path / "enc.onnx", (2, 10, 64), fused)
    rec = _prune(m, 0.5)
    by_kind = {g["kind"]: g for g in rec.stats["groups"]}
    assert by_kind["heads"]["channels"] == 4 and by_kind["heads"]["kept"] == 2
    assert by_kind["heads"]["head_dim"] == 16
    assert by_kind["channels"]["channels"] == 128 and by_kind["channels"]["kept"] == 64
    shapes = sorted(tuple(n.inputs[1].shape) for n in m.graph if n.op_type in (
        "MatMul", "Gemm", "Attention") and n.inputs[1].shape is not None and len(n.inputs) > 1)
    if fused:
        att = next(n for n in m.graph if n.op_type == "Attention")
        assert tuple(att.inputs[1].shape) == (64, 96) and att.attributes["num_heads"].value == 2
    else:
        assert len(by_kind["heads"]["sources"]) == 3
        assert shapes.count((64, 32)) == 3  # Wq / Wk / Wv: the kept heads' columns
    assert (32, 64) in shapes and (64, 64) in shapes and (128 // 2, 64) in shapes  # Wo rows, FFN
    np.testing.assert_allclose(ort_run(ort_session(m), feed)[0], before, rtol=1e-4, atol=1e-5)
    if fused:  # the torch executor does not run contrib Attention: onnxruntime only
        onnx.checker.check_model(ir.to_proto(m), full_check=True)
    else:
        _check(m)


def test_live_heads_pruned_keep_the_strongest_and_stay_close(tmp_path):
    """No dead heads: keeping 3 of 4 by L1 changes the output a little, not a lot; the residual
    stream (LayerNorm, graph input/output) is never pruned and says why."""
    torch.manual_seed(1)
    net = _Encoder().eval()
    with torch.no_grad():
        net.v.weight[32:48] *= 0.05  # head 2 is the weakest
    m, feed, before = _export(net, tmp_path / "enc2.onnx", (2, 10, 64))
    groups = channel_groups(m)
    assert any("LayerNormalization" in w for g in groups for w in g.frozen)
    rec = _prune(m, 0.25, multiple=16)
    heads = next(g for g in rec.stats["groups"] if g["kind"] == "heads")
    assert heads["kept"] == 3
    wo = next(n for n in m.graph if n.op_type in ("MatMul", "Gemm") and n.inputs[1].shape
              and tuple(n.inputs[1].shape) == (48, 64))
    assert wo is not None
    after = ort_run(ort_session(m), feed)[0]
    cos = float((after * before).sum() / np.linalg.norm(after) / np.linalg.norm(before))
    assert 0.9 < cos < 0.99999
    _check(m)


def test_feature_matching_compares_the_kept_channels(tmp_path):
    """After pruning dead channels/heads exactly, every matched feature of the student equals the
    teacher's on the kept channels (the alignment distillation's feature loss relies on), and a
    distill run with --distill-features names them in its loss."""
    from autoglm_compress.passes.context import PassContext
    from autoglm_compress.passes.distill import feature_pairs
    from autoglm_compress.pipeline import Pipeline, build_passes
    from autoglm_compress.runtime import TorchExecutor
    from autoglm_compress.runtime.train_loop import feature_targets

    torch.manual_seed(0)
    net = _Encoder().eval()
    with torch.no_grad():
        for lin in (net.q, net.k, net.v):
            lin.weight[16:32] = 0
            lin.bias[16:32] = 0
        net.f1.weight[1::2] = 0
        net.f1.bias[1::2] = 0
    m, feed, _ = _export(net, tmp_path / "enc.onnx", (2, 10, 64))
    teacher = ir.from_proto(ir.to_proto(m))
    ctx = PassContext(teacher=teacher)
    Pipeline(build_passes(["prune"], {"prune": {"ratio": 0.25, "multiple": 16}}),
             progress=False).run(m, ctx)
    feats = feature_pairs(m, teacher, ctx.kept_channels)
    assert sum(v is not None for v in feats.values()) >= 2  # Wo's and FFN-out's inputs, pruned
    want = feature_targets(TorchExecutor(teacher), [feed], feats, "cpu")
    got = TorchExecutor(m).run(feed, extra=tuple(feats))
    for (name, sel), t in zip(feats.items(), want):
        assert tuple(got[name].shape) == tuple(t.shape[1:]), name
        torch.testing.assert_close(got[name], t[0], rtol=1e-4, atol=1e-5)


def test_cli_distill_features_after_prune(tmp_path):
    from test_pass_prune import DEMO

    from autoglm_compress.cli import main

    out = tmp_path / "o"
    rc = main([str(DEMO), "--prune", "0.5", "--distill-steps", "40", "--distill-features", "1",
               "--calib", str(DEMO.parent / "digits_calib.npz"), "--target", "x86",
               "--samples", "64", "--latency-repeats", "2", "-o", str(out)])
    assert rc == 0
    import json

    rep = json.loads((out / "report.json").read_text())
    st = next(p for p in rep["passes"] if p["name"] == "distill")["stats"]
    assert "feature mse (2 features)" in st["loss"] and st["loss_after"] < st["loss_before"]


def test_removed_channels_mean_goes_into_the_next_bias(tmp_path):
    """Half of the first conv's filters are zero but their bias is 0.5: after ReLU they feed a
    constant 0.5 to the next conv. Pruned without data the output shifts; with data and
    compensate (--prune-compensate) the pass moves W[:, removed]·0.5 into the next conv's bias and
    the output stays exact."""
    from autoglm_compress.calibration.data import open_calibration_source
    from autoglm_compress.passes.context import PassContext
    from autoglm_compress.pipeline import Pipeline, build_passes

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3))
    with torch.no_grad():
        net[0].weight[8:] = 0
        net[0].bias[8:] = 0.5
    m0, feed, before = _export(net.eval(), tmp_path / "c.onnx", (1, 3, 8, 8))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((8, 1, 3, 8, 8)).astype(np.float32))
    outs = {}
    for with_data in (False, True):
        m = ir.from_proto(ir.to_proto(m0))
        ctx = PassContext(data=open_calibration_source(str(data), m) if with_data else None)
        recs = Pipeline(build_passes(["prune"], {"prune": {"ratio": 0.5, "compensate": True}}),
                        progress=False).run(m, ctx)
        assert recs[0].stats.get("readers_compensated", 0) == (1 if with_data else 0)
        outs[with_data] = ort_run(ort_session(m), feed)[0]
        _check(m)
    assert np.abs(outs[False] - before).max() > 0.05
    np.testing.assert_allclose(outs[True], before, rtol=1e-4, atol=1e-4)


def _pruned_with_data(m0, data, **cfg):
    from autoglm_compress.calibration.data import open_calibration_source
    from autoglm_compress.passes.context import PassContext
    from autoglm_compress.pipeline import Pipeline, build_passes

    m = ir.from_proto(ir.to_proto(m0))
    ctx = PassContext(data=open_calibration_source(str(data), m))
    rec = Pipeline(build_passes(["prune"], {"prune": {"ratio": 0.5, **cfg}}),
                   progress=False).run(m, ctx)[0]
    _check(m)
    return m, rec.stats, ctx.kept_channels


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_removed_channels_predicted_from_the_kept_ones(tmp_path, kind):
    """Filters 8–15 are twice filters 0–7 (so after ReLU channel c+8 = 2·channel c): L1 keeps the
    doubled ones. Uncompensated the output loses half its input; compensated, the reader (a Conv;
    a MatMul with the bias Add after it) regresses the removed channels on the kept ones
    (x_c = 0.5·x_{c+8}) and its output stays (ridge-regularised, so close, not bit-exact)."""
    torch.manual_seed(0)
    if kind == "conv":
        net, shape = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(16, 8, 3)), (1, 3, 8, 8)
    else:
        net, shape = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)), (1, 5, 6)
    with torch.no_grad():
        net[0].weight[8:] = 2 * net[0].weight[:8]
        net[0].bias[8:] = 2 * net[0].bias[:8]
        net[2].weight[:, :8] *= 0.25  # (the reader's columns count in L1 too)
    err, kept = _errors_with_and_without_compensation(net, tmp_path, shape, 16)
    assert sorted(next(iter(kept.values()))[1]) == list(range(8, 16))
    assert err[False] > 0.05 and err[True] < 0.005, err


def _errors_with_and_without_compensation(net, tmp_path, shape, n):
    """({compensate: max relative output error after an L1 prune 0.5}, kept) on ``n`` samples."""
    m0, feed, before = _export(net.eval(), tmp_path / "c.onnx", shape)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((n, *shape)).astype(np.float32))
    err = {}
    for comp in (False, True):
        m, st, kept = _pruned_with_data(m0, data, importance="l1", compensate=comp)
        assert st.get("readers_compensated", 0) == int(comp)
        err[comp] = np.abs(ort_run(ort_session(m), feed)[0] - before).max() / np.abs(before).max()
    return err, kept


class _ConcatReader(nn.Module):
    """conv a (16, filters 8–15 = 2 × 0–7) ‖ conv b (4, unpruned width) → Concat → conv."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.r = nn.Conv2d(20, 8, 3)

    def forward(self, x):
        return self.r(torch.cat([torch.relu(self.a(x)), self.b(x)], 1))


class _FlattenReader(nn.Module):
    """conv a (16, filters 8–15 = 2 × 0–7) → ReLU → Flatten → Linear."""

    def __init__(self):
        super().__init__()
        self.a, self.r = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        return self.r(torch.flatten(torch.relu(self.a(x)), 1))


@pytest.mark.parametrize("kind", ["concat", "flatten"])
def test_readers_behind_concat_and_flatten_compensated(tmp_path, kind):
    """The same doubled filters seen by a reader through a channel Concat (at the part's offset,
    the other part whole) or a Flatten (each kept channel's H·W columns): compensated, the reader
    regresses the removed channels on the kept ones and its output stays close."""
    torch.manual_seed(0)
    net = _ConcatReader() if kind == "concat" else _FlattenReader()
    shape = (1, 3, 8, 8) if kind == "concat" else (1, 3, 4, 4)
    with torch.no_grad():
        net.a.weight[8:] = 2 * net.a.weight[:8]
        net.a.bias[8:] = 2 * net.a.bias[:8]
        w = net.r.weight
        if kind == "concat":
            w[:, :8] *= 0.25
        else:
            w.view(5, 16, 16)[:, :8] *= 0.25
    err, _ = _errors_with_and_without_compensation(net, tmp_path, shape, 32)
    assert err[False] > 0.05 and err[True] < 0.005, err


def test_act_importance_keeps_the_channels_the_readers_see(tmp_path):
    """Filters 0–7 are large but their bias kills them after ReLU (dead, yet the largest L1);
    filters 8–15 are small and live. L1 keeps the dead ones; act (measured on the data) keeps the
    live ones, and the pruned output stays close without any compensation."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3))
    with torch.no_grad():
        net[0].weight[:8] *= 4
        net[0].bias[:8] = -100.0
        net[0].weight[8:] *= 0.5
        net[0].bias[8:] = 1.0
    m0, feed, before = _export(net.eval(), tmp_path / "c.onnx", (1, 3, 8, 8))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((16, 1, 3, 8, 8)).astype(np.float32))
    err = {}
    for imp in ("l1", "act"):
        m, st, kept = _pruned_with_data(m0, data, importance=imp, compensate=False)
        assert st["importance"] == imp
        assert sorted(next(iter(kept.values()))[1]) == list(range(8, 16) if imp == "act" else range(8))
        err[imp] = np.abs(ort_run(ort_session(m), feed)[0] - before).max()
    assert err["act"] < 1e-4 < 0.5 < err["l1"], err


class _DynEncoder(_Encoder):
    """The same block with the batch and sequence read from the input at run time: exported with
    dynamic axes, its head Reshapes get shapes built by Shape → Gather → Concat with constant
    [heads] / [head_dim] / [hidden] entries."""

    def dims(self, x):
        return x.shape[0], x.shape[1], x.shape[2]


def test_heads_pruned_when_reshape_shapes_are_computed(tmp_path):
    """Dynamic batch and sequence: the head count sits in a constant input of the Concat that
    builds each Reshape shape at run time; dead heads are removed exactly by rewriting those
    constants, and the pruned model still runs at other batch sizes and lengths. The FFN's
    dead units go too: the Shape of its values is read only for batch and length."""
    torch.manual_seed(0)
    net = _DynEncoder().eval()
    net.kill_heads(0, 2)
    with torch.no_grad():
        net.f1.weight[1::2] = 0
        net.f1.bias[1::2] = 0
    path = tmp_path / "dyn.onnx"
    torch.onnx.export(net, (torch.randn(2, 10, 64),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b", 1: "s"}, "y": {0: "b", 1: "s"}})
    m = _prepared(path)
    assert any(n.op_type == "Reshape" and n.inputs[1].const_value is None for n in m.graph)
    sessions = {"before": ort_session(m)}
    rec = _prune(m, 0.5)
    by_kind = {g["kind"]: g for g in rec.stats["groups"]}
    assert by_kind["heads"]["channels"] == 4 and by_kind["heads"]["kept"] == 2
    assert by_kind["channels"]["channels"] == 128 and by_kind["channels"]["kept"] == 64
    _check(m)  # full ONNX check, executor vs onnxruntime
    sessions["after"] = ort_session(m)
    for shape in ((2, 10, 64), (3, 7, 64)):
        feed = {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
        want, got = (ort_run(sessions[k], feed)[0] for k in ("before", "after"))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_reader_rows_cut_by_split_windows_are_followed():
    """A reader whose output goes through SiLU into a channel Split (YOLOv8's C2f cv1): its kept
    output rows are each window's kept rows at the window's offset."""
    import onnx as onnx_

    from autoglm_compress.pruning.compensate import derived_out_keep

    m = ir.from_proto(onnx_.shape_inference.infer_shapes(onnx_.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,8,4,4] x, float[8,8,1,1] w) => (float[1,4,4,4] a, float[1,4,4,4] b) {
            y = Conv (x, w)
            s = Sigmoid (y)
            z = Mul (y, s)
            a, b = Split <axis = 1, num_outputs = 2> (z)
        }""")))
    kept = {"a": (1, np.array([0, 2])), "b": (1, np.array([1, 3]))}
    axis, rows = derived_out_keep(m, "y", kept)
    assert axis == 1 and rows.tolist() == [0, 2, 5, 7]
    assert derived_out_keep(m, "y", {}) is None  # no window pruned: nothing to follow


class _GapSlices(nn.Module):
    """conv → two Slices that leave channels unread (y[:, 2:10], y[:, 14:30]; 0–1, 10–13 and
    30–31 dead to the graph) → a conv each → Concat → conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 1)
        self.p = nn.Conv2d(8, 8, 3, padding=1)
        self.q = nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.c(torch.cat([torch.relu(self.p(y[:, 2:10])),
                                 torch.relu(self.q(y[:, 14:30]))], 1))


def test_slices_with_gaps_pruned_and_unread_channels_dropped(tmp_path):
    """Slices that do not cover the value: each window is its own space, pruned at its offset;
    the channels between them (read by nobody) leave the producer; bounds repacked. Dead
    filters inside the windows go first and the output does not change."""
    torch.manual_seed(0)
    net = _GapSlices().eval()
    with torch.no_grad():
        net.a.weight[2:30:2] = 0  # every other channel of each window dead
        net.a.bias[2:30:2] = 0
        for conv in (net.p, net.q):  # and of what reads them (pruned too, through the Concat)
            conv.weight[::2] = 0
            conv.bias[::2] = 0
    m, feed, before = _export(net, tmp_path / "gaps.onnx", (1, 3, 8, 8))
    slices = [n for n in m.graph if n.op_type == "Slice"]
    assert len(slices) == 2
    rec = _prune(m, 0.5, multiple=4)
    assert rec.stats["groups_pruned"] == 4  # the two windows, p's and q's outputs
    a = next(n for n in m.graph if n.op_type == "Conv" and n.inputs[0].name == "x")
    assert a.inputs[1].shape[0] == 4 + 8  # 2 windows at half, the 8 unread channels gone
    bounds = sorted((int(n.inputs[1].const_value.numpy()[0]), int(n.inputs[2].const_value.numpy()[0]))
                    for n in m.graph if n.op_type == "Slice")
    assert bounds == [(0, 4), (4, 12)]
    np.testing.assert_allclose(ort_run(ort_session(m), feed)[0], before, rtol=1e-5, atol=1e-5)
    _check(m)
    # with data (act importance + compensation): the same dead channels found, output kept
    m0, _, _ = _export(net, tmp_path / "gaps2.onnx", (1, 3, 8, 8))
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((16, 1, 3, 8, 8)).astype(np.float32))
    m2, st, kept = _pruned_with_data(m0, data, multiple=4)
    assert st["importance"] == "act" and st["groups_pruned"] == 4
    np.testing.assert_allclose(ort_run(ort_session(m2), feed)[0], before, rtol=1e-4, atol=1e-4)


def test_overlapping_slices_are_frozen(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 32, 1)
            self.c = nn.Conv2d(40, 4, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.c(torch.cat([y[:, 0:24], y[:, 8:24]], 1))

    m, _, _ = _export(Net().eval(), tmp_path / "overlap.onnx", (1, 3, 8, 8))
    reasons = [w for g in channel_groups(m) for w in g.frozen]
    assert any("overlap" in w for w in reasons), reasons


class _ShapeRows(nn.Module):
    """[B, S, 16] → Linear 32 → ReLU → ``h.view(h.shape[:-1] + (32,))`` → Linear 8, exported
    with dynamic batch and length (Shape → Slice [0:2] → Concat with [32] → Reshape)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h.view(h.shape[:-1] + (32,)))


def test_shape_readers_of_other_axes_do_not_freeze(tmp_path):
    """With symbolic dims a Shape of the hidden value feeds the Reshape; only its batch and
    length entries are used, so the 32 units are pruned (dead ones: output unchanged, still
    dynamic)."""
    torch.manual_seed(0)
    net = _ShapeRows().eval()
    with torch.no_grad():
        net.a.weight[::2] = 0
        net.a.bias[::2] = 0
    path = tmp_path / "rows.onnx"
    torch.onnx.export(net, (torch.randn(2, 5, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b", 1: "s"}, "y": {0: "b", 1: "s"}})
    m = _prepared(path)
    assert any(n.op_type == "Shape" for n in m.graph)
    rec = _prune(m, 0.5)
    assert [(g["channels"], g["kept"]) for g in rec.stats["groups"]] == [(32, 16)]
    x = np.random.default_rng(0).standard_normal((3, 7, 16)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort_run(ort_session(m), {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    _check(m)


def test_shape_reader_of_the_channel_axis_freezes(tmp_path):
    """A Shape whose channel entry is read (here: [length, channels] as a second output, which
    the symbolic length keeps from folding) keeps the group frozen."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = (numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
              for n, s in (("w1", (16, 32)), ("w2", (32, 8))))
    b, e = (numpy_helper.from_array(np.asarray([v], np.int64), n) for n, v in (("b", 1), ("e", 3)))
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Relu", ["h0"], ["h"]),
         helper.make_node("MatMul", ["h", "w2"], ["y"]), helper.make_node("Shape", ["h"], ["s"]),
         helper.make_node("Slice", ["s", "b", "e"], ["n"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 8]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [2])], [w1, w2, b, e])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "s.onnx")
    m = _prepared(tmp_path / "s.onnx")
    assert _prune(m, 0.5).stats["groups_pruned"] == 0
    reasons = [w for grp in channel_groups(m) for w in grp.frozen]
    assert any(w.startswith("Shape") for w in reasons), reasons


def test_macs_budget_on_symbolic_dims_counts_at_the_data_shapes(tmp_path):
    """--prune-macs on a dynamic-axes export: MACs are counted at the data's shapes (the run-time
    shape arithmetic folded on a copy), so the budget is met; without data it is a usage error,
    not a silent no-op."""
    from autoglm_compress.errors import ConfigError

    path = tmp_path / "rows.onnx"
    torch.onnx.export(_ShapeRows().eval(), (torch.randn(2, 5, 16),), str(path), dynamo=False,
                      opset_version=17, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b", 1: "s"}, "y": {0: "b", 1: "s"}})
    m0 = _prepared(path)
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((16, 1, 6, 16)).astype(np.float32))
    _, st, _ = _pruned_with_data(m0, data, macs=0.6, multiple=4)
    assert st["macs_before"] == 6 * (16 * 32 + 32 * 8)  # at [1, 6, 16]
    assert st["macs_share"] <= 0.6 and st["macs_after"] < 0.6 * st["macs_before"]
    with pytest.raises(ConfigError, match="--prune-macs cannot count"):
        _prune_cfg(ir.from_proto(ir.to_proto(m0)), macs=0.6)


def _prune_cfg(m: ir.Model, **cfg):
    from autoglm_compress.pipeline import Pipeline, build_passes

    return Pipeline(build_passes(["prune"], {"prune": cfg}), progress=False).run(m)[0]

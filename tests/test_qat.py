"""QAT by distillation: the training loop, the fake-weight QDQ form, and the per-target fine-tune on the
trained digits CNN (held-out eval data, artifacts run in onnxruntime)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import CALIB, DEMO, EVAL, calibrated_digits, run_cli
from qhelpers import finetune_with
from qhelpers import quantize_with as _quantize

from autoglm_compress import load
from autoglm_compress.inputs import random_feeds
from autoglm_compress.ir_utils import check, ort_run, ort_session
from autoglm_compress.metrics import fidelity
from autoglm_compress.runtime import TorchExecutor, train_loop
from autoglm_compress.targets.cuda import CudaTarget
from autoglm_compress.targets.x86 import X86Target


@pytest.fixture(scope="module")
def digits():
    return calibrated_digits(128, 300)


def _eval(q, feeds, ref, simulate=False):
    sess = ort_session(q, simulate=simulate)
    return fidelity(ref, [ort_run(sess, f) for f in feeds], ["output"])["cosine_pooled"]


def _rel_mse(q, feeds, ref, simulate=False) -> float:
    """Σ(y_q − y)² / Σy² over all held-out outputs: the error energy QAT minimises (``simulate``:
    the QDQ maths, for a target whose int8 does not run in this host's onnxruntime)."""
    sess = ort_session(q, simulate=simulate)
    err = sum(float(((ort_run(sess, f)[0] - r[0]) ** 2).sum()) for f, r in zip(feeds, ref))
    return err / sum(float((r[0] ** 2).sum()) for r in ref)


def _ops(model):
    return sorted(n.op_type for n in model.graph)


# Measured: x86 (7-bit weights) error energy 0.31x of PTQ's, cuda 0.86x (symmetric int8 activations
# after ReLU lose a bit that weight tuning only partly recovers; activation scales stay calibrated).
# x86 with 7-bit weights everywhere so that the ratio does not depend on the test machine's CPU;
# cuda judged in the QDQ maths (TensorRT's), not in this CPU's int8 kernels. The training loss
# after 150 steps is a trajectory of float kernels: cuda 0.67x of the start with torch's AVX-512
# kernels, 0.73x with its AVX2 ones (qemu -cpu Haswell), from the same start — its bound (0.8)
# says "it trains", the held-out error ratio is the claim.
@pytest.mark.parametrize(
    "target, ratio, train", [(X86Target(reduce_range=True), 0.5, 0.7), (CudaTarget(), 0.95, 0.8)],
    ids=["x86", "cuda"],
)
def test_qat_cuts_int8_error_on_held_out_data(digits, target, ratio, train):
    model, stats, feeds, _, ref = digits
    ptq, _ = _quantize(model, target, stats, [], False, True)
    q, src, rec = finetune_with(model, ptq, target, stats, steps=150, lr=1e-4)
    s = rec.stats
    assert s["kept"] == "qat" and rec.modified and s["tensors_trained"] == 8
    assert s["batched"] and s["loss_after"] < train * s["loss_before"], s
    check(q)
    assert _ops(q) == _ops(ptq), "QAT changes weights, not the graph"
    sim = not target.int8_runs_here
    err_ptq, err_qat = _rel_mse(ptq, feeds, ref, sim), _rel_mse(q, feeds, ref, sim)
    assert err_qat < ratio * err_ptq, (err_ptq, err_qat)
    assert _eval(q, feeds, ref, sim) >= _eval(ptq, feeds, ref, sim)
    # The FP32 model it was quantized from carries the trained weights; the reference does not.
    w = next(iter(n for n in src.graph if n.op_type == "Conv")).inputs[1].const_value.numpy()
    w0 = next(iter(n for n in model.graph if n.op_type == "Conv")).inputs[1].const_value.numpy()
    assert 0 < np.abs(w - w0).max() < 0.1 * np.abs(w0).max()


def test_exported_model_is_the_trained_student(digits):
    """The training graph (float W → Q → DQ) and the exported int8 model agree in onnxruntime."""
    model, stats, feeds, _, ref = digits
    # 7-bit int8 weights everywhere: nothing saturates on any CPU (on AVX2 the training graph's
    # float-bias Gemm and the export's fused int8 one would otherwise meet different kernels)
    target = X86Target(reduce_range=True)
    train, _ = _quantize(model, target, stats, [], False, False, True)
    check(train)
    qs = [n for n in train.graph if n.op_type == "QuantizeLinear"]
    assert sum(n.inputs[0].name in train.graph.initializers for n in qs) == 4
    exported, _ = _quantize(model, target, stats, [], False, False)
    a, b = ort_session(train), ort_session(exported)
    for f in feeds[:32]:
        np.testing.assert_allclose(ort_run(a, f)[0], ort_run(b, f)[0], atol=2e-3, rtol=0)


def test_qat_that_does_not_help_keeps_ptq(digits):
    model, stats, feeds, _, ref = digits
    target = X86Target()
    ptq, _ = _quantize(model, target, stats, [], False, True)
    q, src, rec = finetune_with(model, ptq, target, stats, steps=20, lr=0.5)
    assert rec.stats["kept"] == "ptq" and not rec.modified, rec.stats
    assert src is model and q.graph.num_nodes() == ptq.graph.num_nodes()
    assert rec.stats["holdout_cosine_qat"] < rec.stats["holdout_cosine_ptq"]


def test_distill_recovers_perturbed_weights(saved):
    """The loop alone: a student with noisy weights learns the teacher's outputs back."""
    teacher_model = load(saved("mlp", "onnx"))
    feeds = random_feeds(teacher_model, n=64, seed=4)
    teacher = TorchExecutor(teacher_model, device="cpu")
    student = TorchExecutor(load(saved("mlp", "onnx")), device="cpu")
    gen = torch.Generator().manual_seed(0)
    params = list(student.parameters().values())
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=gen))
    res = train_loop.distill(student, teacher, feeds, params, steps=150, lr=3e-3)
    assert res.batched and res.samples == 64 and res.device == "cpu"
    assert res.loss_after < 0.1 * res.loss_before, res


def test_distill_falls_back_to_per_sample_loop(saved, monkeypatch):
    def broken(self, idx):
        raise RuntimeError("vmap cannot batch this op")

    monkeypatch.setattr(train_loop.Student, "_vmapped", broken)
    model = load(saved("mlp", "onnx"))
    feeds = random_feeds(model, n=16, seed=5)
    teacher, student = TorchExecutor(model, device="cpu"), TorchExecutor(model, device="cpu")
    params = list(student.parameters().values())
    with torch.no_grad():
        params[0].mul_(1.2)
    res = train_loop.distill(student, teacher, feeds, params[:1], steps=60, lr=1e-3, batch=4)
    assert not res.batched and res.loss_after < 0.5 * res.loss_before


def test_cli_qat(tmp_path):
    out = tmp_path / "o"
    r = run_cli(
        DEMO,
        "--int8",
        "--target",
        "cuda",
        "--calib",
        CALIB,
        "--eval",
        EVAL,
        "--samples",
        "100",
        "--qat-steps",
        "60",
        "--latency-repeats",
        "3",
        "-o",
        out,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    rec = next(p for p in rep["passes"] if p["name"] == "qat[cuda]")
    assert rec["stats"]["steps"] == 60 and rec["config"]["lr"] == 1e-4
    assert {"holdout_cosine_ptq", "holdout_cosine_qat", "kept", "device"} <= set(rec["stats"])
    art = rep["artifacts"][0]
    assert art["fidelity"]["cosine_pooled"] > 0.9995
    first = next(iter(art["fidelity"]["outputs"].values()))
    assert first["accuracy"] >= first["accuracy_ref"] - 0.01


@pytest.mark.parametrize(
    "args, match",
    [
        (["--qat-steps", "10"], "add --int8"),
        (["--int8", "--calib", str(CALIB), "--qat-steps", "10", "--qat-lr", "0"], "lr > 0"),
    ],
)
def test_cli_qat_bad_options(tmp_path, args, match):
    out = tmp_path / "bad"
    r = run_cli(DEMO, *args, "-o", out)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and match in lines[0], r.stderr
    assert not out.exists() or not any(out.iterdir())


def _act_scales(model) -> dict[str, float]:
    from autoglm_compress.quantization.qat import activation_quantizers

    g = model.graph
    return {x: float(g.initializers[s].const_value.numpy()) for x, s, _ in activation_quantizers(g)}


def test_learned_activation_scales_reach_the_export(digits, monkeypatch):
    """LSQ: the activation scales train with the weights, and the exported QDQ model carries the
    learned scales (not the calibrated ones); without learning, the export keeps calibration's.
    No hold-out here: whether QAT beats PTQ on it after 60 steps is a float-kernel trajectory (kept
    with AVX-512 torch kernels, not with AVX2's); the keep decision has its own test."""
    model, stats, feeds, _, ref = digits
    monkeypatch.setattr(stats, "holdout", [])
    target = CudaTarget()
    ptq, _ = _quantize(model, target, stats, [], False, True)
    q, _, rec = finetune_with(model, ptq, target, stats, steps=60, lr=1e-4)
    assert rec.stats["activation_scales_trained"] >= 3
    before, after = _act_scales(ptq), _act_scales(q)
    assert before.keys() == after.keys()
    moved = [k for k in before if abs(after[k] / before[k] - 1) > 1e-3]
    assert moved and all(0.5 < after[k] / before[k] < 2 for k in before)
    assert _rel_mse(q, feeds, ref, simulate=True) < _rel_mse(ptq, feeds, ref, simulate=True)

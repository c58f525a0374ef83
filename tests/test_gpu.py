"""GPU paths (marker ``gpu``; skipped cleanly without CUDA / tensorrt): the executor and calibration on
CUDA, and TensorRT engines built from the cuda target's ONNX."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]

from autoglm_compress import load  # noqa: E402
from autoglm_compress.inputs import random_feeds  # noqa: E402
from autoglm_compress.runtime import TorchExecutor  # noqa: E402


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_executor_on_cuda_matches_cpu(saved, name):
    model = load(saved(name, "onnx"))
    feed = random_feeds(model, n=1, seed=3)[0]
    cpu = TorchExecutor(model, device="cpu").run(feed)
    gpu = TorchExecutor(model, device="cuda").run(feed)
    for k in cpu:
        assert gpu[k].device.type == "cuda"
        np.testing.assert_allclose(gpu[k].cpu().numpy(), cpu[k].numpy(), rtol=1e-3, atol=1e-4)


def test_gradients_on_cuda(saved):
    model = load(saved("cnn", "onnx"))
    ex = TorchExecutor(model, device="cuda")
    out = ex.run(random_feeds(model, n=1)[0], keep_grad=True)
    sum(o.pow(2).sum() for o in out.values()).backward()
    assert all(p.device.type == "cuda" for p in ex.parameters().values())
    assert sum(p.grad is not None for p in ex.parameters().values()) >= 8


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_calibration_on_cuda_equals_cpu(saved, monkeypatch, method):
    from autoglm_compress.quantization.collect import collect_stats

    model = load(saved("cnn", "onnx"))
    feeds = random_feeds(model, n=4, seed=0)
    monkeypatch.setenv("AUTOGLM_DEVICE", "cpu")
    cpu = collect_stats(model, feeds, method).ranges()
    monkeypatch.setenv("AUTOGLM_DEVICE", "cuda")
    gpu = collect_stats(model, feeds, method).ranges()
    for k in cpu:
        np.testing.assert_allclose(gpu[k], cpu[k], rtol=1e-3, atol=1e-4)


def test_qat_runs_on_cuda():
    """Distillation/QAT trains on the GPU (the executor's default device there) and the result is
    the same kind of model as on the CPU: int8 QDQ ONNX that onnxruntime verifies."""
    from pathlib import Path

    from qhelpers import calibrate_with as calibrate
    from qhelpers import finetune_with
    from qhelpers import quantize_with as _quantize

    from autoglm_compress.ir_utils import check
    from autoglm_compress.pipeline import Pipeline, build_passes
    from autoglm_compress.targets.cuda import CudaTarget

    root = Path(__file__).resolve().parents[1] / "examples"
    model = load(root / "digits_cnn.pt")
    Pipeline(build_passes(["cleanup", "fold_bn"]), progress=False).run(model)
    stats, _ = calibrate(model, str(root / "digits_calib.npz"), "minmax", 128, False, False)
    ptq, _ = _quantize(model, CudaTarget(), stats, [], False, True)
    q, _, rec = finetune_with(model, ptq, CudaTarget(), stats, steps=150)
    s = rec.stats
    assert s["device"].startswith("cuda") and s["batched"], s
    assert s["loss_after"] < 0.8 * s["loss_before"], s
    assert s["holdout_cosine_qat"] >= s["holdout_cosine_ptq"] and s["kept"] == "qat"
    check(q)


def test_tensorrt_engines(saved, tmp_path):
    pytest.importorskip("tensorrt", reason="tensorrt not installed")
    from autoglm_compress import compress

    res = compress(
        saved("cnn", "onnx"),
        int8=True,
        targets=("cuda",),
        calib_random=True,
        out_dir=tmp_path,
        build_engine=True,
        latency_repeats=5,
    )
    trt = res.artifact("cuda").extra["tensorrt"]
    assert trt["status"] == "built" and trt["fidelity"]["cosine_pooled"] > 0.99

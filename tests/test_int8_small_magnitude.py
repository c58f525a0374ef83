"""INT8 scales follow each tensor's own range, however small: a random-weight deep CNN without
biases has activations of ~1e-12 and outputs of ~1e-12 (like torchvision's mobilenet_v3_small with
random weights). A 1e-8 absolute scale floor zeroed them (cosine 0.0 on every target); the guard is
now only against zero-width ranges."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from autoglm_compress import compress  # noqa: E402


@pytest.fixture(scope="module")
def tiny_outputs(tmp_path_factory) -> Path:
    nn = torch.nn
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.Hardswish()]
    for i in range(18):
        layers += [nn.Conv2d(16, 16, 3, 1, 1, groups=16 if i % 2 else 1, bias=False),
                   nn.BatchNorm2d(16), nn.Hardswish()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10, bias=False)]
    m = nn.Sequential(*layers).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert m(x).abs().max().item() < 1e-9  # the case: every late tensor far below 1e-8
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"])
    return path


@pytest.mark.parametrize("target", ["x86", "cuda", "arm"])
def test_tiny_activations_keep_their_resolution(tiny_outputs, tmp_path, target):
    art = compress(tiny_outputs, targets=target, int8=True, calib_random=True, calib_samples=32,
                   samples=8, out_dir=tmp_path, latency_repeats=3).artifact(target)
    assert not art.fidelity.get("flagged")
    assert art.fidelity["cosine_pooled"] > 0.99


@pytest.fixture(scope="module")
def dead_channels(tmp_path_factory) -> Path:
    """Conv whose channels 0–3 have weights ~1e-10 and a bias of ±3 (what BN folding leaves of a
    channel BN switched off: EfficientNet-Lite1's stem has 7 of 32), read by no ReLU: the bias
    is the channel's whole output."""
    nn = torch.nn
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight[:4] *= 1e-10
        conv.bias[:4] = torch.tensor([3.0, -3.0, 2.5, -2.0])
    path = tmp_path_factory.mktemp("dead") / "dead.onnx"
    torch.onnx.export(conv.eval(), (torch.randn(1, 3, 16, 16),), str(path), dynamo=False,
                      opset_version=17, input_names=["x"], output_names=["y"])
    return path


@pytest.mark.parametrize("target", ["x86", "arm"])
def test_dead_channel_bias_survives_int32(dead_channels, tmp_path, target):
    """b / (s_x · s_w) ≈ 1e11 does not fit int32: the weight scale of such a channel is raised
    until it does (its weights round to 0 either way) instead of the bias saturating at ±2³¹ ·
    s_x·s_w ≈ 0.1 (the channel's constant lost)."""
    import numpy as np

    from autoglm_compress.ir_utils import ort_run, ort_session

    res = compress(dead_channels, targets=target, int8=True, calib_random=True, calib_samples=16,
                   samples=8, out_dir=tmp_path, latency_repeats=1)
    q = next(p for p in res.report["passes"] if p["name"].startswith("quantize"))
    assert q["stats"]["weight_scales_widened_for_bias"] == 4
    art = res.artifact(target)
    assert art.fidelity["cosine_min"] >= 0.999
    if target == "x86":  # the dead channels' outputs are their biases, in onnxruntime's int8 kernels
        x = np.random.default_rng(0).normal(0, 1, (1, 3, 16, 16)).astype(np.float32)
        y = ort_run(ort_session(str(art.files["model"])), {"x": x})[0]
        assert np.allclose(y[0, :4].mean((1, 2)), [3.0, -3.0, 2.5, -2.0], atol=0.03)

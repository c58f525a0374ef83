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

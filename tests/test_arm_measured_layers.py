"""``--ncnn-int8-layers measured-arm`` (issue 28 item 4): each int8 conv / FC layer's int8 and float
forms are counted alone in aarch64 ncnn under qemu-aarch64 (one guest process for all), and the
layers whose int8 form costs more guest instructions are written float. The emulated runs skip,
with the runner's one-line reason, where qemu-user cannot be used; the fallback to the x86
``measured`` mode runs everywhere."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ncnn")
torch = pytest.importorskip("torch")

from autoglm_compress import compress  # noqa: E402
from autoglm_compress.report import summary_table  # noqa: E402
from autoglm_compress.targets.arm_emulation import available, environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits_cnn.pt"
EVAL = ROOT / "examples" / "digits_eval.npz"
CALIB = ROOT / "examples" / "digits_calib.npz"
WEIGHTED = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
INT8_TAG, FP16_TAG = 0x000D4B38, 0x01306B47  # ncnn ModelBin's weight-type tags (fp32: 0)


@pytest.fixture(scope="module")
def arm_env():
    """Skips, with the runner's one-line reason, where the aarch64 emulation cannot be set up."""
    ok, why = available()
    if not ok:
        pytest.skip(why)


@pytest.fixture(scope="module")
def dws_model(tmp_path_factory) -> Path:
    """A depthwise-separable CNN: stem conv, two depthwise + pointwise blocks, pooled FC."""
    import torch.nn as nn

    torch.manual_seed(3)

    def dws(cin, cout, stride):
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1), nn.ReLU()]

    m = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), *dws(16, 32, 1), *dws(32, 64, 2),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    path = tmp_path_factory.mktemp("dws") / "dws.onnx"
    torch.onnx.export(m, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False,
                      input_names=["x"], output_names=["logits"], opset_version=17)
    return path


def _rows(param: Path) -> dict[str, dict]:
    """Weighted layers of a .param in file order: {name: {"type", "params": {key: value}}}."""
    out = {}
    for ln in param.read_text().splitlines()[2:]:
        t = ln.split()
        if t[0] in WEIGHTED:
            n_in, n_out = int(t[2]), int(t[3])
            kv = dict(x.split("=", 1) for x in t[4 + n_in + n_out:])
            out[t[1]] = {"type": t[0], "params": {int(k): v for k, v in kv.items()}}
    return out


def _weight_types(param: Path, binf: Path) -> dict[str, str]:
    """Each weighted layer's weight type as stored in the .bin (int8 / fp16 / fp32, by ncnn's
    tag), walking the file as ncnn's load_model reads it; the walk must end at the file's end."""
    data, pos, kinds = binf.read_bytes(), 0, {}
    for name, row in _rows(param).items():
        p = row["params"]
        fc = row["type"] == "InnerProduct"  # its bias_term / weight_data_size are 1= / 2=
        size, n_out, bias = int(p[2 if fc else 6]), int(p[0]), int(p.get(1 if fc else 5, 0))
        tag = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        nbytes = {INT8_TAG: size, FP16_TAG: 2 * size, 0: 4 * size}[tag]
        pos += (nbytes + 3) // 4 * 4
        kinds[name] = {INT8_TAG: "int8", FP16_TAG: "fp16", 0: "fp32"}[tag]
        pos += 4 * n_out * bias  # fp32 bias, untagged
        term = int(p.get(8, 0))
        if term:
            groups = int(p.get(7, 1)) if row["type"] == "ConvolutionDepthWise" else n_out
            pos += 4 * (groups + 1 + (term > 100))  # weight scales, bottom (and top) scale
    assert pos == len(data), "the .bin walk did not end at the file's end"
    return kinds


def _measured_arm(model: Path, out: Path, **kw):
    res = compress(model, targets="arm", arm_format="ncnn", int8=True, out_dir=out, samples=8,
                   latency_repeats=2, verify_arm="off", ncnn_int8_layers="measured-arm", **kw)
    art = res.artifact("arm", "ncnn")
    art.summary = summary_table(res.report)
    return art


def _check(art, min_cos: float) -> dict:
    m = art.extra["ncnn_int8"]["measured"]
    assert m["cpu"] == "cortex-a76" and "qemu-aarch64" in m["measured_on"]
    layers = m["layers"]
    rows = _rows(art.files["param"])
    assert set(layers) == set(rows) and m["layers_timed"] == len(rows)
    kinds = _weight_types(art.files["param"], art.files["bin"])
    for name, c in layers.items():
        assert c["fp32_insns"] > 1000 and c["int8_insns"] > 1000
        assert c["int8"] == (c["int8_insns"] < c["fp32_insns"])
        int8_flag = 8 in rows[name]["params"]
        assert int8_flag == c["int8"] and kinds[name] == ("int8" if c["int8"] else "fp32"), name
    assert sorted(m["kept_float"]) == sorted(k for k, c in layers.items() if not c["int8"])
    assert m["sum_chosen_insns"] == sum(min(c["fp32_insns"], c["int8_insns"])
                                        for c in layers.values())
    assert art.extra["ncnn_int8"]["int8"] == sum(c["int8"] for c in layers.values())
    assert art.fidelity["cosine_min"] >= min_cos
    assert any(n.startswith("--ncnn-int8-layers measured-arm:") for n in art.notes)
    return layers


def test_digits_layers_decided_by_aarch64_instructions(arm_env, tmp_path):
    layers = _check(_measured_arm(DIGITS, tmp_path, calib=CALIB, eval_data=EVAL), 0.999)
    assert len(layers) == 4  # three convs and the FC


@pytest.mark.slow  # two guest processes of one-layer nets: make test-all (the digits test above runs in make test)
def test_depthwise_separable_layers_decided_by_aarch64_instructions(arm_env, dws_model,
                                                                      tmp_path, monkeypatch):
    from autoglm_compress.targets.arm_emulation import runner

    # 12 one-layer nets in guest processes of 8 (the plugin's marker limit, made small here)
    monkeypatch.setattr(runner, "MAX_JOBS", 8)
    art = _measured_arm(dws_model, tmp_path, calib_random=True, calib_samples=32)
    layers = _check(art, 0.99)
    types = {r["type"] for r in _rows(art.files["param"]).values()}
    assert types == set(WEIGHTED) and len(layers) == 6
    # the int8 forms are counted on aarch64 code: at least one layer pays in int8 there
    assert any(c["int8"] for c in layers.values())


def test_without_emulation_falls_back_to_x86_timings(tmp_path, monkeypatch):
    """No aarch64 runner here: one note says so and the x86 ``measured`` timings decide."""

    def unavailable(*a, **k):
        raise environment.Unavailable("qemu-aarch64 not found: apt-get install qemu-user")

    monkeypatch.setattr(environment, "setup", unavailable)
    art = _measured_arm(DIGITS, tmp_path, calib=CALIB, eval_data=EVAL)
    m = art.extra["ncnn_int8"]["measured"]
    assert "layers" not in m and m["layers_timed"] == 4 and "sum_int8_ms" in m
    assert m["fallback"].startswith("aarch64 emulation not available: qemu-aarch64 not found")
    notes = [n for n in art.notes if n.startswith("--ncnn-int8-layers measured-arm:")]
    assert len(notes) == 1 and "fell back to measured (x86 timings" in notes[0]
    assert f"note: {art.files['param'].name}: {notes[0]}" in art.summary  # printed
    float_flags = [name for name, r in _rows(art.files["param"]).items() if 8 not in r["params"]]
    assert sorted(float_flags) == sorted(m["kept_float"])
    assert np.isfinite(art.fidelity["cosine_min"]) and art.fidelity["cosine_min"] >= 0.999

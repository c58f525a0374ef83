"""--range-search: activation ranges clipped by the error of the layers that read them. A tensor
whose calibrated range is stretched by rare spikes gets a tighter range and the consumer's output
error on typical inputs drops; a tensor with a non-weighted reader keeps its range."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from autoglm_compress.cli import main
from autoglm_compress.ir_utils import ort_run, ort_session

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def spiky(tmp_path_factory):
    """x → Conv → Relu (h) → Conv → y, and h also → Add with y2 (a non-weighted reader) for the
    second branch; calibration inputs carry rare large spikes that stretch h's range."""
    d = tmp_path_factory.mktemp("spiky")
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4,12,12] x) => (float[1,8,12,12] y, float[1,8,12,12] z) {
            c = Conv <pads=[1,1,1,1]> (x, w1, b1)
            h = Relu (c)
            y = Conv <pads=[1,1,1,1]> (h, w2, b2)
            c3 = Conv <pads=[1,1,1,1]> (x, w3, b1)
            k = Relu (c3)
            z = Add (k, k)
        }""")
    for name, shape in (("w1", (8, 4, 3, 3)), ("w2", (8, 8, 3, 3)), ("w3", (8, 4, 3, 3))):
        proto.graph.initializer.append(numpy_helper.from_array(
            RNG.normal(0, 0.3, shape).astype(np.float32), name))
    for name in ("b1", "b2"):
        proto.graph.initializer.append(numpy_helper.from_array(
            RNG.normal(0, 0.1, 8).astype(np.float32), name))
    path = d / "spiky.onnx"
    onnx.save(proto, str(path))
    calib = RNG.normal(0, 1, (64, 1, 4, 12, 12)).astype(np.float32)
    calib[63, 0, :, 5, 5] = 40.0  # a rare spike: in the calibration ranges, not in the hold-out
    np.savez(d / "calib.npz", x=calib)
    ev = RNG.normal(0, 1, (32, 1, 4, 12, 12)).astype(np.float32)
    np.savez(d / "eval.npz", x=ev)
    return path, d / "calib.npz", ev


def _run(path, calib, out, *extra):
    assert main([str(path), "--int8", "--target", "x86", "--cpu", "vnni", "--no-reconstruct",
                 "--calib", str(calib), "--samples", "8", "-o", str(out), *extra]) == 0
    rep = json.loads((out / "report.json").read_text())
    return rep, rep["artifacts"][0]["files"]["model"]["path"]


def test_spike_stretched_range_is_clipped(spiky, tmp_path):
    path, calib, ev = spiky
    ref = ort_session(str(path))
    errs, reps = [], []
    for flag in ((), ("--range-search",)):
        rep, art = _run(path, calib, tmp_path / ("rs" if flag else "plain"), *flag)
        sess = ort_session(art)
        e = sum(float(((ort_run(sess, {"x": x})[0] - ort_run(ref, {"x": x})[0]) ** 2).sum())
                for x in ev)
        errs.append(e)
        reps.append(rep)
    q = next(p for p in reps[1]["passes"] if p["name"].startswith("quantize"))["stats"]
    assert q["ranges_searched"] >= 2  # x and h (read by convs only)
    assert errs[1] < 0.8 * errs[0]
    # k is read by an Add: never searched, its scale is calibration's in both
    scales = []
    for rep in reps:
        m = onnx.load(rep["artifacts"][0]["files"]["model"]["path"])
        scales.append({i.name: float(numpy_helper.to_array(i)) for i in m.graph.initializer
                       if i.name in ("k_scale", "h_scale", "x_scale")})
    assert scales[0]["k_scale"] == scales[1]["k_scale"]
    assert scales[1]["h_scale"] < scales[0]["h_scale"] and scales[1]["x_scale"] < scales[0]["x_scale"]

"""ncnn: a graph output that layers also read (issue 31, item 3).

A detector whose feature map is an output and also feeds its classifier head; a low-light enhancer
whose curve maps are an output and also feed its iterations x − a·x(1 − x). ncnn's light mode
frees a blob once its reader has run, so such an output read before it is extracted came back as
"extract failed (-100)": the lowering now writes the output as a Split top that no layer reads.
A .param the lowering got wrong is refused before anything is written (exit 2), and the check's
pre-flight runs the lowered graph in ncnn before calibration.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from qhelpers import ncnn_extract
from torch import nn

pytest.importorskip("ncnn")
ort = pytest.importorskip("onnxruntime")


class Detector(nn.Module):
    """(score, feat): the feature map is the second output and the head reads it."""

    def __init__(self):
        super().__init__()
        self.back = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1))
        self.head = nn.Sequential(nn.Conv2d(8, 4, 1), nn.Sigmoid())

    def forward(self, x):
        feat = self.back(x)
        return self.head(feat), feat


class Enhancer(nn.Module):
    """(enhanced, curves): Zero-DCE-style curves, an output read by every iteration."""

    def __init__(self, iterations: int = 4):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)
        self.iterations = iterations

    def forward(self, x):
        curves = torch.tanh(self.c2(torch.relu(self.c1(x))))
        y = x
        for _ in range(self.iterations):
            y = y - curves * y * (1 - y)
        return y, curves


MODELS = {"detector": (Detector, ["score", "feat"]), "enhancer": (Enhancer, ["enhanced", "curves"])}


def _save(name: str, tmp: Path) -> tuple[Path, Path]:
    """The model as ONNX (torch's exporter, named outputs) and a [0, 1] image npz."""
    torch.manual_seed(0)
    cls, outs = MODELS[name]
    module = cls().eval()
    path = tmp / f"{name}.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.rand(1, 3, 32, 32),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=outs)
    data = tmp / "images.npz"
    np.savez(data, x=np.random.default_rng(1).random((16, 3, 32, 32), np.float32))
    return path, data


def _param_rows(param: Path) -> list[list[str]]:
    return [ln.split() for ln in param.read_text().splitlines()[2:]]


@pytest.mark.parametrize("name", ["detector", "enhancer"])
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_output_read_by_layers(tmp_path, name, int8):
    model, data = _save(name, tmp_path)
    out = tmp_path / "out"
    prec = ["--int8", "--calib", data, "--format", "ncnn"] if int8 else ["--format", "all"]
    r = run_cli(model, "--target", "arm", *prec, "--eval", data, "--samples", "8",
                "--latency-repeats", "2", "-o", out)
    assert r.returncode == 0, r.stderr
    p = "int8" if int8 else "fp32"
    param = out / f"{name}.arm.{p}.ncnn.param"
    outs = MODELS[name][1]
    rep = json.loads((out / "report.json").read_text())
    art = next(a for a in rep["artifacts"] if a["files"].get("param", {}).get("path") == str(param))
    blobs = art["extra"]["blobs"]["outputs"]  # ONNX output → blob (INT8: "feat" → "feat_float")
    read = blobs[outs[1]]  # the output the other layers read
    rows = _param_rows(param)
    split = [r for r in rows if r[0] == "Split" and read in r[5:]]
    assert len(split) == 1 and split[0][5] == read  # its first top keeps the output's name
    readers = [r for r in rows if read in r[4:4 + int(r[2])]]
    assert readers == []  # no layer reads the output blob itself

    x = np.load(data)["x"][:1]
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ref = dict(zip(outs, sess.run(outs, {"x": x})))
    for order in (outs, outs[::-1]):  # either output first: both still there
        got = ncnn_extract(param, {"x": x}, [blobs[k] for k in order], int8)
        for k in outs:
            a, b = got[blobs[k]].reshape(-1), ref[k].reshape(-1)
            if int8:
                cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
                assert cos >= 0.99, (k, cos)
            else:
                assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max()), k
    if not int8:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(out / f"{name}.arm.fp32.tflite"))
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)  # NCHW IO kept
        it.invoke()
        got = {d["name"]: it.get_tensor(d["index"]) for d in it.get_output_details()}
        for k in outs:
            assert np.abs(got[k] - ref[k]).max() <= 1e-4 * max(1.0, np.abs(ref[k]).max()), k


def _cli(argv, capsys):
    from autoglm_compress.cli import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_inconsistent_param_is_exit_2(tmp_path, monkeypatch, capsys):
    """A lowering that forgets its Splits (several layers read one blob) is refused in the check,
    before calibration and before anything is written: exit 2, one line, no artifact left."""
    from autoglm_compress import lowering
    from autoglm_compress.targets.ncnn.param import NcnnGraph

    model, data = _save("enhancer", tmp_path)
    monkeypatch.setattr(NcnnGraph, "finish", lambda self, outputs=(): None)
    monkeypatch.setattr(lowering, "calibrate", lambda *a, **k: pytest.fail("calibrated"))
    out = tmp_path / "out"
    out.mkdir()
    rc, err = _cli([model, "--target", "arm", "--format", "ncnn", "--int8", "--calib", data,
                    "-o", out], capsys)
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "inconsistent .param" in err[0] and "several readers need a Split" in err[0]
    assert list(out.iterdir()) == []


def test_runtime_failure_refused_before_calibration(tmp_path, monkeypatch, capsys):
    """A .param that passes the structural check but that ncnn cannot run (here: the output read
    by a layer, the structural check switched off) is found by the check's pre-flight run in ncnn:
    exit 2 naming the output's node, nothing calibrated, nothing written."""
    from autoglm_compress import lowering
    from autoglm_compress.targets.ncnn.param import NcnnGraph

    finish = NcnnGraph.finish
    model, data = _save("detector", tmp_path)
    monkeypatch.setattr(NcnnGraph, "finish", lambda self, outputs=(): finish(self))
    monkeypatch.setattr(NcnnGraph, "problem", lambda self, i, o: None)
    monkeypatch.setattr(lowering, "calibrate", lambda *a, **k: pytest.fail("calibrated"))
    out = tmp_path / "out"
    rc, err = _cli([model, "--target", "arm", "--format", "ncnn", "--int8", "--calib", data,
                    "-o", out], capsys)
    assert rc == 2
    assert len(err) == 1 and "ncnn cannot run the lowered model" in err[0]
    assert "found before calibration" in err[0] and "'feat'" in err[0]
    assert not out.exists()

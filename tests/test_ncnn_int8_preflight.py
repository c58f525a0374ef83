"""ncnn INT8 pre-flight (issue 31, item 4): a failure only the INT8 artifact has is found before
calibration, and one the calibrated scales cause is a refusal, not an internal error.

The check lowers the prepared IR INT8 with placeholder scales and runs it once in ncnn; a failure
is bisected to the int8 layer at fault (the first k int8 layers int8, the rest float) and refused:
exit 2, one line naming the node and ``--keep-fp32 NODE``, nothing written. A sweep of int8 shapes
(grouped / depthwise-multiplier / dilated / all-zero-weight convs, FC after Flatten of a 4-D blob,
requantize into a Split with a float reader, int8 LSTM / GRU with hidden 1 and 256, int8 Embed) found
no real INT8-only ncnn failure, so the failure is simulated: the int8 form of one conv (only its int8
form: its FP32 lowering is untouched) becomes a layer type ncnn does not know.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ncnn")

VICTIM = "/2/Conv"  # the middle conv of the three
EMBED = "/e/Gather"


def _save(tmp: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    path = tmp / "net.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 3, 16, 16),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"])
    data = tmp / "images.npz"
    np.savez(data, x=np.random.default_rng(1).random((8, 3, 16, 16), np.float32))
    return path, data


class _Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.e, self.fc = nn.Embedding(50, 16), nn.Linear(16, 8)

    def forward(self, ids):
        return self.fc(self.e(ids))


def _save_embedder(tmp: Path) -> Path:
    torch.manual_seed(0)
    path = tmp / "embed.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Embedder().eval(), (torch.zeros(1, 12, dtype=torch.long),), str(path),
                          dynamo=False, opset_version=17, input_names=["ids"])
    return path


def _break_int8(monkeypatch, victim: str, only_calibrated: bool = False) -> list[str]:
    """Make the int8 form of ``victim`` a layer ncnn refuses (an unknown type); with
    ``only_calibrated``, only when its input scale is not the placeholder's (127 = 1 / (1/127),
    or 254 once its input is re-centred: recentre.py): a failure the calibrated scales cause). Returns the list of layer types written for it."""
    from autoglm_compress.targets.ncnn.param import NcnnGraph

    seen: list[str] = []
    original = NcnnGraph.param_text

    def param_text(self):
        for layer in self.layers:
            int8 = 8 in layer.params or 18 in layer.params  # int8_scale_term: conv/FC, Embed
            if layer.source == victim or layer.name == victim:
                placeholder = layer.bottom_scale is not None and \
                    min(abs(layer.bottom_scale - 127), abs(layer.bottom_scale - 254)) < 1e-3
                if int8 and not (only_calibrated and placeholder):
                    layer.type = "Int8NotALayer"
                seen.append(layer.type)
        return original(self)

    monkeypatch.setattr(NcnnGraph, "param_text", param_text)
    return seen


def _cli(argv, capsys):
    from autoglm_compress.cli import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def _no_files(out: Path) -> None:
    assert [p.name for p in out.iterdir()] == []


def test_int8_only_failure_is_exit_2_before_calibration(tmp_path, monkeypatch, capsys):
    """The FP32 lowering runs, the INT8 one does not: exit 2 in the check, one line naming the
    conv and --keep-fp32, no calibration, nothing in -o."""
    from autoglm_compress import lowering

    model, data = _save(tmp_path)
    seen = _break_int8(monkeypatch, VICTIM)
    monkeypatch.setattr(lowering, "calibrate", lambda *a, **k: pytest.fail("calibrated"))
    out = tmp_path / "out"
    out.mkdir()
    rc, err = _cli([model, "--target", "arm", "--format", "ncnn", "--int8", "--calib", data,
                    "-o", out], capsys)
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert f"(node '{VICTIM}')" in err[0] and "(int8)" in err[0]
    assert "found before calibration" in err[0] and f"--keep-fp32 '{VICTIM}'" in err[0]
    assert "Int8NotALayer" in err[0] or "could not load" in err[0]
    assert "Convolution" in seen and "Int8NotALayer" in seen  # FP32 ran; the int8 form did not
    _no_files(out)


def test_fp32_run_of_the_same_model_is_not_refused(tmp_path, monkeypatch):
    """The simulated fault is in the int8 form only: the FP32 check passes, and the INT8 check
    passes once the named node is kept float (the advice works)."""
    from autoglm_compress import frontend
    from autoglm_compress.targets.ncnn.target import NcnnTarget

    model, _ = _save(tmp_path)
    _break_int8(monkeypatch, VICTIM)
    m = frontend.load(model)
    target = NcnnTarget()
    assert target.check(m, "fp32") == []
    with pytest.raises(Exception, match=VICTIM):
        target.check(m, "int8")
    target.keep_fp32 = (VICTIM,)
    assert target.check(m, "int8") == []


def test_embedding_int8_failure_names_the_gather_and_keep_fp32_works(tmp_path, monkeypatch):
    """An int8 Embed table ncnn refuses is bisected to its Gather (2 int8 layers: the table and
    the FC); --keep-fp32 on it writes the table float (the lowering honours it for the layers
    it quantizes itself: Embed, LSTM / GRU / RNN)."""
    from autoglm_compress import frontend
    from autoglm_compress.errors import UnsupportedOpError
    from autoglm_compress.targets.ncnn.lower import lower_to_ncnn
    from autoglm_compress.targets.ncnn.target import NcnnTarget

    m = frontend.load(_save_embedder(tmp_path))
    _break_int8(monkeypatch, EMBED)
    target = NcnnTarget()
    with pytest.raises(UnsupportedOpError) as e:
        target.check(m, "int8")
    assert e.value.node == EMBED and e.value.op == "Gather"
    assert e.value.exit_code == 2 and f"--keep-fp32 '{EMBED}'" in str(e.value)
    target.keep_fp32 = ("Gather",)  # an op-type pattern, as --keep-fp32 takes it
    assert target.check(m, "int8") == []
    prepared, _ = target.prepared(m, "int8")
    io = lower_to_ncnn(prepared, "int8", keep_float=frozenset({EMBED}))[2]
    assert EMBED in io["float"] and EMBED not in io["int8"]


def test_calibrated_int8_failure_is_exit_2_not_internal(tmp_path, monkeypatch, capsys):
    """A failure only the calibrated scales cause (the pre-flight's placeholder passes): after
    calibration, one line naming the conv and --keep-fp32, exit 2, nothing left in -o (the run's
    staging folder goes); with --keep-fp32 on that conv the run succeeds."""
    model, data = _save(tmp_path)
    seen = _break_int8(monkeypatch, VICTIM, only_calibrated=True)
    out = tmp_path / "out"
    out.mkdir()
    argv = [model, "--target", "arm", "--format", "ncnn", "--int8", "--calib", data,
            "--samples", "4", "--latency-repeats", "1", "-o", out]
    rc, err = _cli(argv, capsys)
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and "internal" not in err[0], err
    assert f"(node '{VICTIM}')" in err[0] and "found after calibration" in err[0]
    assert f"--keep-fp32 '{VICTIM}'" in err[0]
    assert "Int8NotALayer" in seen and seen.count("Int8NotALayer") < len(seen)  # pre-flight ran it
    _no_files(out)
    rc, err = _cli([*argv, "--keep-fp32", VICTIM], capsys)
    assert rc == 0, err
    assert (out / "net.arm.int8.ncnn.param").exists()

"""arm target (ncnn) on a real recurrent model: khmer-ocr-ocm's CRNN (VGG-style CNN + 2-layer
BiLSTM, its bundled weights, rendered Khmer text lines, a pickled nn.Module through the dynamo
exporter) through the CLI as a user runs it. Each BiLSTM is one ncnn LSTM layer (direction 2); at
INT8 they run ncnn's int8 LSTM (int8 weights, per-timestep activation scales) with the convs and the
classifier."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest
import zoo

pytest.importorskip("ncnn")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crnn(tmp_path_factory):
    if find_spec("khmer_ocr_ocm") is None:
        pytest.skip("wheel 'khmer-ocr-ocm' not installed (requirements-real.txt)")
    return zoo.khmer_crnn(tmp_path_factory.mktemp("ncnn_crnn"), n_calib=16, n_eval=4)


def _run(m, out: Path, *extra) -> dict:
    from autoglm_compress.cli import main

    rc = main([str(m.model), *m.args, "--target", "arm", "--format", "ncnn", "--eval",
               str(m.eval), "--samples", "4", "--latency-repeats", "2", "--verify-arm", "off",
               "-o", str(out), *map(str, extra)])
    assert rc == 0
    (art,) = json.loads((out / "report.json").read_text())["artifacts"]
    return art


def test_khmer_crnn_fp32_and_int8_in_ncnn(crnn, tmp_path):
    fp32 = _run(crnn, tmp_path / "fp32")
    assert fp32["fidelity"]["cosine_min"] > 0.9999
    assert fp32["extra"]["ncnn_layers"]["types"]["LSTM"] == 2
    q = _run(crnn, tmp_path / "int8", "--int8", "--calib", crnn.calib, "--calib-samples", 16)
    assert q["fidelity"]["cosine_min"] > 0.999
    n = q["extra"]["ncnn_int8"]
    assert n["float"] == 0 and n["int8"] == 10  # 7 convs, 2 LSTMs, the classifier
    assert any("LSTM/GRU/RNN layers run int8 in ncnn" in note for note in q["notes"])
    assert q["size_bytes"] < 0.3 * fp32["size_bytes"]

"""arm target (TFLite) on a real recurrent model: khmer-ocr-ocm's CRNN (VGG-style CNN + 2-layer
BiLSTM, its bundled weights, rendered Khmer text lines) through the CLI as a user runs it. The
LSTMs lower to UNIDIRECTIONAL_SEQUENCE_LSTM (two per layer); at INT8 they stay float with their
reason while the convolutions run int8; the LSTMs run TFLite's hybrid kernel (int8 weights)."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest
import zoo

pytest.importorskip("ai_edge_litert")

from autoglm_compress.targets.tflite.rules_rnn import FLOAT_REASONS  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crnn(tmp_path_factory):
    if find_spec("khmer_ocr_ocm") is None:
        pytest.skip("wheel 'khmer-ocr-ocm' not installed (requirements-real.txt)")
    return zoo.khmer_crnn(tmp_path_factory.mktemp("arm_crnn"), n_calib=16, n_eval=4)


def _run(m, out: Path, *extra) -> dict:
    from autoglm_compress.cli import main

    rc = main([str(m.model), *m.args, "--target", "arm", "--format", "tflite", "--eval",
               str(m.eval), "--samples", "4", "--latency-repeats", "2", "-o", str(out),
               *map(str, extra)])
    assert rc == 0
    (art,) = json.loads((out / "report.json").read_text())["artifacts"]
    return art


def test_khmer_crnn_fp32_and_int8_in_litert(crnn, tmp_path):
    from test_tflite_rnn import _ops

    fp32 = _run(crnn, tmp_path / "fp32")
    assert fp32["fidelity"]["cosine_pooled"] > 0.9999
    assert fp32["extra"]["reference_kernels"]["cosine_pooled"] > 0.9999
    assert _ops(Path(fp32["path"]).read_bytes()).count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 4
    q = _run(crnn, tmp_path / "int8", "--int8", "--calib", crnn.calib, "--calib-samples", 16)
    assert q["fidelity"]["cosine_pooled"] > 0.99
    census = q["extra"]["tflite_ops"]
    lstm = [f for f in census["float_ops"] if f["op"] == "UNIDIRECTIONAL_SEQUENCE_LSTM"]
    assert len(lstm) == 4 and all(f["reason"] == FLOAT_REASONS["LSTM"] for f in lstm)
    assert census["int8"] >= 7 and 0 < census["float_mac_share"] < 0.2
    assert q["size_bytes"] < fp32["size_bytes"] / 3  # LSTM weights int8 too (hybrid kernel)

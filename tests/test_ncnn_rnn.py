"""arm target (ncnn): torch nn.LSTM / nn.GRU / nn.RNN lowered to ncnn's LSTM / GRU / RNN layers (ops_rnn.py, the
seq_first prepare pass). Each artifact is run here in the ncnn Python package, its outputs compared
with onnxruntime on the exported ONNX model, at FP32, FP16 and INT8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ncnn = pytest.importorskip("ncnn")
torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from autoglm_compress import compress  # noqa: E402
from autoglm_compress.cli import main  # noqa: E402

SEQ, IN, HID = 6, 8, 16


class Rnn(torch.nn.Module):
    """``kind`` over x ([1, S, I] batch_first, else [S, 1, I]); with ``h0`` the initial states are
    inputs and the last layer's final hidden state ``h_n[-1]`` a second output."""

    def __init__(self, kind: str, layers: int, bi: bool, batch_first: bool, h0: bool):
        super().__init__()
        self.kind, self.h0 = kind, h0
        self.rnn = getattr(torch.nn, kind)(IN, HID, num_layers=layers, bidirectional=bi,
                                           batch_first=batch_first)

    def forward(self, x, h=None, c=None):
        if not self.h0:
            return self.rnn(x)[0]
        y, state = self.rnn(x, (h, c) if self.kind == "LSTM" else h)
        hn = state[0] if self.kind == "LSTM" else state
        return y, hn[-1]


class Crnn(torch.nn.Module):
    """conv → BN → ReLU → pool → [1, C·H', W'] → BiLSTM (batch_first) → Linear per column."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.MaxPool2d((4, 1)))
        self.rnn = torch.nn.LSTM(32, 24, bidirectional=True, batch_first=True)
        self.fc = torch.nn.Linear(48, 11)

    def forward(self, x):
        f = self.conv(x)  # [1, 16, 2, 16]
        f = f.flatten(1, 2).permute(0, 2, 1)  # [1, 16 columns, 32]
        return self.fc(self.rnn(f)[0])


class BiLstmRows(torch.nn.Module):
    """crnn.pytorch's BidirectionalLSTM: a sequence-first BiLSTM, then a Linear on its output
    flattened to rows [T·b, 2H] and viewed back to [T, b, K]."""

    def __init__(self, nin: int, nh: int, nout: int):
        super().__init__()
        self.rnn = torch.nn.LSTM(nin, nh, bidirectional=True)
        self.embedding = torch.nn.Linear(2 * nh, nout)

    def forward(self, x):
        r, _ = self.rnn(x)
        t, b, h = r.size()
        return self.embedding(r.view(t * b, h)).view(t, b, -1)


class SeqCrnn(torch.nn.Module):
    """conv → [W, 1, C] (``squeeze(2).permute(2, 0, 1)``) → two BidirectionalLSTMs."""

    def __init__(self):
        super().__init__()
        self.cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.MaxPool2d((16, 1)))
        self.rnn = torch.nn.Sequential(BiLstmRows(16, 24, 24), BiLstmRows(24, 24, 11))

    def forward(self, x):
        return self.rnn(self.cnn(x).squeeze(2).permute(2, 0, 1))


def _export(module: torch.nn.Module, args: tuple, path: Path) -> Path:
    torch.manual_seed(0)
    module.eval()
    names = ["x", "h", "c"][:len(args)]
    torch.onnx.export(module, args, str(path), input_names=names, dynamo=False, opset_version=17)
    return path


def _feeds(n: int, shapes: dict[str, tuple], seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(0, 1, s).astype(np.float32) for k, s in shapes.items()}
            for _ in range(n)]


def _run_ncnn(art, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The artifact in the ncnn package: inputs without the batch axis (a sequence-first [S, 1, I]
    as the [S, I] sequence blob), outputs flat."""
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = art.precision == "fp16"
    net.opt.use_fp16_arithmetic = False
    net.opt.use_int8_inference = art.precision == "int8"
    assert net.load_param(str(art.files["param"])) == 0
    assert net.load_model(str(art.files["bin"])) == 0
    blobs = art.extra["blobs"]
    ex = net.create_extractor()
    mats = []
    for name, blob in blobs["inputs"].items():
        x = feed[name]
        mats.append(ncnn.Mat(np.ascontiguousarray(x.reshape([d for i, d in enumerate(x.shape)
                                                             if i != list(x.shape).index(1)])))
                    .clone())
        ex.input(blob, mats[-1])
    outs = []
    for blob in blobs["outputs"].values():
        ret, m = ex.extract(blob)
        assert ret == 0
        outs.append(np.array(m).reshape(-1))
    return outs


def _max_err(onnx_path: Path, art, feeds) -> float:
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    err = 0.0
    for f in feeds:
        ref = sess.run(None, f)
        got = _run_ncnn(art, f)
        assert len(got) == len(ref)
        for r, g in zip(ref, got):
            assert g.size == r.size
            err = max(err, float(np.abs(g - r.reshape(-1)).max()))
    return err


def _ncnn(path: Path, out: Path, precision: str, data: Path | None = None):
    return compress(path, targets="arm", arm_format="ncnn", out_dir=out, samples=4,
                    latency_repeats=1, verify_arm="off", fp16=precision == "fp16",
                    int8=precision == "int8", calib=data, calib_random=data is None,
                    calib_samples=8).artifact("arm", "ncnn")


def _layers(art) -> list[list[str]]:
    return [ln.split() for ln in art.files["param"].read_text().splitlines()[2:]]


def _shapes(batch_first: bool, layers: int, bi: bool, h0: bool, kind: str) -> dict:
    shapes = {"x": (1, SEQ, IN) if batch_first else (SEQ, 1, IN)}
    if h0:
        shapes["h"] = (layers * (2 if bi else 1), 1, HID)
        if kind == "LSTM":
            shapes["c"] = shapes["h"]
    return shapes


CASES = [  # kind, layers, bidirectional, batch_first, h0 given
    ("LSTM", 1, False, False, False),
    ("LSTM", 2, True, True, False),
    ("LSTM", 2, True, False, True),
    ("GRU", 1, True, False, True),
    ("GRU", 2, False, True, False),
    ("RNN", 2, True, False, True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_rnn_fp32_matches_onnxruntime(tmp_path, case):
    kind, layers, bi, bf, h0 = case
    shapes = _shapes(bf, layers, bi, h0, kind)
    args = tuple(torch.from_numpy(v) for v in _feeds(1, shapes)[0].values())
    path = _export(Rnn(kind, layers, bi, bf, h0), args, tmp_path / "rnn.onnx")
    art = _ncnn(path, tmp_path / "out", "fp32")
    assert _max_err(path, art, _feeds(3, shapes, seed=1)) < 1e-4
    rnn = [r for r in _layers(art) if r[0] == kind]
    assert len(rnn) == layers
    assert all(f"2={2 if bi else 0}" in r and "0=16" in r for r in rnn)
    if h0:  # the states are bottoms 2 (and 3), Y_h a top
        assert rnn[0][2] == ("3" if kind == "LSTM" else "2")


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_rnn_int8_and_fp16(tmp_path, kind):
    shapes = _shapes(True, 2, True, False, kind)
    args = tuple(torch.from_numpy(v) for v in _feeds(1, shapes)[0].values())
    path = _export(Rnn(kind, 2, True, True, False), args, tmp_path / "rnn.onnx")
    feeds = _feeds(3, shapes, seed=1)
    fp16 = _ncnn(path, tmp_path / "fp16", "fp16")
    assert _max_err(path, fp16, feeds) < 5e-3
    int8 = _ncnn(path, tmp_path / "int8", "int8")
    err = _max_err(path, int8, feeds)
    assert 1e-4 < err < 0.05  # int8 weights really used, and close
    rnn = [r for r in _layers(int8) if r[0] == kind]
    assert len(rnn) == 2 and all("8=2" in r for r in rnn)  # ncnn's int8_scale_term
    # int8 weights (1 byte) with fp32 biases and row scales vs fp16 weights (2 bytes)
    assert int8.files["bin"].stat().st_size < 0.7 * fp16.files["bin"].stat().st_size
    assert int8.extra["ncnn_int8"]["int8"] == 2 and int8.extra["ncnn_int8"]["float"] == 0
    assert any("LSTM/GRU/RNN layers run int8 in ncnn" in n and "per timestep" in n
               for n in int8.notes)


def test_rnn_int8_measured_layers(tmp_path):
    """--ncnn-int8-layers measured times each int8 LSTM against its float twin and keeps the
    slower-in-int8 ones float, listed as float layers (which ones depends on this machine)."""
    shapes = _shapes(True, 2, True, False, "LSTM")
    args = tuple(torch.from_numpy(v) for v in _feeds(1, shapes)[0].values())
    path = _export(Rnn("LSTM", 2, True, True, False), args, tmp_path / "rnn.onnx")
    art = compress(path, targets="arm", arm_format="ncnn", out_dir=tmp_path / "o", samples=2,
                   latency_repeats=1, verify_arm="off", int8=True, calib_random=True,
                   calib_samples=4, ncnn_int8_layers="measured").artifact("arm", "ncnn")
    n = art.extra["ncnn_int8"]
    assert n["measured"]["layers_timed"] == 2
    assert sorted(n["float_layers"]) == n["measured"]["kept_float"]
    assert n["int8"] + n["float"] == 2
    rows = [r for r in _layers(art) if r[0] == "LSTM"]
    assert sum("8=2" in r for r in rows) == n["int8"]
    assert _max_err(path, art, _feeds(2, shapes, seed=1)) < 0.05


@pytest.mark.parametrize("precision,net", [("fp32", Crnn), ("int8", Crnn), ("fp32", SeqCrnn)],
                         ids=["fp32", "int8", "seq-first-rows-fp32"])
def test_crnn_end_to_end(tmp_path, precision, net):
    x = _feeds(1, {"x": (1, 1, 16, 32)})[0]["x"]
    path = _export(net(), (torch.from_numpy(x),), tmp_path / "crnn.onnx")
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.stack([f["x"][0] for f in _feeds(8, {"x": (1, 1, 16, 32)}, seed=2)]))
    feeds = _feeds(3, {"x": (1, 1, 16, 32)}, seed=3)
    art = _ncnn(path, tmp_path / precision, precision, data if precision == "int8" else None)
    types = [r[0] for r in _layers(art)]
    n_lstm = 2 if net is SeqCrnn else 1
    assert types.count("LSTM") == n_lstm and types.count("InnerProduct") == n_lstm
    assert "Convolution" in types
    assert "Permute" in types  # [1, C, W] → [1, W, C]: the batch-first twin of [W, 1, C]
    if precision == "fp32":
        assert art.fidelity["cosine_pooled"] >= 0.999
        assert _max_err(path, art, feeds) < 1e-4
    else:
        assert art.fidelity["cosine_pooled"] >= 0.99
        assert _max_err(path, art, feeds) < 0.1
        assert art.extra["ncnn_int8"]["int8"] == 4  # 2 convs, the LSTM, the FC


BASE = ["--target", "arm", "--format", "ncnn", "--calib-random", "--samples", "2",
        "--latency-repeats", "1", "--verify-arm", "off"]


def test_cli_pt2_seq_first_bilstm(tmp_path):
    """Through the CLI from a torch.export archive (the dynamo exporter's LSTM → Transpose →
    Reshape pattern, sequence-first input and output)."""
    x = torch.randn(SEQ, 1, IN)
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(Rnn("LSTM", 1, True, False, False).eval(), (x,)), good)
    out = tmp_path / "out"
    assert main([str(good), *BASE, "-o", str(out)]) == 0
    param = out / "good.arm.fp32.ncnn.param"
    assert [r.split()[0] for r in param.read_text().splitlines()[2:]].count("LSTM") == 1


def test_cli_refuses_a_sequence_first_value_read_by_another_op(tmp_path, capsys):
    """A sequence-first output read by something other than a reshape / LSTM / GRU is refused in
    check (exit 2), naming the op."""

    class Bad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.GRU(IN, HID)

        def forward(self, x):
            return torch.relu(self.rnn(x)[0])

    bad = _export(Bad(), (torch.randn(SEQ, 1, IN),), tmp_path / "bad.onnx")
    assert main([str(bad), *BASE, "-o", str(tmp_path / "bad_out")]) == 2
    err = capsys.readouterr().err
    assert "'Relu'" in err and "sequence-first" in err and "batch_first=True" in err

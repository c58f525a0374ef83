"""arm target, ncnn format (``--target arm --format ncnn|all``): our own param/bin emitter, run in
the ncnn Python runtime at FP32 (fp16 storage off), FP16 (fp16 weight tag) and INT8 (int8 weights +
per-channel scales + bottom-blob scale, ``use_int8_inference``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("ncnn")

from autoglm_compress import compress  # noqa: E402
from autoglm_compress.cli import main  # noqa: E402
from autoglm_compress.report import validate_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "digits_cnn.pt"
EVAL = ROOT / "examples" / "digits_eval.npz"
CALIB = ROOT / "examples" / "digits_calib.npz"


def _layers(param: Path) -> list[list[str]]:
    lines = param.read_text().splitlines()
    assert lines[0] == "7767517"
    n_layers, n_blobs = map(int, lines[1].split())
    rows = [ln.split() for ln in lines[2:]]
    assert len(rows) == n_layers
    return rows


def _ncnn(model: Path, tmp_path: Path, precision: str, calib_samples: int = 16):
    """``model`` through ``--target arm --format ncnn`` at ``precision`` (random calibration)."""
    return compress(model, targets="arm", arm_format="ncnn", out_dir=tmp_path, samples=4,
                    latency_repeats=3, fp16=precision == "fp16", int8=precision == "int8",
                    calib_random=True, calib_samples=calib_samples).artifact("arm", "ncnn")


def _blob_readers(rows) -> Counter:
    c: Counter = Counter()
    for r in rows:
        n_in = int(r[2])
        c.update(r[4:4 + n_in])
    return c


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_digits_in_ncnn(tmp_path, precision):
    kw = {"int8": True, "calib": CALIB} if precision == "int8" else {"fp16": precision == "fp16"}
    res = compress(DEMO, targets="arm", arm_format="ncnn", eval_data=EVAL, samples=200,
                   out_dir=tmp_path, latency_repeats=5, **kw)
    art = res.artifact("arm", "ncnn")
    assert art.files["param"].name == f"digits_cnn.arm.{precision}.ncnn.param"
    assert art.files["bin"].suffix == ".bin" and art.runtime == "ncnn"
    out = next(iter(art.fidelity["outputs"].values()))
    min_cos = {"fp32": 0.99999, "fp16": 0.9995, "int8": 0.999}[precision]
    assert art.fidelity["cosine_pooled"] >= min_cos
    assert out["accuracy_ref"] - out["accuracy"] <= 0.005  # INT8 within half a point of FP32
    rows = _layers(art.files["param"])
    types = Counter(r[0] for r in rows)
    assert types["Convolution"] == 3 and types["InnerProduct"] == 1
    bin_size = art.files["bin"].stat().st_size
    if precision == "int8":
        assert all("8=2" in r or "8=102" in r for r in rows
                   if r[0] in ("Convolution", "InnerProduct"))
        assert art.extra["ncnn_int8"] == {
            "int8": 4, "float": 0, "float_layers": [], "requantized": 1,  # conv1 → conv2 int8
            "recentred": 1,  # conv1's ReLU output, read only by conv2: c − y (recentre.py)
            "int8_edges": {"int8": 1, "Pooling has no int8 kernel in ncnn": 2,
                           "graph input (float)": 1}}
        assert sum(1 for r in rows if "8=102" in r) == 1
        assert bin_size < 0.3 * 14618 * 4  # int8 weights: a quarter of the FP32 bytes + scales
    elif precision == "fp16":
        assert bin_size < 0.55 * 14618 * 4
    side = art.latency["ncnn"]
    assert {"fp32", "fp16"} <= set(side) and (precision != "int8" or "int8" in side)
    validate_report(res.report)


@pytest.mark.parametrize(("precision", "min_cos"),
                         [("fp32", 0.99999), ("fp16", 0.999), ("int8", 0.99)])
def test_zoo_cnn_residual_depthwise_upsample_concat(saved, tmp_path, precision, min_cos):
    """Shared blobs (residual Add, branches) get a Split; with int8 inference on, ncnn runs it."""
    res = compress(saved("cnn", "onnx"), targets="arm", arm_format="ncnn", out_dir=tmp_path,
                   samples=4, latency_repeats=3, fp16=precision == "fp16",
                   int8=precision == "int8", calib_random=True, calib_samples=32)
    art = res.artifact("arm", "ncnn")
    rows = _layers(art.files["param"])
    types = Counter(r[0] for r in rows)
    assert {"Convolution", "ConvolutionDepthWise", "Split", "BinaryOp", "Concat",
            "Interp"} <= set(types)
    readers = _blob_readers(rows)
    assert max(readers.values()) == 1  # every blob has one reader: Split before fan-out
    assert art.fidelity["cosine_pooled"] >= min_cos
    if precision == "int8":
        assert art.extra["ncnn_int8"]["int8"] >= 8 and art.extra["ncnn_int8"]["float"] == 0


def test_int8_layers_measured_keeps_slower_kernels_float(saved, tmp_path, monkeypatch):
    """--ncnn-int8-layers measured: every int8 conv/FC is timed against its float twin; exactly
    the ones timed slower are written float (the timings are stubbed to make the choice fixed)."""
    from autoglm_compress.targets.ncnn import layer_timing

    real = layer_timing.time_int8_layers
    seen = {}

    def timed(q, f, threads, repeats=15):
        got = real(q, f, threads, repeats=2)  # the real one-layer nets run
        seen.update(got)
        # depthwise convs "slower" in int8, the rest faster
        dw = {layer.source for layer in q["graph"].layers if layer.type == "ConvolutionDepthWise"}
        return {k: {"fp32_ms": 1.0, "int8_ms": 2.0 if k in dw else 0.5} for k in got}

    monkeypatch.setattr(layer_timing, "time_int8_layers", timed)
    art = compress(saved("cnn", "onnx"), targets="arm", arm_format="ncnn", out_dir=tmp_path,
                   samples=4, latency_repeats=2, int8=True, calib_random=True, calib_samples=32,
                   ncnn_int8_layers="measured").artifact("arm", "ncnn")
    q = art.extra["ncnn_int8"]
    rows = _layers(art.files["param"])
    dw = [r for r in rows if r[0] == "ConvolutionDepthWise"]
    assert dw and all(not any(t.startswith("8=") for t in r) for r in dw)  # float depthwise
    convs = [r for r in rows if r[0] in ("Convolution", "InnerProduct")]
    assert all(any(t.startswith("8=") for t in r) for r in convs)
    assert q["measured"]["layers_timed"] == len(seen) == len(dw) + len(convs)
    assert all(v["fp32_ms"] > 0 and v["int8_ms"] > 0 for v in seen.values())
    assert (q["int8"], q["float"]) == (len(convs), len(dw))
    assert sorted(q["measured"]["kept_float"]) == sorted(q["float_layers"])
    assert art.fidelity["cosine_pooled"] >= 0.99 and any("measured" in n for n in art.notes)


def test_format_all_writes_both_from_one_calibration(tmp_path):
    res = compress(DEMO, targets="arm", arm_format="all", int8=True, calib=CALIB, eval_data=EVAL,
                   samples=64, out_dir=tmp_path, latency_repeats=3)
    tfl, nc = res.artifact("arm", "tflite"), res.artifact("arm", "ncnn")
    assert tfl.path.suffix == ".tflite" and nc.files["param"].suffix == ".param"
    q = [p for p in res.report["passes"] if p["name"].startswith("quantize")]
    assert len(q) == 2 and res.report["calibration"]["samples"] > 0
    assert min(tfl.fidelity["cosine_pooled"], nc.fidelity["cosine_pooled"]) > 0.999


def test_op_without_ncnn_lowering_is_refused_before_calibration(saved, tmp_path, capsys):
    rc = main([str(saved("transformer", "onnx")), "--target", "arm", "--format", "ncnn", "--int8",
               "--calib-random", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "format ncnn" in err and "--format tflite" in err
    assert not list(tmp_path.glob("*.ncnn.*"))


class _Layers:
    """Torch model (built in the fixture) with BN on the input (in-place first layer), PReLU,
    ceil-mode max pool, two deconvs (crop + output_padding), TanH, grouped conv, x·σ(x) → Swish,
    ELU, HardSigmoid, GELU (Erf spelling) and a mean reduction."""


@pytest.fixture(scope="module")
def layers_model(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn_in = nn.BatchNorm2d(3)
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.pr = nn.PReLU(8)
            self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            self.up = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1)
            self.up2 = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
            self.g = nn.Conv2d(4, 8, 3, padding=1, groups=2)
            self.hs = nn.Hardsigmoid()

        def forward(self, x):
            y = self.pool(self.pr(self.c1(self.bn_in(x))))
            y = torch.tanh(self.up2(torch.relu(self.up(y))))
            y = self.g(y)
            y = y * torch.sigmoid(y)
            y = nn.functional.elu(y) + self.hs(y)
            return nn.functional.gelu(y).mean(dim=(2, 3), keepdim=True).flatten(1)

    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.bn_in.running_mean.uniform_(-0.5, 0.5)
        m.bn_in.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("ncnn_layers") / "layers.onnx"
    torch.onnx.export(m, (torch.randn(1, 3, 15, 15),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    return path


@pytest.mark.parametrize(("precision", "min_cos"),
                         [("fp32", 0.99999), ("fp16", 0.999), ("int8", 0.99)])
def test_layer_set_in_ncnn(layers_model, tmp_path, precision, min_cos):
    art = _ncnn(layers_model, tmp_path, precision, calib_samples=32)
    types = Counter(r[0] for r in _layers(art.files["param"]))
    assert {"BatchNorm", "PReLU", "Deconvolution", "TanH", "ConvolutionDepthWise", "Swish",
            "ELU", "HardSigmoid", "GELU", "Reduction", "Split"} <= set(types)
    assert types["Deconvolution"] == 2 and "Sigmoid" not in types
    assert art.fidelity["cosine_pooled"] >= min_cos
    if precision == "int8":  # conv and grouped conv int8; ncnn's Deconvolution has no int8
        assert art.extra["ncnn_int8"]["int8"] == 2


@pytest.fixture(scope="module")
def seq_model(tmp_path_factory) -> Path:
    """Reflect and constant Padding, a conv map flattened to tokens (Permute), LayerNorm and
    self-attention-style MatMuls of two activations with a Softmax between."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 16, 3, stride=2)
            self.ln = nn.LayerNorm(16)

        def forward(self, x):
            y = nn.functional.pad(x, (1, 2, 0, 1), mode="reflect")
            y = nn.functional.pad(self.c(y), (1, 1, 1, 1), value=0.25)
            t = self.ln(y.flatten(2).transpose(1, 2))
            a = torch.matmul(t, t.transpose(1, 2)).softmax(-1)
            return torch.matmul(a, t)

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ncnn_seq") / "seq.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, 3, 12, 12),), str(path), dynamo=False,
                      opset_version=17, input_names=["x"], output_names=["y"])
    return path


@pytest.mark.parametrize(("precision", "min_cos"), [("fp32", 0.99999), ("int8", 0.999)])
def test_padding_layernorm_matmul_in_ncnn(seq_model, tmp_path, precision, min_cos):
    art = _ncnn(seq_model, tmp_path, precision)
    types = Counter(r[0] for r in _layers(art.files["param"]))
    assert types["Padding"] == 2 and types["MatMul"] == 2 and types["LayerNorm"] == 1
    assert types["Permute"] >= 1
    assert art.fidelity["cosine_pooled"] >= min_cos


@pytest.fixture(scope="module")
def eltwise_model(tmp_path_factory) -> Path:
    """Three conv branches joined by ONNX Sum (3 inputs), Mean (2) and Max (3): ncnn Eltwise."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,10,10] x) => (float[1,6,10,10] y) {
            a = Conv <pads=[1,1,1,1]> (x, w1, b1)
            b = Conv <pads=[1,1,1,1]> (x, w2, b2)
            c = Conv <pads=[1,1,1,1]> (x, w3, b3)
            s = Sum (a, b, c)
            m = Mean (s, a)
            y = Max (m, b, c)
        }""")
    for i in (1, 2, 3):
        proto.graph.initializer.extend([
            numpy_helper.from_array(rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32), f"w{i}"),
            numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), f"b{i}")])
    path = tmp_path_factory.mktemp("ncnn_eltwise") / "eltwise.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize(("precision", "min_cos"), [("fp32", 0.99999), ("int8", 0.995)])
def test_eltwise_sum_mean_max(eltwise_model, tmp_path, precision, min_cos):
    art = _ncnn(eltwise_model, tmp_path, precision)
    rows = _layers(art.files["param"])
    elt = [r for r in rows if r[0] == "Eltwise"]
    got = [(int(r[2]), r[4 + int(r[2]) + int(r[3]):]) for r in elt]
    assert [(k, p[0]) for k, p in got] == [(3, "0=1"), (2, "0=1"), (3, "0=2")]
    assert got[1][1][1].startswith("-23301=2,") and len(got[0][1]) == 1  # Mean: coefficients ½, ½
    assert "BinaryOp" not in {r[0] for r in rows}
    assert art.fidelity["cosine_pooled"] >= min_cos


@pytest.fixture(scope="module")
def encoder_model(tmp_path_factory) -> Path:
    """A post-LN transformer block (4 heads, GELU FFN) exported at batch 1: its linear layers run
    on [S, H] rows between Reshapes — the flattened batch ncnn's blobs cannot hold."""
    torch = pytest.importorskip("torch")
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_prune_couplings import _Encoder

    class One(_Encoder):
        def __init__(self):
            super().__init__()
            self.b, self.s = 1, 10

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ncnn_enc") / "enc.onnx"
    torch.onnx.export(One().eval(), (torch.randn(1, 10, 64),), str(path), dynamo=False,
                      opset_version=17, input_names=["x"], output_names=["y"])
    return path


@pytest.mark.parametrize(("precision", "min_cos"),
                         [("fp32", 0.99999), ("fp16", 0.9999), ("int8", 0.999)])
def test_transformer_block_rows_lifted(encoder_model, tmp_path, precision, min_cos):
    """The row regions are lifted to [1, S, ·]: six InnerProducts (Q, K, V, O, FFN ×2) with their
    biases folded in, the attention as one SDPA layer, two LayerNorms; int8: all six linears."""
    art = _ncnn(encoder_model, tmp_path, precision)
    rows = _layers(art.files["param"])
    types = Counter(r[0] for r in rows)
    assert types["InnerProduct"] == 6 and types["SDPA"] == 1 and types["LayerNorm"] == 2
    assert types["GELU"] == 1 and "Softmax" not in types and "MatMul" not in types
    assert any("lifted" in n for n in art.notes)
    assert art.fidelity["cosine_pooled"] >= min_cos
    if precision == "int8":
        ips = [r for r in rows if r[0] == "InnerProduct"]
        assert all(any(t.startswith("8=2") for t in r) for r in ips)  # int8_scale_term


@pytest.mark.parametrize(("mask_rows", "fused"), [(6, True), (1, False)])
def test_attention_to_sdpa_or_decomposed(tmp_path, mask_rows, fused):
    """Q·Kᵀ/√d + mask → Softmax → ·V becomes one SDPA layer (scale folded, K permuted from before
    its transpose) when the mask is a full [S, T] per head; a row-broadcast mask [1, T], which
    ncnn's SDPA cannot read, keeps the decomposed MatMul + Softmax. Same numbers either way."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,6,8] q, float[1,6,3,8] kx, float[1,3,6,8] v) => (float[1,3,6,8] o) {
            kt = Transpose <perm = [0, 2, 3, 1]> (kx)
            s = MatMul (q, kt)
            sd = Div (s, rd)
            sm = Add (sd, mask)
            p = Softmax <axis = -1> (sm)
            o = MatMul (p, v)
        }""")
    rng = np.random.default_rng(0)
    mask = np.where(rng.random((1, 1, mask_rows, 6)) < 0.3, -1e4, 0.0).astype(np.float32)
    proto.graph.initializer.extend([numpy_helper.from_array(np.array(8 ** 0.5, np.float32), "rd"),
                                    numpy_helper.from_array(mask, "mask")])
    path = tmp_path / "attn.onnx"
    onnx.save(proto, str(path))
    art = _ncnn(path, tmp_path / "out", "fp32")
    types = Counter(r[0] for r in _layers(art.files["param"]))
    if fused:
        assert types["SDPA"] == 1 and types["Permute"] == 1 and "Softmax" not in types
        sdpa = next(r for r in _layers(art.files["param"]) if r[0] == "SDPA")
        assert "5=1" in sdpa and "6=3.535534e-01" in sdpa  # 1/√8
    else:
        assert "SDPA" not in types and types["MatMul"] == 2 and types["Softmax"] == 1
    assert art.fidelity["cosine_pooled"] >= 0.99999


def test_mask_scalar_fits_float16(tmp_path):
    """scores + (1 − m) · −FLT_MAX (HF attention masks): the ncnn scalar is clamped to −65504 so
    fp16 blob storage (ncnn's default on ARM) does not turn it into −inf and the softmax into NaN;
    in FP32 the masked softmax is the same."""
    import onnx

    from autoglm_compress.ir_utils import from_proto
    from autoglm_compress.targets.ncnn.lower import lower_to_ncnn

    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,8] s, float[1,4,8] m) => (float[1,4,8] y) {
        neg = Constant <value = float {-3.4028234663852886e38}> ()
        one = Constant <value = float {1.0}> ()
        inv = Sub(one, m)
        bias = Mul(inv, neg)
        y = Add(s, bias)
    }"""
    model = from_proto(onnx.parser.parse_model(text))
    param, _, _ = lower_to_ncnn(model, "fp32")
    scalars = [float(t.split("=", 1)[1]) for line in param.splitlines() if line.startswith("BinaryOp")
               for t in line.split() if t.startswith("2=")]
    assert scalars and min(scalars) == -65504.0 and max(abs(x) for x in scalars) <= 65504.0

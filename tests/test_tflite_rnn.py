"""arm target (TFLite): LSTM → UNIDIRECTIONAL_SEQUENCE_LSTM per direction, GRU unrolled
(targets/tflite/lower_rnn.py, rules_rnn.py). torch nn.LSTM / nn.GRU saved as a user would
(torch.export.save) and loaded by the project's loader; the .tflite runs in LiteRT (XNNPACK and the
reference kernels) against onnxruntime on the same IR, twice with different inputs (TFLite keeps
LSTM state in variable tensors: a second invocation must not start from the first one's state).
Also the onnx backend node cases for LSTM/GRU, a CRNN (conv → reshape → BiLSTM → linear) through
the CLI at FP32, FP16 and INT8 (the recurrent op stays float there, named with its reason)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
torch = pytest.importorskip("torch")

from autoglm_compress.ir_utils import from_proto, ort_run, ort_session  # noqa: E402
from autoglm_compress.targets.tflite.lower import lower_to_tflite, unsupported_reason  # noqa: E402
from autoglm_compress.targets.tflite.rules_rnn import FLOAT_REASONS  # noqa: E402

nn = torch.nn


def _ops(data: bytes) -> list[str]:
    import ai_edge_litert.schema_py_generated as s

    m = s.ModelT.InitFromPackedBuf(data, 0)
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    codes = [names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in m.operatorCodes]
    return [codes[o.opcodeIndex] for o in m.subgraphs[0].operators]


def _int8_constants(data: bytes) -> int:
    import ai_edge_litert.schema_py_generated as s

    m = s.ModelT.InitFromPackedBuf(data, 0)
    return sum(1 for t in m.subgraphs[0].tensors if t.type == 9 and t.buffer > 0
               and m.buffers[t.buffer].data is not None)


def _litert(data: bytes, feeds: list[dict], reference: bool) -> list[dict]:
    """The outputs (by name) of each feed, run one after another on one interpreter."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES} \
        if reference else {}
    it = Interpreter(model_content=data, **kw)
    it.allocate_tensors()
    got = []
    for feed in feeds:
        for d in it.get_input_details():
            it.set_tensor(d["index"], np.asarray(feed[d["name"]], d["dtype"]))
        it.invoke()
        got.append({d["name"]: np.array(it.get_tensor(d["index"]))
                    for d in it.get_output_details()})
    return got


def _max_err(model, data: bytes, feeds: list[dict]) -> float:
    """Max |LiteRT − onnxruntime| over the feeds, the outputs and both kernel sets."""
    sess = ort_session(model)
    want = [ort_run(sess, f) for f in feeds]
    names = [v.name for v in model.graph.outputs]
    err = 0.0
    for reference in (False, True):
        for got, ref in zip(_litert(data, feeds, reference), want):
            for name, r in zip(names, ref):
                assert got[name].shape == r.shape, name
                err = max(err, float(np.abs(got[name] - r).max()))
    return err


class _Rnn(nn.Module):
    """nn.LSTM / nn.GRU (input 8, hidden 16); with ``state``, the initial state(s) are inputs and
    the final ones outputs."""

    def __init__(self, cls, state: bool, **kw):
        super().__init__()
        self.rnn, self.state = cls(8, 16, **kw), state

    def forward(self, x, *st):
        if not self.state:
            return self.rnn(x)[0]
        y, fin = self.rnn(x, st if len(st) > 1 else st[0])
        return (y, *fin) if isinstance(fin, tuple) else (y, fin)


CASES = {  # name → (cls, state given, kwargs)
    "lstm": (nn.LSTM, False, {}),
    "lstm-2layer-bi-batch_first": (nn.LSTM, False, dict(num_layers=2, bidirectional=True,
                                                        batch_first=True)),
    "lstm-bi-h0": (nn.LSTM, True, dict(bidirectional=True)),
    "gru": (nn.GRU, False, {}),
    "gru-2layer-bi-batch_first": (nn.GRU, False, dict(num_layers=2, bidirectional=True,
                                                      batch_first=True)),
    "gru-bi-batch_first-h0": (nn.GRU, True, dict(bidirectional=True, batch_first=True)),
}


def _export(name: str, tmp: Path):
    from autoglm_compress.frontend import load

    cls, state, kw = CASES[name]
    torch.manual_seed(0)
    m = _Rnn(cls, state, **kw).eval()
    seq, batch = 6, 2
    dirs = (2 if kw.get("bidirectional") else 1) * kw.get("num_layers", 1)
    x = torch.randn(batch, seq, 8) if kw.get("batch_first") else torch.randn(seq, batch, 8)
    n_state = (2 if cls is nn.LSTM else 1) if state else 0
    args = (x, *(torch.randn(dirs, batch, 16) for _ in range(n_state)))
    path = tmp / f"{name}.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(m, args), path)
        model = load(path)
    rng = np.random.default_rng(1)
    feeds = [{v.name: rng.standard_normal(a.shape).astype(np.float32)
              for v, a in zip(model.graph.inputs, args)} for _ in range(2)]
    return model, feeds


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_rnn_lowered_fp32_and_fp16(name, tmp_path):
    model, feeds = _export(name, tmp_path)
    rnn = [n for n in model.graph if n.op_type in ("LSTM", "GRU")]
    assert rnn and all(unsupported_reason(n) is None for n in rnn)
    layers, dirs = 2 if "2layer" in name else 1, 2 if "-bi" in name else 1
    # "hybrid": the weights-only / INT8 form (weights int8, float activations)
    for precision, bound in (("fp32", 1e-5), ("fp16", 2e-3), ("hybrid", 1e-2)):
        data = lower_to_tflite(model, "fp32", hybrid=True) if precision == "hybrid" \
            else lower_to_tflite(model, precision)
        ops = _ops(data)
        if name.startswith("lstm"):
            assert ops.count("UNIDIRECTIONAL_SEQUENCE_LSTM") == layers * dirs
            assert ops.count("REVERSE_V2") == (2 * layers if dirs == 2 else 0)
            assert _int8_constants(data) == (8 * layers * dirs if precision == "hybrid" else 0)
        else:  # unrolled: one tanh per step, direction and layer
            assert "UNIDIRECTIONAL_SEQUENCE_LSTM" not in ops
            assert ops.count("TANH") == 6 * layers * dirs
            assert _int8_constants(data) == (4 * layers * dirs if precision == "hybrid" else 0)
        assert _max_err(model, data, feeds) <= bound, precision


def _onnx_case(case):
    """The backend case with its weights (W, R, B, P, sequence_lens) as initializers, as an
    exported model has them; X and initial_h / initial_c stay graph inputs."""
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(case.model)
    g = proto.graph
    node = g.node[0]
    inputs, outputs = case.data_sets[0]
    weights = {name for k, name in enumerate(node.input) if k in (1, 2, 3, 4, 7) and name}
    feeds, keep = {}, []
    for vi, arr in zip(list(g.input), inputs):
        if vi.name in weights:
            g.initializer.append(onnx.numpy_helper.from_array(np.asarray(arr), vi.name))
        else:
            feeds[vi.name] = np.asarray(arr)
            keep.append(vi)
    del g.input[:]
    g.input.extend(keep)
    return from_proto(proto), feeds, [np.asarray(o) for o in outputs]


def _rnn_cases():
    """The onnx wheel's LSTM and GRU node cases. Importing a case module registers its cases in
    the list collect_testcases() returns (importing only these two: collecting all takes ~30 s;
    a later full collection still finds every module's cases once)."""
    import importlib

    import onnx.backend.test.case.node as node_cases

    for op in ("lstm", "gru"):
        importlib.import_module(f"onnx.backend.test.case.node.{op}")
    return {c.name: c for c in node_cases._NodeTestCases
            if c.name.startswith(("test_lstm", "test_gru"))}


def test_onnx_backend_lstm_gru_cases():
    """Every LSTM/GRU node case of the onnx wheel (static shapes, all of them) lowered at FP32
    (and the LSTMs with int8 weights, the hybrid kernel) and run in LiteRT against the case's
    expected outputs."""
    cases = _rnn_cases()
    assert len(cases) >= 12
    worst, hybrid = {}, {}
    for name, case in sorted(cases.items()):
        model, feeds, want = _onnx_case(case)
        node = next(iter(model.graph))
        assert unsupported_reason(node) is None, name
        names = [v.name for v in model.graph.outputs]
        for errs, data in ((worst, lower_to_tflite(model, "fp32")),
                           (hybrid, lower_to_tflite(model, "fp32", hybrid=True))):
            for reference in (False, True):
                got = _litert(data, [feeds, feeds], reference)
                for run in got:  # the second run starts from the initial state again
                    for o, w in zip(names, want):
                        errs[name] = max(errs.get(name, 0.0), float(np.abs(run[o] - w).max()))
    assert max(worst.values()) <= 1e-5, worst
    # int8 weights (measured ≤ 2.5e-3: test_gru_seq_length, inputs up to 18)
    assert max(hybrid.values()) <= 5e-3, sorted(hybrid.items(), key=lambda kv: -kv[1])[:3]
    assert {"test_lstm_with_peepholes", "test_lstm_batchwise", "test_gru_batchwise",
            "test_lstm_bidirectional", "test_gru_reverse"} <= set(worst)


class _CRNN(nn.Module):
    """conv → pool → conv → pool → [W, B, C·H] → BiLSTM → linear (a CTC text recognizer's shape)."""

    def __init__(self, classes: int = 11):
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d((2, 1)))
        self.rnn = nn.LSTM(16 * 4, 32, bidirectional=True)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        f = self.cnn(x)
        b, c, h, w = f.shape
        y, _ = self.rnn(f.permute(3, 0, 1, 2).reshape(w, b, c * h))
        return self.fc(y)


@pytest.fixture(scope="module")
def crnn(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("crnn") / "crnn.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(_CRNN().eval(), (torch.randn(1, 1, 16, 32),)), path)
    return path


def _cli(src: Path, out: Path, *extra: str) -> dict:
    from autoglm_compress.cli import main

    rc = main([str(src), "--target", "arm", "--format", "tflite", "-o", str(out), "--samples", "8",
               "--latency-repeats", "2", *extra])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    (art,) = rep["artifacts"]
    return art


def test_crnn_cli_fp32(crnn, tmp_path):
    art = _cli(crnn, tmp_path / "o")
    assert art["fidelity"]["cosine_pooled"] >= 0.999
    assert art["extra"]["reference_kernels"]["cosine_pooled"] >= 0.999
    ops = _ops(Path(art["path"]).read_bytes())
    assert ops.count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 2 and ops.count("REVERSE_V2") == 2


def test_crnn_cli_int8_keeps_the_lstm_float_with_its_reason(crnn, tmp_path):
    art = _cli(crnn, tmp_path / "o", "--int8", "--calib-random", "--calib-samples", "16")
    assert art["precision"] == "int8" and art["fidelity"]["cosine_pooled"] >= 0.99
    census = art["extra"]["tflite_ops"]
    lstm = [f for f in census["float_ops"] if f["op"] == "UNIDIRECTIONAL_SEQUENCE_LSTM"]
    assert len(lstm) == 2 and all(f["reason"] == FLOAT_REASONS["LSTM"] for f in lstm)
    # counted in the float MACs: 16 steps × 4 gates × 32 cells × (64 inputs + 32 recurrent)
    assert all(f["macs"] == 16 * 4 * 32 * (64 + 32) for f in lstm)
    assert census["int8"] >= 2  # the convolutions
    assert any(FLOAT_REASONS["LSTM"] in n for n in art["notes"])


def test_gru_int8_runs_float_with_its_reason(tmp_path):
    from autoglm_compress import compress

    class _GruHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.gru, self.out = nn.Linear(8, 16), nn.GRU(16, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.out(self.gru(torch.relu(self.inp(x)))[0])

    torch.manual_seed(0)
    src = tmp_path / "gru.onnx"
    torch.onnx.export(_GruHead().eval(), (torch.randn(5, 1, 8),), str(src), dynamo=False,
                      opset_version=17, input_names=["x"], output_names=["y"])
    res = compress(src, targets="arm", out_dir=tmp_path / "o", samples=4, latency_repeats=2,
                   int8=True, calib_random=True, calib_samples=16)
    art = res.artifact("arm")
    assert art.fidelity["cosine_pooled"] >= 0.99
    census = art.extra["tflite_ops"]
    gru = [f for f in census["float_ops"] if f["reason"] == FLOAT_REASONS["GRU"]]
    assert {f["op"] for f in gru} >= {"FULLY_CONNECTED", "LOGISTIC", "TANH"}
    # hybrid FULLY_CONNECTED: int8 weights (2 input projections + 2 recurrent per step)
    fcs = [f for f in gru if f["op"] == "FULLY_CONNECTED"]
    assert len(fcs) == 2 + 2 * 5  # at most [32, 16] int8 + 32 float biases (float: ≥ 1088 B)
    assert all(f["weight_bytes"] <= 32 * 16 + 32 * 4 for f in fcs)
    assert census["int8"] >= 1  # the linear layers around it

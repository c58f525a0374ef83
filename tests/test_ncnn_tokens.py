"""ncnn lowering of token embeddings, constant-index Gathers and boolean mask logic
(targets/ncnn/lower_tokens.py) and the Reshape-chain fold before it (reshape_chains.py), on a
hand-built graph with HF's mask patterns; the real BERT is in tests/real/test_real_ncnn.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("ncnn")

from autoglm_compress import compress  # noqa: E402
from autoglm_compress.errors import UnsupportedOpError  # noqa: E402

S, H, V = 8, 16, 50

_GRAPH = f"""<ir_version: 8, opset_import: ["" : 17]>
g (int64[1,{S}] ids, int64[1,{S}] mask, float[1,{S},{H}] x)
  => (float[1,{H}] first, float[1,{S},4] cols, float[1,{S},{H}] kept) {{
    e = Gather (table, ids)
    h0 = Add (e, x)
    h = MatMul (h0, w)
    mb = Cast <to=9> (mask)
    fl = Flatten <axis=2> (mb)
    gi = Gather <axis=0> (fl, arange)
    m3 = Reshape (gi, shape3)
    om = Or (m3, lanes)
    sel = Where (om, h, x)
    addm = Where (m3, zero, neginf)
    s = Add (sel, addm)
    sm = Softmax <axis=1> (s)
    nan = IsNaN (sm)
    g = Where (nan, zero, sm)
    first = Gather <axis=1> (g, idx0)
    cols = Gather <axis=2> (g, run)
    nm = Not (m3)
    nf = Cast <to=1> (nm)
    kept = Mul (nf, x)
}}"""


def _model(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(_GRAPH)
    inits = {
        "table": rng.normal(0, 1, (V, H)).astype(np.float32),
        "w": rng.normal(0, 0.3, (H, H)).astype(np.float32),
        "arange": np.arange(S, dtype=np.int64).reshape(1, S),
        "shape3": np.array([1, S, 1], np.int64),
        "lanes": (np.arange(H) % 3 == 0).reshape(1, 1, H),
        "zero": np.zeros(1, np.float32),
        "neginf": np.full(1, -np.inf, np.float32),
        "idx0": np.array(0, np.int64),
        "run": np.array([2, 3, 4, 5], np.int64),
    }
    proto.graph.initializer.extend(numpy_helper.from_array(a, k) for k, a in inits.items())
    path = folder / "tokens.onnx"
    onnx.save(proto, str(path))
    return path


def _data(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, S + 1, n)
    return {"ids": rng.integers(0, V, (n, S)).astype(np.int64),
            "mask": (np.arange(S)[None] < lengths[:, None]).astype(np.int64),
            "x": rng.normal(0, 1, (n, S, H)).astype(np.float32)}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    d = tmp_path_factory.mktemp("ncnn_tokens")
    np.savez(d / "eval.npz", **_data(8, 1))
    np.savez(d / "calib.npz", **_data(16, 0))
    return _model(d), d / "eval.npz", d / "calib.npz"


@pytest.mark.parametrize(("precision", "min_cos"),
                         [("fp32", 0.99999), ("fp16", 0.999), ("int8", 0.99)])
def test_embed_mask_logic_and_index_gathers(tokens, tmp_path, precision, min_cos):
    model, ev, cal = tokens
    art = compress(model, targets="arm", arm_format="ncnn", out_dir=tmp_path, eval_data=ev,
                   samples=8, latency_repeats=2, fp16=precision == "fp16",
                   int8=precision == "int8", calib=cal if precision == "int8" else None,
                   calib_samples=16).artifact("arm", "ncnn")
    rows = [ln.split() for ln in art.files["param"].read_text().splitlines()[2:]]
    types = Counter(r[0] for r in rows)
    assert types["Embed"] == 1 and types["Crop"] == 2 and types["UnaryOp"] == 1
    assert "Gather" not in types
    assert art.fidelity["cosine_pooled"] >= min_cos, art.fidelity
    assert any("index-only Gathers" in n for n in art.notes) and any("IsNaN" in n for n in art.notes)
    embed = next(r for r in rows if r[0] == "Embed")
    assert ("18=2" in embed) == (precision == "int8")  # int8 table, one scale (ncnn2int8's)
    if precision == "int8":
        assert art.extra["ncnn_int8"]["int8"] == 2  # the Embed and the MatMul's InnerProduct


def test_reshape_chain_fold_keeps_numbers(tokens):
    """Identity Gather → Reshape, then Flatten → Reshape chain → one Reshape; same outputs in
    onnxruntime, no value with a leading dimension other than 1 left."""
    from autoglm_compress import frontend
    from autoglm_compress.ir_utils import check, ort_run, ort_session
    from autoglm_compress.targets.ncnn.reshape_chains import fold_reshape_chains

    model_path, ev, _ = tokens
    m = frontend.load(str(model_path), [])
    feed = {k: v[:1] for k, v in np.load(ev).items()}
    before = ort_run(ort_session(m), feed)
    # the loader already drops the no-op Reshape; the Gather becomes a Reshape, merged with Flatten
    assert fold_reshape_chains(m) == 2
    check(m)
    ops = Counter(n.op_type for n in m.graph)
    assert ops["Flatten"] == 0 and ops["Gather"] == 3 and ops["Reshape"] == 1
    assert all(n.outputs[0].shape[0] == 1 for n in m.graph)
    for a, b in zip(before, ort_run(ort_session(m), feed)):
        np.testing.assert_array_equal(a, b)


def test_unlowerable_gather_and_cast_refused(tmp_path):
    """Indices computed in the graph (not constant, not int graph-input ids) and a float → int
    cast are refused before any work, with the reason."""
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4,6] x, float[1,4] f) => (float[1,1,4,6] y) {
            i = Cast <to=7> (f)
            y = Gather <axis=1> (x, i)
        }""")
    path = tmp_path / "bad.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(UnsupportedOpError, match="float → integer"):
        compress(path, targets="arm", arm_format="ncnn", out_dir=tmp_path / "o", samples=1)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_power_and_unary_math(tmp_path):
    """Pow by 2 / 0.5 / −1 become UnaryOp square / sqrt / reciprocal (exact for negative bases,
    where ncnn's SIMD pow, exp(y·log x), is NaN), other exponents BinaryOp pow; Abs, Neg, Exp,
    Log, Floor, Sign … are UnaryOps."""
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4,6] x) => (float[1,4,6] y) {
            two = Constant <value = float {2.0}> ()
            half = Constant <value = float {0.5}> ()
            three = Constant <value = float {3.0}> ()
            sq = Pow (x, two)
            a = Abs (x)
            r = Pow (a, half)
            c = Pow (r, three)
            ng = Neg (c)
            ex = Exp (ng)
            l = Log (ex)
            xs = Mul (x, sq)
            f = Floor (xs)
            s = Sign (x)
            lf = Add (l, f)
            ss = Mul (s, sq)
            t = Add (lf, ss)
            sq2 = Add (sq, two)
            rc = Reciprocal (sq2)
            y = Add (t, rc)
        }""")
    path = tmp_path / "math.onnx"
    onnx.save(proto, str(path))
    art = compress(path, targets="arm", arm_format="ncnn", out_dir=tmp_path / "o", samples=4,
                   latency_repeats=2).artifact("arm", "ncnn")
    rows = [ln.split() for ln in art.files["param"].read_text().splitlines()[2:]]
    unary = Counter(next(t for t in r if t.startswith("0=")) for r in rows if r[0] == "UnaryOp")
    assert unary == Counter({"0=4": 1, "0=5": 1, "0=0": 1, "0=1": 1, "0=7": 1, "0=8": 1,
                             "0=2": 1, "0=20": 1, "0=15": 1})
    assert sum(1 for r in rows if r[0] == "BinaryOp" and "0=6" in r) == 1  # x^3 stays pow
    assert art.fidelity["cosine_pooled"] >= 0.99999, art.fidelity

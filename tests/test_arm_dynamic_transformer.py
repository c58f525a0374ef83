"""A MiniLM-style BERT exported to ONNX with dynamic batch × sequence axes (issue 31 item 2) lowers to
both arm formats: fold_shapes fixes the dims to the data's [1, 16] and folds the shape arithmetic
(Shape/Gather/Concat/Range/Expand/GatherND …), the .tflite and the ncnn files run in LiteRT and ncnn
and are compared with FP32 per output; the x86 artifact keeps the dynamic axes; a NonZero's shape
is refused naming the node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import run_cli

from autoglm_compress import compress

S, VOCAB = 16, 500
_OUTS = ("last_hidden_state", "pooler_output")


def _bert(path, layers: int, hidden: int, dynamo: bool, token_types: bool):
    """transformers BertModel (random weights, seed 0) exported with symbolic batch × sequence."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=4 * hidden, max_position_embeddings=64)
    bert = transformers.BertModel(cfg).eval()
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids)
            return out.last_hidden_state, out.pooler_output

    ex = (torch.randint(0, VOCAB, (2, 8)), torch.ones(2, 8, dtype=torch.long),
          torch.zeros(2, 8, dtype=torch.long))[:len(names)]
    if dynamo:
        b, s = torch.export.Dim("batch", max=8), torch.export.Dim("sequence", max=64)
        torch.onnx.export(Wrap().eval(), ex, str(path), dynamo=True, input_names=names,
                          output_names=list(_OUTS), opset_version=18,
                          dynamic_shapes={n: {0: b, 1: s} for n in names})
    else:
        torch.onnx.export(Wrap().eval(), ex, str(path), dynamo=False, input_names=names,
                          output_names=list(_OUTS), opset_version=17,
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names})
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in onnx.load(str(path), load_external_data=False).graph.input]
    assert all(isinstance(d, str) for ds in dims for d in ds), dims  # really dynamic
    return names


def _tokens(path, names, n: int, seed: int):
    rng = np.random.default_rng(seed)
    mask = np.ones((n, S), np.int64)
    for i in range(n):
        mask[i, rng.integers(S // 2, S + 1):] = 0
    data = {"input_ids": rng.integers(1, VOCAB, (n, S)), "attention_mask": mask,
            "token_type_ids": np.zeros((n, S), np.int64)}
    np.savez(path, **{k: data[k] for k in names})
    return path


def _per_output(art) -> dict[str, float]:
    return {k: v["cosine_min"] for k, v in art.fidelity["outputs"].items()}


def _check_arm(res, precision: str, floor: float):
    for fmt in ("tflite", "ncnn"):
        art = res.artifact("arm", fmt)
        assert art.precision == precision
        cos = _per_output(art)
        assert set(cos) == set(_OUTS)
        assert all(c >= floor for c in cos.values()), (fmt, precision, cos)
    rec = next(p for p in res.report["passes"] if p["name"] == "fold_shapes[arm/tflite]")
    assert rec["stats"]["dims_fixed"] >= 4 and rec["stats"]["folded"] >= 20
    assert rec["stats"]["dynamic_left"] is None
    io = res.artifact("arm", "tflite").extra  # LiteRT sees a static [1, 16] input
    return rec, io


@pytest.fixture(scope="module")
def ts_bert(tmp_path_factory):
    d = tmp_path_factory.mktemp("dyn_bert_ts")
    names = _bert(d / "minilm.onnx", layers=2, hidden=32, dynamo=False, token_types=True)
    return d / "minilm.onnx", _tokens(d / "ids.npz", names, 8, 0)


def test_dynamic_axes_bert_fp32_on_both_arm_formats_and_x86_stays_dynamic(ts_bert, tmp_path):
    model, data = ts_bert
    res = compress(model, targets="arm,x86", arm_format="all", eval_data=data, samples=4,
                   latency_repeats=1, verify_arm="off", out_dir=tmp_path / "o")
    _check_arm(res, "fp32", 0.9999)
    tfl = res.report["artifacts"]
    arm_io = next(a["io"] for a in tfl if a["path"].endswith(".tflite"))
    assert [i["shape"] for i in arm_io["inputs"]] == [[1, S]] * 3
    x86 = onnx.load(str(res.artifact("x86").path))
    for inp in x86.graph.input:  # the x86 artifact keeps the user's dynamic axes
        assert all(d.dim_param for d in inp.type.tensor_type.shape.dim), inp
    assert any(n.op_type == "Shape" for n in x86.graph.node)


def test_nonzero_shape_is_refused_by_the_cli_naming_the_node(tmp_path):
    """x padded by as many zeros as it has non-zero values: that width is known only at run time."""
    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 8] x) => (float[N, M] y) {
            nz = NonZero(x)
            sh = Shape(nz)
            one = Constant <value = int64[1] {1}> ()
            k = Gather <axis = 0> (sh, one)
            pad = ConstantOfShape(k)
            rs = Constant <value = int64[2] {1, -1}> ()
            row = Reshape(pad, rs)
            y = Concat <axis = 1> (x, row) }""")
    for i, n in enumerate(m.graph.node):
        n.name = f"{n.op_type.lower()}_{i}"
    src = tmp_path / "nz.onnx"
    onnx.save(m, str(src))
    r = run_cli(src, "--target", "arm", "-o", tmp_path / "o")
    assert r.returncode == 2, r.stderr[-2000:]
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, r.stderr[-2000:]
    assert "'NonZero' (node 'nonzero_0')" in err[0]
    assert "depends on the values of 'x'" in err[0] and "--target x86" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("dynamo,token_types", [(False, True), (False, False), (True, True),
                                                 (True, False)])
def test_dynamic_minilm_int8_on_both_arm_formats(tmp_path, dynamo, token_types):
    """3-layer MiniLM-shaped BERT (hidden 64), both exporters, with and without token_type_ids
    (without: the buffered token types through Expand / GatherElements): FP32 and INT8 on TFLite
    and ncnn, each run in its runtime, cosine vs FP32 per output."""
    names = _bert(tmp_path / "m.onnx", layers=3, hidden=64, dynamo=dynamo,
                  token_types=token_types)
    calib = _tokens(tmp_path / "calib.npz", names, 16, 0)
    held = _tokens(tmp_path / "eval.npz", names, 8, 1)
    for precision, floor in (("fp32", 0.9999), ("int8", 0.995)):
        kw = {"int8": True, "calib": calib} if precision == "int8" else {}
        res = compress(tmp_path / "m.onnx", targets="arm", arm_format="all", eval_data=held,
                       samples=8, latency_repeats=1, verify_arm="off",
                       out_dir=tmp_path / precision, **kw)
        _check_arm(res, precision, floor)

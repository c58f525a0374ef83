"""Issue 30: an ARM TFLite INT8 artifact is integer end to end on ordinary CNN patterns, and its
report counts what the written file runs.

The CNN has the issue's layer sequence: stem conv → depthwise conv + BN + HardSwish → 1×1 conv →
max pool → residual block (conv-BN-ReLU-conv-BN, Add, ReLU) → channel Concat with a 1×1 side
branch → 3×3 stride-2 conv on the 96 concatenated channels → mean → Linear; trained on digits."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from autoglm_compress import compress  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from digits import load_digits_split, train_digits_cnn  # noqa: E402
from models import ZooModel, save_onnx  # noqa: E402


def _cbn(cin, cout, k, s=1, g=1):
    return [nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout)]


class _Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(*_cbn(c, c, 3), nn.ReLU(), *_cbn(c, c, 3))

    def forward(self, x):
        return torch.relu(self.body(x) + x)


class Issue30CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*_cbn(1, 16, 3), nn.ReLU())
        self.dw = nn.Sequential(*_cbn(16, 16, 3, g=16), nn.Hardswish())
        self.pw = nn.Sequential(*_cbn(16, 64, 1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.block = _Residual(64)
        self.side = nn.Sequential(*_cbn(64, 32, 1), nn.ReLU())
        self.head = nn.Sequential(*_cbn(96, 128, 3, s=2), nn.ReLU())
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool(self.pw(self.dw(self.stem(x))))
        x = torch.cat([self.block(x), self.side(x)], 1)
        return self.fc(self.head(x).mean((2, 3)))


def train_issue30_cnn(epochs: int = 3, seed: int = 0) -> tuple[nn.Module, float]:
    """Trained like the demo CNN (examples/digits.py); (model in eval mode, held-out accuracy)."""
    torch.manual_seed(seed)
    r = train_digits_cnn(epochs, seed=seed, model=Issue30CNN())
    return r.model, r.eval_accuracy


def export_issue30_cnn(folder: Path, epochs: int = 3) -> tuple[Path, Path, Path]:
    """(model.onnx, calib.npz, eval.npz) of the trained CNN in ``folder``."""
    m, _ = train_issue30_cnn(epochs)
    _, _, x_cal, x_ev, y_ev = load_digits_split()
    zm = ZooModel("issue30_cnn", m, {"x": torch.from_numpy(x_ev[:1].copy())}, ["logits"],
                  "classifier")
    path = save_onnx(zm, folder / "issue30_cnn.onnx")
    np.savez(folder / "calib.npz", x=x_cal)
    np.savez(folder / "eval.npz", x=x_ev, labels=y_ev)
    return path, folder / "calib.npz", folder / "eval.npz"


def file_ops(path) -> list[tuple[str, set[int]]]:
    """(TFLite op name, types of its activation tensors) for every operator of the file."""
    import ai_edge_litert.schema_py_generated as s

    m = s.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    g = m.subgraphs[0]
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    codes = [names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in m.operatorCodes]

    def act(i):
        b = g.tensors[i].buffer
        return i >= 0 and not (b > 0 and m.buffers[b].data is not None
                               and len(m.buffers[b].data))

    return [(codes[o.opcodeIndex], {g.tensors[i].type for i in [*o.inputs, *o.outputs]
                                    if act(int(i))}) for o in g.operators]


def test_issue30_cnn_is_integer_end_to_end(tmp_path):
    from autoglm_compress import load
    from autoglm_compress.pipeline import Pipeline, build_passes
    from autoglm_compress.targets.tflite.lower import lower_to_tflite

    path, calib, ev = export_issue30_cnn(tmp_path)
    res = compress(path, int8=True, targets="arm", calib=calib, eval_data=ev, samples=500,
                   out_dir=tmp_path / "o", latency_repeats=3)
    art = res.artifact("arm")
    ops = file_ops(art.path)
    compute = [(op, t) for op, t in ops if op not in ("QUANTIZE", "DEQUANTIZE")]
    assert all(t <= {9} for _, t in compute), [op for op, t in compute if t - {9}]  # INT8 only
    names = [op for op, _ in compute]
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "HARD_SWISH", "MAX_POOL_2D", "ADD",
               "CONCATENATION", "MEAN", "FULLY_CONNECTED"):
        assert op in names, op
    assert ops.count(("QUANTIZE", {0, 9})) == 1 and [op for op, _ in ops].count("DEQUANTIZE") == 1
    census = art.extra["tflite_ops"]  # counted from the file
    assert census["float"] == 0 and census["int8"] == len(compute)
    assert census["float_mac_share"] == 0.0 and census["macs"]["int8"] > 1_000_000
    m = load(path)
    Pipeline(build_passes(["cleanup", "fold_bn"]), progress=False).run(m)
    assert art.size_bytes <= 0.3 * len(lower_to_tflite(m, "fp32"))
    out = next(iter(art.fidelity["outputs"].values()))
    assert out["accuracy_ref"] - out["accuracy"] <= 0.005
    assert art.extra["vs_qdq_simulation"]["cosine_min"] >= 0.995
    assert art.extra["reference_kernels"]["cosine_pooled"] > 0.999
    assert not [n for n in art.notes if "float" in n]


class _MobileBlock(nn.Module):
    """MobileNetV3-style: HardSigmoid squeeze-excite (GAP → 1×1 → ReLU → 1×1 → HardSigmoid →
    Mul), Add/Sub/Mul with constants, LeakyRelu, a keep-dims mean, a residual Add without ReLU;
    a YOLOv8 C2f-style Split / SiLU / Concat and a Slice."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(*_cbn(3, 16, 3), nn.Hardswish())
        self.se1, self.se2 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)
        self.c2 = nn.Sequential(*_cbn(16, 16, 3, g=16), nn.LeakyReLU(0.1))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.c1(x)
        a, b = x.split(8, 1)  # YOLOv8's C2f: SPLIT, SiLU (LOGISTIC · MUL), CONCATENATION
        x = torch.cat([b, nn.functional.silu(a)], 1)[:, :, :, 1:]  # + STRIDED_SLICE
        s = nn.functional.hardsigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3), True)))))
        y = x * s
        y = self.c2(y) + y
        y = (y - 0.25) * 1.5
        return self.fc(nn.functional.adaptive_max_pool2d(y, 1).flatten(1))


def test_mobilenet_v3_patterns_run_int8(tmp_path):
    torch.manual_seed(0)
    zm = ZooModel("mbv3", _MobileBlock().eval(), {"x": torch.randn(1, 3, 16, 16)}, ["out"],
                  "classifier")
    path = save_onnx(zm, tmp_path / "mbv3.onnx")
    res = compress(path, int8=True, targets="arm", calib_random=True, calib_samples=32,
                   out_dir=tmp_path / "o", samples=8, latency_repeats=3)
    art = res.artifact("arm")
    census = art.extra["tflite_ops"]
    assert census["float"] == 0, census["float_ops"]
    ops = [op for op, _ in file_ops(art.path)]
    assert {"SPLIT_V", "STRIDED_SLICE", "MEAN", "LEAKY_RELU", "SUB"} <= set(ops)
    assert ops.count("TRANSPOSE") == 1  # the input's; MEAN and the slice work on NHWC
    assert art.extra["vs_qdq_simulation"]["cosine_min"] > 0.995
    assert art.extra["reference_kernels"]["cosine_pooled"] > 0.995


def test_float_ops_are_named_with_a_reason_and_warned(tmp_path):
    """A conv kept float (--keep-fp32) shows up in the file's census with its reason; its MACs
    (> 10 %) make the report warn."""
    torch.manual_seed(0)
    zm = ZooModel("mbv3", _MobileBlock().eval(), {"x": torch.randn(1, 3, 16, 16)}, ["out"],
                  "classifier")
    path = save_onnx(zm, tmp_path / "mbv3.onnx")
    res = compress(path, int8=True, targets="arm", calib_random=True, calib_samples=16,
                   out_dir=tmp_path / "o", samples=4, latency_repeats=3, keep_fp32=("Conv",))
    art = res.artifact("arm")
    census = art.extra["tflite_ops"]
    ops = file_ops(art.path)
    assert census["float"] == sum(1 for op, t in ops if t & {0, 1}
                                  and op not in ("QUANTIZE", "DEQUANTIZE")) > 0
    convs = [f for f in census["float_ops"] if f["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert convs and all("kept float" in f["reason"] and f["macs"] > 0 for f in convs)
    assert census["float_mac_share"] > 0.5
    assert any("run float" in n for n in art.notes)
    assert any(n.startswith("WARNING") and "MACs" in n for n in art.notes)
    from autoglm_compress.report import summary_table

    assert "of the MACs run in float ops" in summary_table(res.report)

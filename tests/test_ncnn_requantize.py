"""INT8 blobs between ncnn layers (issue 30 item 2, targets/ncnn/requantize.py): an int8 conv
writes int8 for int8 conv / depthwise / FC readers — through Split, ReLU and Flatten, with any
fused activation ncnn's Requantize applies — and everything else stays float with its reason in
the census. Each fused chain runs in x86 ncnn within a bound of the same model written unfused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ncnn")
torch = pytest.importorskip("torch")

from autoglm_compress import compress  # noqa: E402
from autoglm_compress.targets.ncnn import requantize  # noqa: E402
from autoglm_compress.targets.ncnn.ncnn_run import ncnn_runner  # noqa: E402
from autoglm_compress.targets.ncnn.param import NcnnGraph  # noqa: E402

nn = torch.nn
POOL = "Pooling has no int8 kernel in ncnn"
ADD = "BinaryOp (residual add / mul) has no int8 kernel in ncnn"


class Supported(nn.Module):
    """conv+HardSwish → depthwise+ReLU6 → 1×1 conv+Sigmoid → stride-2 conv+ReLU → Flatten → Linear:
    four requantized edges (the previous rule took only depthwise → 1×1: ReLU6)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.c4 = nn.Conv2d(16, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        y = nn.functional.hardswish(self.c1(x))
        y = torch.clamp(self.dw(y), 0.0, 6.0)
        y = torch.sigmoid(self.pw(y))
        return self.fc(torch.relu(self.c4(y)).flatten(1))


class Unsupported(nn.Module):
    """conv → max pool → conv → {conv, residual Add} → {conv, conv} → Concat → conv: ncnn has no
    int8 Pooling / BinaryOp, and its aarch64 int8 Concat is wrong — nothing requantized."""

    def __init__(self):
        super().__init__()
        self.c = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1)] +
                               [nn.Conv2d(8, 8, 3, padding=1) for _ in range(4)] +
                               [nn.Conv2d(16, 8, 3, padding=1)])

    def forward(self, x):
        c = self.c
        a = torch.relu(c[1](nn.functional.max_pool2d(torch.relu(c[0](x)), 2)))
        s = a + torch.relu(c[2](a))
        return c[5](torch.cat([torch.relu(c[3](s)), torch.relu(c[4](s))], 1))


def _export(module: nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    m = module.eval()
    torch.onnx.export(m, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    return path


def _int8(model: Path, out: Path):
    return compress(model, targets="arm", arm_format="ncnn", out_dir=out, samples=4,
                    latency_repeats=1, int8=True, calib_random=True,
                    calib_samples=16).artifact("arm", "ncnn")


def _outputs(art, feeds) -> np.ndarray:
    io = {**art.extra["blobs"], "output_shapes": {"y": [1, -1]}}
    run = ncnn_runner(art.files["param"], art.files["bin"], io, "int8", 1)()
    return np.stack([run({"x": x})[0] for x in feeds])


def _rows(art) -> list[list[str]]:
    return [ln.split() for ln in Path(art.files["param"]).read_text().splitlines()[2:]]


def _requantized(rows) -> list[str]:
    return [r[0] for r in rows if any(t.startswith("8=") and int(t[2:]) > 100 for t in r)]


def test_supported_chains_fused_and_match_unfused(tmp_path, monkeypatch):
    model = _export(Supported(), tmp_path / "supported.onnx")
    art = _int8(model, tmp_path / "fused")
    rows = _rows(art)
    # HardSwish, ReLU6, Sigmoid, ReLU ride in the requantize; the last conv writes int8 for the FC
    assert sorted(_requantized(rows)) == ["Convolution"] * 3 + ["ConvolutionDepthWise"]
    acts = {r[1]: next(t for t in r if t.startswith("9=")) for r in rows if r[0].startswith("Conv")}
    assert sorted(acts.values()) == ["9=1", "9=3", "9=4", "9=6"], acts
    q = art.extra["ncnn_int8"]
    assert (q["int8"], q["requantized"]) == (5, 4)
    assert q["int8_edges"] == {"int8": 4, "graph input (float)": 1}

    monkeypatch.setattr(requantize, "fuse_requantize", lambda layers: (0, {}))
    plain = _int8(model, tmp_path / "unfused")
    assert _requantized(_rows(plain)) == [] and plain.extra["ncnn_int8"]["requantized"] == 0

    feeds = np.random.default_rng(0).normal(0, 1, (8, 1, 3, 8, 8)).astype(np.float32)
    a, b = _outputs(art, feeds), _outputs(plain, feeds)
    # the same arithmetic (dequantize → activation → quantize at the reader's scale, in one
    # step): equal up to an int8 step flipped by float rounding
    assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max(), np.abs(a - b).max()
    assert art.fidelity["cosine_pooled"] >= 0.99


def test_unsupported_chains_stay_float_with_reasons(tmp_path):
    art = _int8(_export(Unsupported(), tmp_path / "unsupported.onnx"), tmp_path / "out")
    q = art.extra["ncnn_int8"]
    assert q["int8"] == 6 and q["requantized"] == 0 and _requantized(_rows(art)) == []
    assert q["int8_edges"] == {
        "graph input (float)": 1, POOL: 1, ADD: 2, requantize.WHY_TYPE["Concat"]: 1,
        f"the writer's blob also feeds a float layer: {ADD}": 1}
    assert art.fidelity["cosine_pooled"] >= 0.99


# -- hand-built int8 layers: pass-on layers and the refusals' facts ----------------------------

def _conv(g: NcnnGraph, name, x, y, rng, act=0):
    w = rng.integers(-127, 128, (8, 8, 3, 3)).astype(np.int8)
    p = {0: 8, 1: 3, 11: 3, 4: 1, 14: 1, 15: 1, 16: 1, 5: 1, 6: w.size, 8: 2, 9: act}
    layer = g.add("Convolution", name, [x], [y], p,
                  [("tagged", w.reshape(-1)), ("raw", rng.normal(0, 1, 8).astype(np.float32)),
                   ("raw", np.full(8, 127 / 20, np.float32)), ("raw", np.float32([40.0]))])
    layer.bottom_scale = 40.0
    return layer


def _chain(middle: str, force: bool = False) -> NcnnGraph:
    """conv → ``middle`` layer → conv (FC after Flatten)."""
    rng = np.random.default_rng(0)
    g = NcnnGraph()
    g.add("Input", "in", [], ["in"], {0: 6, 1: 6, 2: 8})
    first = _conv(g, "c1", "in", "a", rng)
    params = {"LeakyReLU": {0: 0.1}, "Pooling": {0: 0, 1: 2, 2: 2}}.get(middle, {})
    g.add(middle.replace("Leaky", ""), "mid", ["a"], ["m"], params)
    if middle == "Flatten":
        w = rng.integers(-127, 128, (10, 8 * 36)).astype(np.int8)
        fc = g.add("InnerProduct", "fc", ["m"], ["out"], {0: 10, 1: 0, 2: w.size, 8: 2},
                   [("tagged", w.reshape(-1)), ("raw", np.full(10, 127 / 20, np.float32)),
                    ("raw", np.float32([40.0]))])
        fc.bottom_scale = 40.0
    else:
        _conv(g, "c2", "m", "out", rng)
    if force:
        first.params[8] += 100
        first.weights.append(("raw", np.float32([40.0])))
    return g


def _x86(g: NcnnGraph, tmp_path: Path, x: np.ndarray) -> np.ndarray:
    p, b = tmp_path / "m.param", tmp_path / "m.bin"
    p.write_text(g.param_text())
    b.write_bytes(g.bin_bytes())
    io = {"inputs": {"x": "in"}, "outputs": {"y": "out"}, "output_shapes": {"y": [-1]}}
    return ncnn_runner(p, b, io, "int8", 1)()({"x": x})[0]


@pytest.mark.parametrize(("middle", "fused"),
                         [("ReLU", 1), ("Flatten", 1), ("LeakyReLU", 0), ("Pooling", 0)])
def test_pass_on_layers(tmp_path, middle, fused):
    x = np.random.default_rng(1).uniform(-3, 3, (1, 8, 6, 6)).astype(np.float32)
    g = _chain(middle)
    assert requantize.fuse_graph(g) == fused
    assert g.int8_edges.get("int8", 0) == fused
    # the blobs holding int8 codes (per-layer error leaves them out): the conv's and the pass-on's
    assert requantize.int8_blobs(g.param_text()) == ({"a", "m"} if fused else set())
    got = _x86(g, tmp_path, x)
    ref = _x86(_chain(middle), tmp_path, x)
    forced = _x86(_chain(middle, force=True), tmp_path, x)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()
    if middle == "Pooling":  # why it is refused: ncnn's Pooling reads the int8 bytes as floats
        assert got.shape != forced.shape or np.abs(forced - ref).max() > 0.1 * np.abs(ref).max()


@pytest.mark.slow
def test_supported_chains_on_aarch64(tmp_path, monkeypatch):
    """The fused file in aarch64 ncnn under qemu (cortex-a76): outputs within the same bound of
    the unfused file's there, and fewer guest instructions per inference."""
    from autoglm_compress.targets.arm_emulation import environment
    from autoglm_compress.targets.arm_emulation.runner import Job, run_jobs

    try:
        env = environment.setup()
    except environment.Unavailable as e:
        pytest.skip(str(e))
    model = _export(Supported(), tmp_path / "supported.onnx")
    fused = _int8(model, tmp_path / "fused")
    monkeypatch.setattr(requantize, "fuse_requantize", lambda layers: (0, {}))
    plain = _int8(model, tmp_path / "unfused")
    io = {**fused.extra["blobs"], "output_shapes": {"y": [1, -1]}}
    feeds = [{"x": x} for x in np.random.default_rng(0).normal(0, 1, (4, 1, 3, 8, 8))
             .astype(np.float32)]
    (fo, fi), (po, pi) = run_jobs([Job(dict(a.files), "ncnn", "int8", io) for a in (fused, plain)],
                                  feeds, cpu="cortex-a76", env=env)
    a, b = np.stack([o[0] for o in fo]), np.stack([o[0] for o in po])
    assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max(), np.abs(a - b).max()
    assert np.abs(a - _outputs(fused, [f["x"] for f in feeds])).max() <= 0.05 * np.abs(a).max()
    assert fi < pi, (fi, pi)

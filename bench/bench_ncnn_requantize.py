"""INT8 blobs between ncnn layers (issue 30 item 2): which chains ncnn runs right, what they cost,
and what the requantize fusion changes on real models.

    .venv/bin/python bench/bench_ncnn_requantize.py [--chains] [--models effnet,yolo,mnv3]
        [--cpu cortex-a76] [--no-insns] [--work /tmp/bench_ncnn_requantize]

``--chains``: hand-built int8 chains (random int8 weights, 16 channels, 8×8), each written twice —
the first conv dequantizing (float between) and requantizing (int8 between, forced even where
our rule refuses) — run in x86 ncnn and in aarch64 ncnn under qemu (one thread); per chain: does
requantize.py fuse it, max |fused − unfused| / max |unfused| on each, aarch64 guest instructions
fused / unfused.

``--models``: EfficientNet-Lite1 / nudenet YOLOv8n (bench_arm's loaders) and ``mnv3``, a
MobileNetV3-style net with random weights (HardSwish convs), compressed to ncnn FP32 and INT8
(x86 verification only) — INT8 twice: with the previous rule (conv → conv only, activations
0..3; replayed here) and with requantize.py. Per INT8 file: requantized convs, int8 readers fed
int8 / float (counted from the .param), fidelity vs FP32, and the aarch64 instruction ratio
INT8 / FP32 (one counted inference each, one guest process).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "real"), str(ROOT / "bench")]

from autoglm_compress.targets.ncnn import requantize  # noqa: E402
from autoglm_compress.targets.ncnn.param import NcnnGraph  # noqa: E402

C, H = 16, 8
S = 127 / 3.0  # every int8 reader's bottom scale (|x| ≤ 3)


class Chains:
    """Hand-built int8 chains; ``build(name, fuse)`` → NcnnGraph (fuse: force the requantize)."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def conv(self, g, name, x, y, cin, cout, act=0, actp=None, dw=False):
        w = self.rng.normal(0, 1 / np.sqrt(cin * 9), (cout, 1 if dw else cin, 3, 3))
        ws = 127 / np.abs(w.reshape(cout, -1)).max(1)
        wq = np.clip(np.rint(w.reshape(cout, -1) * ws[:, None]), -127, 127).astype(np.int8)
        p = {0: cout, 1: 3, 11: 3, 4: 1, 14: 1, 15: 1, 16: 1, 5: 1, 6: wq.size, 8: 1 if dw else 2}
        if dw:
            p[7] = cout
        if act:
            p[9] = act
        if actp:
            p[10] = actp
        layer = g.add("ConvolutionDepthWise" if dw else "Convolution", name, [x], [y], p,
                      [("tagged", wq.reshape(-1)),
                       ("raw", self.rng.normal(0, .1, cout).astype(np.float32)),
                       ("raw", ws.astype(np.float32)), ("raw", np.float32([S]))])
        layer.bottom_scale = float(np.float32(S))
        return layer

    def fc(self, g, x, y, nin, nout=10):
        w = self.rng.normal(0, 1 / np.sqrt(nin), (nout, nin))
        ws = 127 / np.abs(w).max(1)
        wq = np.clip(np.rint(w * ws[:, None]), -127, 127).astype(np.int8)
        layer = g.add("InnerProduct", "fc", [x], [y], {0: nout, 1: 1, 2: wq.size, 8: 2},
                      [("tagged", wq.reshape(-1)), ("raw", np.zeros(nout, np.float32)),
                       ("raw", ws.astype(np.float32)), ("raw", np.float32([S]))])
        layer.bottom_scale = float(np.float32(S))

    NAMES = ("conv-conv", "conv(LeakyReLU)-conv", "conv(Clip)-conv", "conv(Sigmoid)-conv",
             "conv(Mish)-conv", "conv(HardSwish)-conv", "dw-dw(HardSwish)-conv", "conv-FC",
             "conv-Flatten-FC", "conv-Reshape(1-D)-FC", "conv-ReLU layer-conv", "conv-MaxPool-conv",
             "conv,conv-Concat(16+8)-conv", "conv,conv-Concat(4+12)-conv",
             "conv-Split-{conv, Add}")
    ACTS = {"LeakyReLU": (2, [0.1]), "Clip": (3, [0.0, 6.0]), "Sigmoid": (4, None),
            "Mish": (5, None), "HardSwish": (6, [1 / 6, 0.5])}

    def build(self, name: str, fuse: bool) -> NcnnGraph:
        self.rng = np.random.default_rng(self.seed)
        g = NcnnGraph()
        g.add("Input", "in", [], ["in"], {0: H, 1: H, 2: C})
        writers = []
        if name.startswith("conv(") and name.endswith("-conv") and "Concat" not in name:
            act, actp = self.ACTS[name[5:name.index(")")]]
            writers = [self.conv(g, "c1", "in", "a", C, C, act, actp)]
            self.conv(g, "c2", "a", "out", C, C)
        elif name == "conv-conv":
            writers = [self.conv(g, "c1", "in", "a", C, C, 1)]
            self.conv(g, "c2", "a", "out", C, C)
        elif name.startswith("dw-dw"):
            writers = [self.conv(g, "d1", "in", "a", C, C, dw=True),
                       self.conv(g, "d2", "a", "b", C, C, 6, [1 / 6, 0.5], dw=True)]
            self.conv(g, "c3", "b", "out", C, C)
        elif name == "conv-FC":
            writers = [self.conv(g, "c1", "in", "a", C, C, 1)]
            self.fc(g, "a", "out", C * H * H)
        elif name == "conv-Flatten-FC":
            writers = [self.conv(g, "c1", "in", "a", C, C, 1)]
            g.add("Flatten", "fl", ["a"], ["f"])
            self.fc(g, "f", "out", C * H * H)
        elif name == "conv-Reshape(1-D)-FC":
            writers = [self.conv(g, "c1", "in", "a", C, C, 1)]
            g.add("Reshape", "rs", ["a"], ["f"], {0: C * H * H})
            self.fc(g, "f", "out", C * H * H)
        elif name == "conv-ReLU layer-conv":
            writers = [self.conv(g, "c1", "in", "a", C, C)]
            g.add("ReLU", "r", ["a"], ["r"])
            self.conv(g, "c2", "r", "out", C, C)
        elif name == "conv-MaxPool-conv":
            writers = [self.conv(g, "c1", "in", "a", C, C, 1)]
            g.add("Pooling", "p", ["a"], ["p"], {0: 0, 1: 2, 2: 2})
            self.conv(g, "c2", "p", "out", C, C)
        elif "Concat" in name:
            ca, cb = (16, 8) if "16+8" in name else (4, 12)
            g.add("Split", "sp", ["in"], ["i1", "i2"])
            writers = [self.conv(g, "c1", "i1", "a", C, ca, 1), self.conv(g, "c2", "i2", "b", C, cb, 1)]
            g.add("Concat", "cat", ["a", "b"], ["c"], {0: 0})
            self.conv(g, "c3", "c", "out", ca + cb, C)
        elif name == "conv-Split-{conv, Add}":
            writers = [self.conv(g, "c1", "in", "a", C, C, 1)]
            g.add("Split", "sp", ["a"], ["a1", "a2"])
            self.conv(g, "c2", "a1", "b", C, C)
            g.add("BinaryOp", "add", ["b", "a2"], ["out"], {0: 0})
        else:
            raise KeyError(name)
        if fuse:
            for w in writers:
                w.params[8] += 100
                w.weights.append(("raw", np.float32([S])))
        return g


def _x86(g: NcnnGraph, x: np.ndarray) -> np.ndarray | str:
    import ncnn

    with tempfile.TemporaryDirectory() as d:
        Path(d, "m.param").write_text(g.param_text())
        Path(d, "m.bin").write_bytes(g.bin_bytes())
        net = ncnn.Net()
        o = net.opt
        o.use_int8_inference, o.num_threads = True, 1
        o.use_fp16_storage = o.use_fp16_packed = o.use_fp16_arithmetic = o.use_bf16_storage = False
        net.load_param(f"{d}/m.param")
        net.load_model(f"{d}/m.bin")
        ex = net.create_extractor()
        ex.input("in", ncnn.Mat(x).clone())
        ret, m = ex.extract("out")
        out = np.array(m).reshape(-1) if ret == 0 else f"extract failed ({ret})"
        del ex, net
        return out


def _rel(u, f) -> str:
    if isinstance(u, str) or isinstance(f, str):
        return "error"
    if u.shape != f.shape:
        return f"shape {u.size} vs {f.size}"
    return f"{np.abs(u - f).max() / (np.abs(u).max() + 1e-12):.4f}"


def chains(cpu: str, insns: bool) -> str:
    from autoglm_compress.targets.arm_emulation.runner import Job, run_jobs

    ch = Chains()
    x = np.random.default_rng(1).uniform(-3, 3, (C, H, H)).astype(np.float32)
    rows, jobs = [], []
    tmp = Path(tempfile.mkdtemp(prefix="bench_ncnn_requantize_"))
    io = {"inputs": {"x": "in"}, "outputs": {"out": "out"}, "output_shapes": {"out": [-1]}}
    for name in Chains.NAMES:
        ours = requantize.fuse_graph(ch.build(name, False))
        u, f = _x86(ch.build(name, False), x), _x86(ch.build(name, True), x)
        rows.append([name, "yes" if ours else "no", _rel(u, f)])
        for fuse in (False, True):
            g = ch.build(name, fuse)
            p, b = tmp / f"{len(jobs)}.param", tmp / f"{len(jobs)}.bin"
            p.write_text(g.param_text())
            b.write_bytes(g.bin_bytes())
            jobs.append(Job({"param": p, "bin": b}, "ncnn", "int8", io))
    if insns:
        got = run_jobs(jobs, [{"x": x[None]}], cpu=cpu)
        for i, row in enumerate(rows):
            (ou, iu), (of, if_) = got[2 * i], got[2 * i + 1]
            u, f = np.asarray(ou[0][0]).reshape(-1), np.asarray(of[0][0]).reshape(-1)
            row += [_rel(u, f), f"{if_ / iu:.3f}"]
    head = "| chain | fused by requantize.py | x86 rel diff forced-fused vs float |" + \
        (f" aarch64 ({cpu}) rel diff | aarch64 insns fused / float |" if insns else "")
    sep = "|---" * (5 if insns else 3) + "|"
    return "\n".join([head, sep] + ["| " + " | ".join(r) + " |" for r in rows])


def previous_rule(layers) -> tuple[int, dict]:
    """The rule before issue 30 item 2 (for the before/after rows only): int8 conv → int8 conv,
    directly or through a Split whose every reader is one, activations 0..3 only."""
    convs = ("Convolution", "ConvolutionDepthWise")
    readers: dict[str, list] = {}
    for layer in layers:
        for b in layer.inputs:
            readers.setdefault(b, []).append(layer)

    def int8_conv(layer) -> bool:
        return layer.type in convs and layer.params.get(8) in (1, 2) \
            and layer.bottom_scale is not None

    fused = 0
    for layer in layers:
        if not int8_conv(layer) or layer.params.get(9, 0) not in (0, 1, 2, 3):
            continue
        nxt = readers.get(layer.outputs[0], [])
        if len(nxt) != 1:
            continue
        targets = [nxt[0]]
        if nxt[0].type == "Split":
            targets = [r for b in nxt[0].outputs for r in readers.get(b, [])]
            if len(targets) != len(nxt[0].outputs):
                continue
        scales = {t.bottom_scale for t in targets}
        if not targets or not all(int8_conv(t) for t in targets) or len(scales) != 1:
            continue
        layer.params[8] += 100
        layer.weights.append(("raw", np.asarray([scales.pop()], np.float32)))
        fused += 1
    return fused, {}


def mobilenet_v3_like(work: Path):
    """MobileNetV3-style net, random weights (op coverage: HardSwish / ReLU convs, depthwise,
    inverted residuals, GAP → Linear), 3×96×96; random calibration / eval images."""
    import torch

    nn = torch.nn

    def block(cin, cexp, cout, stride, act):
        return nn.ModuleList([nn.Conv2d(cin, cexp, 1), nn.Conv2d(cexp, cexp, 3, stride, 1,
                              groups=cexp), nn.Conv2d(cexp, cout, 1)]), act, cin == cout and stride == 1

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, 2, 1)
            cfg = [(16, 64, 24, 2, "relu"), (24, 72, 24, 1, "relu"), (24, 96, 40, 2, "hs"),
                   (40, 240, 40, 1, "hs"), (40, 120, 48, 1, "hs"), (48, 288, 96, 2, "hs"),
                   (96, 576, 96, 1, "hs")]
            blocks = [block(*c) for c in cfg]
            self.convs = nn.ModuleList([b[0] for b in blocks])
            self.meta = [(b[1], b[2]) for b in blocks]
            self.head = nn.Conv2d(96, 576, 1)
            self.fc = nn.Linear(576, 100)

        def forward(self, x):
            hs, relu = nn.functional.hardswish, torch.relu
            y = hs(self.stem(x))
            for (e, d, p), (act, res) in zip(self.convs, self.meta):
                f = hs if act == "hs" else relu
                z = p(f(d(f(e(y)))))
                y = y + z if res else z
            y = hs(self.head(y)).mean((2, 3))
            return self.fc(y)

    torch.manual_seed(0)
    path = work / "mnv3_like.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, 3, 96, 96),), str(path), dynamo=False,
                      opset_version=17, input_names=["x"], output_names=["y"])
    rng = np.random.default_rng(0)
    for stem, n in (("calib", 32), ("eval", 8)):
        np.savez(work / f"mnv3_{stem}.npz", x=rng.normal(0, 1, (n, 3, 96, 96)).astype(np.float32))
    return path, work / "mnv3_calib.npz", work / "mnv3_eval.npz"


def models(names, work: Path, cpu: str, insns: bool) -> str:
    from bench_arm import _models

    from autoglm_compress import compress

    found = _models([n for n in names if n != "mnv3"], work, 32, 8)
    if "mnv3" in names:
        found["mnv3"] = mobilenet_v3_like(work)
    out = []
    new_rule = requantize.fuse_requantize
    for name, (model, calib, ev) in found.items():
        arts = {}
        for key in ("fp32", "int8 previous rule", "int8"):
            t = time.perf_counter()
            requantize.fuse_requantize = previous_rule if key == "int8 previous rule" else new_rule
            try:
                res = compress(model, targets="arm", arm_format="ncnn", int8=key != "fp32",
                               calib=calib, eval_data=ev, samples=8, calib_samples=32,
                               verify_arm="off", latency_repeats=1,
                               out_dir=work / f"{name}_{key.replace(' ', '_')}")
            finally:
                requantize.fuse_requantize = new_rule
            a = arts[key] = res.artifacts[0]
            a.extra["output_shapes"] = {
                o["name"]: o["shape"] for o in res.report["artifacts"][0]["io"]["outputs"]}
            print(f"  {name} {key}: {time.perf_counter() - t:.0f} s", flush=True)
        line = [f"### {name}"]
        if insns:
            from autoglm_compress.targets.arm_emulation.runner import Job, run_jobs
            from autoglm_compress.targets.arm_emulation.verify import ncnn_io

            with np.load(ev) as z:  # one eval sample, as bench_arm_emulation feeds it
                k = next(k for k in z.files if k != "labels")
                feed = {k: z[k][:1].astype(np.float32)}
            t = time.perf_counter()
            jobs = [Job(dict(a.files), "ncnn", a.precision, ncnn_io(a, a.extra["output_shapes"]),
                        n=1) for a in arts.values()]
            counts = dict(zip(arts, (n for _, n in run_jobs(jobs, [feed], cpu=cpu, timeout=3600))))
            line.append(f"aarch64 {cpu}, one counted inference ({time.perf_counter() - t:.0f} s "
                        f"emulated): FP32 {counts['fp32'] / 1e6:.2f} M instructions")
        line += ["", "| INT8 file | requantized convs | int8 readers fed int8 | fed float "
                 "(boundaries left) | cosine pooled / min vs FP32 | top-1 agr. |"
                 + (" aarch64 insns INT8/FP32 |" if insns else ""),
                 "|---" * (7 if insns else 6) + "|"]
        for key in ("int8 previous rule", "int8"):
            a = arts[key]
            param = Path(a.files["param"]).read_text()
            fed = _fed(param)
            fid = a.fidelity
            top1 = [o.get("top1_agreement") for o in fid.get("outputs", {}).values()]
            row = [key, str(a.extra["ncnn_int8"]["requantized"]), str(fed[0]), str(fed[1]),
                   f"{fid['cosine_pooled']:.5f} / {fid['cosine_min']:.5f}",
                   ", ".join(f"{v:.3f}" for v in top1 if v is not None) or "-"]
            if insns:
                row.append(f"{counts[key] / counts['fp32']:.3f}×")
            line.append("| " + " | ".join(row) + " |")
        line += ["", f"census (new rule): {arts['int8'].extra['ncnn_int8']['int8_edges']}", ""]
        print("\n".join(line), flush=True)
        out += line
    return "\n".join(out)


def _fed(param_text: str) -> tuple[int, int]:
    """(int8 readers fed int8, fed float) counted from the .param: an int8 conv / FC whose input
    holds int8 codes (requantize.int8_blobs) or not."""
    from autoglm_compress.targets.ncnn.requantize import READERS, int8_blobs

    codes, int8 = int8_blobs(param_text), 0
    readers = []
    for ln in param_text.splitlines()[2:]:
        f = ln.split()
        kv = dict(t.split("=", 1) for t in f[4 + int(f[2]) + int(f[3]):])
        if f[0] in READERS and int(kv.get("8", "0")) % 100 in (1, 2):
            readers.append(f[4])
    int8 = sum(b in codes for b in readers)
    return int8, len(readers) - int8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chains", action="store_true")
    ap.add_argument("--models", default="")
    ap.add_argument("--cpu", default="cortex-a76")
    ap.add_argument("--no-insns", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_ncnn_requantize"))
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.chains:
        print(chains(a.cpu, not a.no_insns), flush=True)
    if a.models:
        print(models(a.models.split(","), a.work, a.cpu, not a.no_insns))


if __name__ == "__main__":
    main()

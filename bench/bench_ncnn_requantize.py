"""INT8 blobs between ncnn layers (issue 30 item 2): which chains ncnn runs right, what they cost,
and what the requantize fusion changes on real models.

    .venv/bin/python bench/bench_ncnn_requantize.py [--chains] [--models effnet,yolo]
        [--before DIR] [--cpu cortex-a76] [--no-insns] [--work /tmp/bench_ncnn_requantize]

``--chains``: hand-built int8 chains (random int8 weights, 16 channels, 8×8), each written twice —
the first conv dequantizing (float between) and requantizing (int8 between, forced even where
our rule refuses) — run in x86 ncnn and in aarch64 ncnn under qemu (one thread); per chain: does
requantize.py fuse it, max |fused − unfused| / max |unfused| on each, aarch64 guest instructions
fused / unfused.

``--models``: EfficientNet-Lite1 / nudenet YOLOv8n (bench_arm's loaders) compressed to ncnn INT8
and FP32 (x86 verification only), the INT8 file's requantized convs and census of int8 readers'
inputs (int8, or why float), fidelity vs FP32, and the aarch64 instruction ratio INT8 / FP32 (one
counted inference each). ``--before DIR``: INT8 .param files written by the previous rule
(``<DIR>/<model>/*.int8.ncnn.param``): its requantized count and whether the new file differs.
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
        ours = ch.build(name, False).fuse_requantize()
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


def _requantized(param_text: str) -> int:
    return sum(1 for ln in param_text.splitlines()[2:]
               if any(t.startswith("8=") and int(t[2:]) > 100 for t in ln.split()))


def models(names, work: Path, before: Path | None, cpu: str, insns: bool) -> str:
    from bench_arm import _models

    from autoglm_compress import compress

    out = []
    for name, (model, calib, ev) in _models(names, work, 32, 8).items():
        arts = {}
        for prec in ("fp32", "int8"):
            t = time.perf_counter()
            res = compress(model, targets="arm", arm_format="ncnn", int8=prec == "int8",
                           calib=calib, eval_data=ev, samples=8, calib_samples=32,
                           verify_arm="off", latency_repeats=1, out_dir=work / f"{name}_{prec}")
            arts[prec] = res.artifacts[0]
            arts[prec].extra["output_shapes"] = {
                o["name"]: o["shape"] for o in res.report["artifacts"][0]["io"]["outputs"]}
            print(f"  {name} {prec}: {time.perf_counter() - t:.0f} s", flush=True)
        a = arts["int8"]
        q = a.extra["ncnn_int8"]
        param = Path(a.files["param"]).read_text()
        fid = a.fidelity
        top1 = [o.get("top1_agreement") for o in fid.get("outputs", {}).values()]
        line = [f"### {name}", f"- requantized convs: {q['requantized']} of {q['int8']} int8 "
                f"layers; int8 readers' inputs: {q['int8_edges']}",
                f"- float→int8 boundaries left (int8 readers fed float): "
                f"{sum(v for k, v in q['int8_edges'].items() if k != 'int8')}",
                f"- fidelity vs FP32 (x86 ncnn, 8 samples): cosine pooled "
                f"{fid.get('cosine_pooled'):.5f}, min {fid.get('cosine_min'):.5f}, top-1 {top1}"]
        if before is not None:
            old = sorted((before / name).glob("*.int8.ncnn.param"))
            if old:
                text = old[0].read_text()
                line.append(f"- previous rule: {_requantized(text)} requantized; .param "
                            f"{'identical' if text == param else 'differs'}")
        if insns:
            from autoglm_compress.targets.arm_emulation.runner import Job, run_jobs
            from autoglm_compress.targets.arm_emulation.verify import ncnn_io

            with np.load(ev) as z:  # one eval sample, as bench_arm_emulation feeds it
                key = next(k for k in z.files if k != "labels")
                feed = {key: z[key][:1].astype(np.float32)}
            io = {p: ncnn_io(art, art.extra["output_shapes"])
                  for p, art in arts.items()}
            t = time.perf_counter()
            jobs = [Job(dict(arts[p].files), "ncnn", p, io[p], n=1) for p in ("fp32", "int8")]
            (_, i32), (_, i8) = run_jobs(jobs, [feed], cpu=cpu, timeout=3600)
            line.append(f"- aarch64 {cpu} instructions per inference: FP32 {i32 / 1e6:.2f} M, "
                        f"INT8 {i8 / 1e6:.2f} M, INT8/FP32 {i8 / i32:.3f}× "
                        f"({time.perf_counter() - t:.0f} s emulated)")
        print("\n".join(line), flush=True)
        out += line
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chains", action="store_true")
    ap.add_argument("--models", default="")
    ap.add_argument("--before", type=Path)
    ap.add_argument("--cpu", default="cortex-a76")
    ap.add_argument("--no-insns", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_ncnn_requantize"))
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.chains:
        print(chains(a.cpu, not a.no_insns), flush=True)
    if a.models:
        print(models(a.models.split(","), a.work, a.before, a.cpu, not a.no_insns))


if __name__ == "__main__":
    main()

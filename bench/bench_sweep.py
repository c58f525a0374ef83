"""A sweep of small models built here, with the patterns of issue 31, × {x86, tflite, ncnn} INT8:
per row the worst verification sample's cosine (and which), the mean, the task metric — or, where
the target refuses or fails, the exit code and its one line. A refusal is a row, never a crash.

    .venv/bin/python bench/bench_sweep.py [--models crnn,minilm,...] [--targets x86,tflite,ncnn]
        [--calib 32] [--eval 16] [--work /tmp/bench_sweep] [--timeout 900] [--json rows.json]

Models (random weights, seeded; exported with torch's TorchScript ONNX exporter, output names
left to it where the issue's models had numbered ones):

- ``crnn``: conv → (B, C·H, W) sequence → bidirectional LSTM → per-step classes (an OCR
  recognizer). Metric: greedy CTC decode (argmax per step, repeats and blank 0 collapsed) — share
  of samples whose decoded string equals FP32's.
- ``minilm``: a 2-layer 384-wide encoder (MiniLM-sized), dynamic batch/sequence axes, inputs
  ``input_ids`` + ``attention_mask``, outputs the token states and a mean-pooled, L2-normalised
  sentence embedding. Metric: nearest-neighbour agreement of the embedding (retrieval rank-1).
- ``nhwc``: a tf2onnx-style classifier: NHWC input, a leading Reshape and Transpose to NCHW.
  Metric: top-1 agreement.
- ``detector``: a one-stage head, outputs boxes and per-anchor class scores; the scores output is
  also read inside the graph (an objectness max over it is the third output). Metric: of FP32's
  top-20 anchors by best score, the share in the artifact's top-20 with the same class.
- ``enhancer``: a low-light curve estimator at 256²: 4 iterations of x − a·x·(1 − x) with ``a``
  predicted per pixel (Tanh). Metric: worst-sample PSNR of the artifact's image vs FP32's (dB).
- ``mobilenetv2``: inverted residuals, depthwise 3×3, ReLU6. Metric: top-1 agreement.
- ``srnet``: ×2 super-resolution, a squeeze-excitation block and a ConvTranspose upsampler.
  Metric: worst-sample PSNR vs FP32 (dB).

Each (model, target) runs in its own process (``--row``), so a runtime that aborts is one row with
its exit status. Prints a table; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"x86": {"targets": ("x86",)},
           "tflite": {"targets": ("arm",), "arm_format": "tflite"},
           "ncnn": {"targets": ("arm",), "arm_format": "ncnn"}}


# ----------------------------------------------------------------------------------- models


def _torch():
    import torch
    from torch import nn

    return torch, nn


def build_crnn():
    torch, nn = _torch()

    class CRNN(nn.Module):
        def __init__(self, classes=37):
            super().__init__()
            self.cnn = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
                nn.MaxPool2d((2, 1)))
            self.rnn = nn.LSTM(48 * 4, 64, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(128, classes)

        def forward(self, x):
            f = self.cnn(x)  # (1, 48, 4, 25)
            b, c, h, w = f.shape
            seq = f.permute(0, 3, 1, 2).reshape(b, w, c * h)
            y, _ = self.rnn(seq)
            return self.fc(y)  # (1, 25, classes)

    return CRNN(), {"x": (1, 1, 32, 100)}, {"dynamic_axes": None}


def build_minilm():
    torch, nn = _torch()

    class Layer(nn.Module):  # BERT-style post-norm block, attention written out (as HF exports)
        def __init__(self, d, heads):
            super().__init__()
            self.h, self.dk = heads, d // heads
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x, bias):
            b, t, d = x.shape

            def split(y):
                return y.reshape(b, t, self.h, self.dk).transpose(1, 2)

            att = split(self.q(x)) @ split(self.k(x)).transpose(-1, -2) / self.dk ** 0.5
            ctx = torch.softmax(att + bias, -1) @ split(self.v(x))
            x = self.ln1(x + self.o(ctx.transpose(1, 2).reshape(b, t, d)))
            return self.ln2(x + self.ff(x))

    class Encoder(nn.Module):
        def __init__(self, vocab=1000, d=384, heads=6, layers=2):
            super().__init__()
            self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(64, d)
            self.norm = nn.LayerNorm(d)
            self.layers = nn.ModuleList(Layer(d, heads) for _ in range(layers))

        def forward(self, input_ids, attention_mask):
            pos = torch.arange(input_ids.shape[1]).unsqueeze(0)
            h = self.norm(self.emb(input_ids) + self.pos(pos))
            m = attention_mask.to(h.dtype)
            bias = (1.0 - m)[:, None, None, :] * -10000.0
            for layer in self.layers:
                h = layer(h, bias)
            pooled = (h * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1e-6)
            return h, pooled / pooled.norm(dim=-1, keepdim=True)

    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    return Encoder(), {"input_ids": (1, 16), "attention_mask": (1, 16)}, {"dynamic_axes": dyn}


def build_nhwc():
    torch, nn = _torch()

    class NHWC(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                nn.Linear(32, 10))

        def forward(self, x):  # tf2onnx: a Reshape, then the NHWC → NCHW Transpose
            x = x.reshape(1, 32, 32, 3)
            return self.body(x.permute(0, 3, 1, 2))

    return NHWC(), {"x": (1, 32, 32, 3)}, {"dynamic_axes": None}


def build_detector():
    torch, nn = _torch()

    class Det(nn.Module):
        def __init__(self, classes=8):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU(),
                                      nn.Conv2d(16, 32, 3, 2, 1), nn.SiLU())
            self.box, self.cls = nn.Conv2d(32, 4, 1), nn.Conv2d(32, classes, 1)

        def forward(self, x):
            f = self.body(x)
            boxes = self.box(f).flatten(2).transpose(1, 2)  # (1, anchors, 4)
            scores = torch.sigmoid(self.cls(f)).flatten(2).transpose(1, 2)  # (1, anchors, C)
            return boxes, scores, scores.amax(-1)  # the scores output is read again

    return Det(), {"x": (1, 3, 64, 64)}, {"dynamic_axes": None}


def build_enhancer():
    torch, nn = _torch()

    class Curve(nn.Module):
        def __init__(self, iters=4):
            super().__init__()
            self.iters = iters
            self.net = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(),
                                     nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU(),
                                     nn.Conv2d(16, 3 * iters, 3, 1, 1), nn.Tanh())

        def forward(self, x):
            a = torch.split(self.net(x), 3, dim=1)
            for k in range(self.iters):
                x = x - a[k] * x * (1 - x)
            return x

    return Curve(), {"x": (1, 3, 256, 256)}, {"dynamic_axes": None, "unit_range": True}


def build_mobilenetv2():
    torch, nn = _torch()

    def block(cin, cout, stride, expand=4):
        hid = cin * expand
        return nn.Sequential(
            nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(),
            nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid),
            nn.ReLU6(), nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    class Residual(nn.Module):
        def __init__(self, inner, skip):
            super().__init__()
            self.inner, self.skip = inner, skip

        def forward(self, x):
            y = self.inner(x)
            return x + y if self.skip else y

    class MBV2(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                      nn.ReLU6())
            self.blocks = nn.Sequential(
                Residual(block(16, 24, 2), False), Residual(block(24, 24, 1), True),
                Residual(block(24, 32, 2), False), Residual(block(32, 32, 1), True))
            self.head = nn.Sequential(nn.Conv2d(32, 128, 1), nn.ReLU6(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 100))

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)))

    return MBV2(), {"x": (1, 3, 96, 96)}, {"dynamic_axes": None}


def build_srnet():
    torch, nn = _torch()

    class SE(nn.Module):
        def __init__(self, c, r=4):
            super().__init__()
            self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // r, 1), nn.ReLU(),
                                    nn.Conv2d(c // r, c, 1), nn.Sigmoid())

        def forward(self, x):
            return x * self.fc(x)

    class SR(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(3, 32, 3, 1, 1)
            self.body = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), SE(32),
                                      nn.Conv2d(32, 32, 3, 1, 1))
            self.up = nn.ConvTranspose2d(32, 16, 4, 2, 1)
            self.tail = nn.Conv2d(16, 3, 3, 1, 1)

        def forward(self, x):
            f = self.head(x)
            f = f + self.body(f)
            return self.tail(torch.relu(self.up(f)))

    return SR(), {"x": (1, 3, 64, 64)}, {"dynamic_axes": None, "unit_range": True}


MODELS = {"crnn": build_crnn, "minilm": build_minilm, "nhwc": build_nhwc,
          "detector": build_detector, "enhancer": build_enhancer,
          "mobilenetv2": build_mobilenetv2, "srnet": build_srnet}


def _data(name: str, shapes: dict, meta: dict, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    if name == "minilm":
        ids = rng.integers(1, 1000, (n, *shapes["input_ids"]), dtype=np.int64)
        mask = np.ones((n, *shapes["attention_mask"]), np.int64)
        for k in range(n):  # some padding at the end
            mask[k, 0, int(rng.integers(8, 17)):] = 0
        return {"input_ids": ids, "attention_mask": mask}
    out = {}
    for inp, shape in shapes.items():
        if meta.get("unit_range"):
            out[inp] = rng.uniform(0.05, 0.95, (n, *shape)).astype(np.float32)
        else:
            out[inp] = rng.standard_normal((n, *shape)).astype(np.float32)
    return out


def export(name: str, work: Path, n_calib: int, n_eval: int) -> Path:
    """``work/name/model.onnx`` + calib.npz + eval.npz (built once; reused when present)."""
    d = work / name
    model = d / f"{name}.onnx"
    if model.exists() and (d / "eval.npz").exists():
        return model
    torch, _ = _torch()
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    module, shapes, meta = MODELS[name]()
    module.eval()
    for m in module.modules():  # BN with non-trivial statistics (random init has none)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    ex = _data(name, shapes, meta, 1, 99)
    args = tuple(torch.from_numpy(v[0]) for v in ex.values())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(model), dynamo=False, opset_version=17,
                          input_names=list(shapes), dynamic_axes=meta.get("dynamic_axes"))
    np.savez(d / "calib.npz", **_data(name, shapes, meta, n_calib, 1))
    np.savez(d / "eval.npz", **_data(name, shapes, meta, n_eval, 2))
    return model


# ------------------------------------------------------------------------------ task metrics


def _ctc(seq: np.ndarray) -> tuple:
    best = seq.reshape(-1, seq.shape[-1]).argmax(-1)
    return tuple(int(c) for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1]))


def _psnr_worst(ref, got) -> float:
    vals = []
    for r, g in zip(ref, got):
        r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
        mse = float(np.mean((r - g) ** 2))
        peak = float(np.ptp(r)) or 1.0
        vals.append(np.inf if mse == 0 else 10 * np.log10(peak ** 2 / mse))
    return float(min(vals))


def task_metric(name: str, ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> str:
    """The model's own measure of the artifact against FP32 (see the module doc)."""
    from autoglm_compress.metrics import nn_agreement

    first = [[s[0] for s in x] for x in (ref, got)]
    if name == "crnn":
        same = np.mean([_ctc(r) == _ctc(g) for r, g in zip(*first)])
        return f"CTC string = FP32 {same:.3f}"
    if name == "minilm":
        res = nn_agreement([s[1] for s in ref], [s[1] for s in got])
        return (f"NN agreement {res['nn_agreement']:.3f}" if "nn_agreement" in res
                else res["nn_skipped"])
    if name in ("nhwc", "mobilenetv2"):
        agree = np.mean([np.argmax(r) == np.argmax(g) for r, g in zip(*first)])
        return f"top-1 agreement {agree:.3f}"
    if name == "detector":
        shares = []
        for r, g in zip(ref, got):
            rs, gs = np.asarray(r[1])[0], np.asarray(g[1])[0]
            rtop = np.argsort(-rs.max(1))[:20]
            gtop = set(np.argsort(-gs.max(1))[:20].tolist())
            shares.append(np.mean([a in gtop and rs[a].argmax() == gs[a].argmax() for a in rtop]))
        return f"top-20 detections kept {np.mean(shares):.3f}"
    return f"worst PSNR {_psnr_worst(*first):.1f} dB"


# ------------------------------------------------------------------------------ one row


def run_row(name: str, target: str, work: Path, n_eval: int) -> dict:
    """compress() one model for one target in this process; the verification's own (reference,
    artifact) outputs are captured for the task metric. Failures come back as the row."""
    import autoglm_compress.metrics as metrics
    from autoglm_compress import compress
    from autoglm_compress.errors import CompressError

    captured = []
    real = metrics.fidelity

    def spy(ref, got, *a, **kw):
        if sys._getframe(1).f_code.co_name == "verify_in_runtime" and not captured:
            captured.append((ref, got))
        return real(ref, got, *a, **kw)

    metrics.fidelity = spy
    d = work / name
    row = {"model": name, "target": target}
    t0 = time.perf_counter()
    try:
        res = compress(str(d / f"{name}.onnx"), int8=True, calib=str(d / "calib.npz"),
                       eval_data=str(d / "eval.npz"), samples=n_eval, latency_repeats=3,
                       out_dir=str(d / target), **TARGETS[target])
    except CompressError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return {**row, "status": f"exit {e.exit_code}", "reason": first,
                "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as e:  # noqa: BLE001 - a bug is a row too (exit 1)
        first = (str(e).strip().splitlines() or [""])[0]
        return {**row, "status": "exit 1", "reason": f"{type(e).__name__}: {first}"[:300],
                "seconds": round(time.perf_counter() - t0, 1)}
    art = res.artifacts[0]
    fid = art.fidelity
    worst = fid.get("worst") or {}
    row.update(status="ok", artifact=art.path.name,
               cosine_min=fid.get("cosine_min"), cosine_mean=fid.get("cosine_mean"),
               cosine_pooled=fid.get("cosine_pooled"),
               worst=f"{worst.get('output')}#{worst.get('sample')}",
               kinds={k: m.get("kind") for k, m in fid.get("outputs", {}).items()},
               seconds=round(time.perf_counter() - t0, 1))
    row["metric"] = task_metric(name, *captured[0]) if captured else "-"
    return row


def _child(name: str, target: str, work: Path, n_eval: int, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--row", name, target, "--work", str(work),
           "--eval", str(n_eval)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "target": target, "status": "timeout",
                "reason": f"no result in {timeout} s"}
    last = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode == 0 and last:
        return json.loads(last[-1])
    tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"model": name, "target": target, "status": f"exit {p.returncode}",
            "reason": f"the process died: {tail}"[:300]}


def _table(rows: list[dict]) -> str:
    head = ("model", "target", "cos min (out#sample)", "cos mean", "cos pooled", "task metric",
            "status / refusal")
    lines = [head]
    for r in rows:
        if r.get("status") == "ok":
            lines.append((r["model"], r["target"], f"{r['cosine_min']:.5f} ({r['worst']})",
                          f"{r['cosine_mean']:.5f}", f"{r['cosine_pooled']:.5f}", r["metric"],
                          f"ok, {r['seconds']} s"))
        else:
            lines.append((r["model"], r["target"], "-", "-", "-", "-",
                          f"{r['status']}: {r.get('reason', '')}"))
    return "\n".join("| " + " | ".join(str(c) for c in ln) + " |" for ln in lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--calib", type=int, default=32, help="calibration samples")
    ap.add_argument("--eval", type=int, default=16, help="verification samples")
    ap.add_argument("--work", default="/tmp/bench_sweep")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per row")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--row", nargs=2, metavar=("MODEL", "TARGET"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    work = Path(a.work)
    if a.row:
        print(json.dumps(run_row(a.row[0], a.row[1], work, a.eval), default=str))
        return 0
    models = [m for m in a.models.split(",") if m]
    targets = [t for t in a.targets.split(",") if t]
    unknown = sorted(set(models) - set(MODELS)) + sorted(set(targets) - set(TARGETS))
    if unknown:
        print(f"error: unknown {unknown}; models: {sorted(MODELS)}, targets: {sorted(TARGETS)}",
              file=sys.stderr)
        return 2
    rows = []
    for name in models:
        try:
            export(name, work, a.calib, a.eval)
        except Exception as e:  # noqa: BLE001 - an export that fails is a row per target
            why = f"export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            rows += [{"model": name, "target": t, "status": "no model", "reason": why[:300]}
                     for t in targets]
            continue
        for t in targets:
            rows.append(_child(name, t, work, a.eval, a.timeout))
            r = rows[-1]
            print(f"{name} {t}: {r.get('status')} {r.get('cosine_min', r.get('reason', ''))}",
                  file=sys.stderr, flush=True)
    print(_table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""arm target, ncnn format, vs pnnx — side by side in one run.

    .venv/bin/python bench/bench_ncnn.py [--models digits,effnet,yolo,bert,ppocr] [--calib 64] [--eval 64]
        [--work /tmp/bench_ncnn] [--write-results]

Models: the digits CNN (TorchScript), EfficientNet-Lite1 (ImageNet weights, TorchScript, 240×240) and
nudenet's YOLOv8n (ONNX, 320×320, static) and the Hugging Face BERT (random weights, token ids + mask,
batch 1 × 32) and PP-OCR's SVTR text recognizer (`--models ppocr`, ONNX opset 11, 48×320). Ours = ``compress --target arm --format ncnn`` at FP32,
FP16 and INT8 (default ranges; ``--ncnn-int8-layers measured``; and ``--calib-method entropy``: the KL thresholds ncnn2table computes by
default — ncnn2table/ncnn2int8 are not in the ncnn wheel, so ncnn's own int8 route cannot run here).
Peer = ``pnnx`` (PyPI, its bundled binary) on the same model file with ``fp16=0``. Every param/bin
runs in the ncnn Python runtime (2 threads; FP32 with fp16 storage off): cosine (worst sample) and
top-1 agreement vs the FP32 model in onnxruntime, ours-vs-pnnx FP32 max relative difference, layer
count, size, and latency (median of interleaved runs; ratio to our FP32).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "real"), str(ROOT / "bench")]
HEADING = "## arm target, ncnn format, vs pnnx"


def _runner(param: Path, binf: Path, ins: dict, outs: list[str], precision: str,
            int32: tuple = ()):
    import ncnn

    net = ncnn.Net()
    o = net.opt
    o.num_threads = 2
    o.use_fp16_storage = o.use_fp16_packed = precision == "fp16"
    o.use_fp16_arithmetic = False
    o.use_int8_inference = precision == "int8"
    if net.load_param(str(param)) != 0 or net.load_model(str(binf)) != 0:
        raise RuntimeError(f"ncnn cannot load {param.name}")

    def run(feed):
        ex = net.create_extractor()
        keep = []
        for name, blob in ins.items():
            x = np.ascontiguousarray(feed[name][0], np.int32 if name in int32 else np.float32)
            mat = ncnn.Mat(x).clone()
            keep += [x, mat]
            ex.input(blob, mat)
        got = []
        for blob in outs:
            ret, m = ex.extract(blob)
            assert ret == 0, (param, blob)
            got.append(np.array(m)[None])
        return got

    return run


def _pnnx(src: Path, shapes: list[str], work: Path) -> tuple[Path, Path, float]:
    work.mkdir(parents=True, exist_ok=True)
    local = work / (re.sub(r"\W", "_", src.stem) + src.suffix)  # pnnx renames '-' to '_'
    local.write_bytes(src.read_bytes())
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("pnnx")), local.name,
                    "inputshape=" + ",".join(shapes), "fp16=0"],
                   cwd=work, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    stem = local.stem
    return work / f"{stem}.ncnn.param", work / f"{stem}.ncnn.bin", wall


def _layers(param: Path) -> int:
    return int(param.read_text().splitlines()[1].split()[0])


def _pnnx_shape(x: np.ndarray) -> str:
    return "[" + ",".join(map(str, x.shape)) + "]" + ("i64" if x.dtype == np.int64 else "")


def run_model(name, src, calib, ev, work: Path, n_calib: int, n_eval: int) -> list:
    from common import detection_agreement as _detection

    from autoglm_compress import compress, load
    from autoglm_compress.frontend import make_static
    from autoglm_compress.inputs import load_npz_feeds
    from autoglm_compress.ir_utils import ort_run, ort_session
    from autoglm_compress.metrics import _cos

    model = load(src)
    feeds, _ = load_npz_feeds(ev, model, limit=n_eval)
    model = make_static(model, {k: v.shape for k, v in feeds[0].items()})
    sess = ort_session(model)
    ref = [ort_run(sess, f) for f in feeds]
    in_names = [v.name for v in model.graph.inputs]
    out_shape = [list(r.shape) for r in ref[0]]
    shapes = tuple(f"{k}={'x'.join(map(str, v.shape))}:{v.dtype}" for k, v in feeds[0].items())

    runs, walls, params = {}, {}, {}
    for label, kw in (("ours fp32", {}), ("ours fp16", {"fp16": True}),
                      ("ours int8", {"int8": True}),
                      ("ours int8 measured", {"int8": True, "ncnn_int8_layers": "measured"}),
                      ("ours int8 entropy", {"int8": True, "calib_method": "entropy"})):
        if "int8" in kw:
            kw.update(calib=str(calib), calib_samples=n_calib)
        t0 = time.perf_counter()
        res = compress(src, targets="arm", arm_format="ncnn", eval_data=str(ev), samples=4,
                       latency_repeats=3, static_shapes=True, input_shapes=shapes,
                       out_dir=work / f"{name}-{label.replace(' ', '-')}", **kw)
        walls[label] = time.perf_counter() - t0
        art = res.artifact("arm", "ncnn")
        blobs = art.extra["blobs"]
        prec = art.precision
        params[label] = (art.files["param"], art.files["bin"])
        runs[label] = _runner(*params[label], blobs["inputs"], list(blobs["outputs"].values()),
                              prec, tuple(blobs["int32_inputs"]))
    pnnx_failed = None
    try:
        pp, pb, wall = _pnnx(Path(src), [_pnnx_shape(feeds[0][k]) for k in in_names],
                             work / f"{name}-pnnx")
        params["pnnx fp32"] = (pp, pb)
        walls["pnnx fp32"] = wall
        runs["pnnx fp32"] = _runner(pp, pb, {k: f"in{i}" for i, k in enumerate(in_names)},
                                    [f"out{i}" for i in range(len(out_shape))], "fp32",
                                    tuple(k for k in in_names if feeds[0][k].dtype == np.int64))
    except subprocess.CalledProcessError as e:
        pnnx_failed = f"pnnx failed: {e.stderr.strip().splitlines()[-1:]}"
    except RuntimeError as e:  # converted, but ncnn cannot load what it wrote
        bad = sorted({ln.split()[0] for ln in pp.read_text().splitlines()[2:]
                      if ln.split()[0].startswith(("Tensor.", "pnnx.", "torch.", "F."))})
        pnnx_failed = f"{e} (pnnx left ops without an ncnn layer: {', '.join(bad)})"
    if pnnx_failed:
        print(f"{name}: {pnnx_failed}", flush=True)

    got = {k: [[g.reshape(s) for g, s in zip(r(f), out_shape)] for f in feeds]
           for k, r in runs.items()}
    lat = {k: [] for k in runs}
    for _ in range(20):
        for k, r in runs.items():
            t0 = time.perf_counter()
            r(feeds[0])
            lat[k].append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(lat["ours fp32"])
    rows = []
    for k in runs:
        g = got[k]
        row = {"model": name, "artifact": k,
               "size_mb": round(sum(p.stat().st_size for p in params[k]) / 1e6, 2),
               "layers": _layers(params[k][0]),
               "cosine": round(float(min(_cos(r[0], x[0]) for r, x in zip(ref, g))), 5)}
        if ref[0][0].ndim == 2 and name != "bert":
            row["top1"] = round(float(np.mean([np.argmax(r[0]) == np.argmax(x[0])
                                               for r, x in zip(ref, g)])), 3)
        elif name == "ppocr":  # per-position character agreement of the CTC output
            row["top1"] = round(float(np.mean([np.mean(r[0].argmax(-1) == x[0].argmax(-1))
                                               for r, x in zip(ref, g)])), 3)
        else:
            row["top1"] = "-"
            if name == "yolo":
                row.update(_detection(ref, g))
        if k == "ours fp32" and pnnx_failed:
            row["pnnx"] = pnnx_failed
        if "pnnx fp32" in got and k == "ours fp32":
            p = got["pnnx fp32"]
            row["vs_pnnx_rel"] = float(max(np.abs(a[0] - b[0]).max() / max(np.abs(b[0]).max(),
                                                                             1e-12)
                                           for a, b in zip(g, p)))
        ms = statistics.median(lat[k])
        row.update(latency_ms=round(ms, 3), vs_fp32=round(ms / base, 2), wall_s=round(walls[k], 1))
        rows.append(row)
        print(row, flush=True)
    return rows


def render(rows: list[dict], cmd: str) -> str:
    lines = [HEADING, "", f"`{cmd}` (2-core AVX2 VM shared with other jobs; ncnn CPU, 2 threads; "
             "latency ratio to our FP32 ncnn model in the same interleaved run)", "",
             "| model | artifact | layers | size MB | cosine min | top-1 agree | ncnn ms | vs FP32 "
             "| wall s |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['artifact']} | {r['layers']} | {r['size_mb']} | {r['cosine']} "
              f"| {r['top1']} | {r['latency_ms']} | {r['vs_fp32']}× | {r['wall_s']} |"
              for r in rows]
    rel = [r for r in rows if "vs_pnnx_rel" in r]
    if rel:
        lines += ["", "Our FP32 ncnn outputs vs pnnx's (max |ours − pnnx| / max |pnnx|, worst "
                  "sample): " + ", ".join(f"{r['model']} {r['vs_pnnx_rel']:.1e}" for r in rel)
                  + "."]
    lines += [f"{r['model']}: {r['pnnx']}." for r in rows if "pnnx" in r]
    det = [r for r in rows if "box_cos" in r]
    if det:
        lines += ["", "| model | artifact | box cosine | score cosine | top-50 detections agree |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['artifact']} | {r['box_cos']} | {r['score_cos']} | "
                  f"{r['det_agree']} |" for r in det]
    lines += ["", "Wall time: ours = the whole `compress` (load, passes, calibration, lowering, "
              "verification and side-by-side timing in ncnn); pnnx's = its conversion. ncnn's own "
              "int8 tools (ncnn2table, ncnn2int8) are not in the ncnn wheel: the entropy row is "
              "our per-tensor KL calibration in ncnn's int8 format instead.", ""]
    return "\n".join(lines)


def load_models(names, work: Path, n_calib: int, n_eval: int) -> dict:
    """name → (model, calib, eval): bench_arm's digits / effnet / yolo, plus ``bert`` and
    ``ppocr`` (the PP-OCR recognizer)."""
    from bench_arm import _models  # the same three models, made the same way

    models = _models(names, work, n_calib, n_eval)
    if "bert" in names:  # traced at batch 1: pnnx takes the traced shapes only
        import zoo

        rm = zoo.bert_encoder(work, dict_output=False, n_calib=n_calib, n_eval=n_eval, batch=1)
        models["bert"] = (rm.model, rm.calib, rm.eval)
    if "ppocr" in names:  # PP-OCR's SVTR recognizer (ONNX, opset 11), 48×320 text lines
        import zoo

        rm = zoo.ppocr(work, "rec", n_calib=n_calib, n_eval=n_eval)
        models["ppocr"] = (rm.model, rm.calib, rm.eval)
    return models


def main() -> None:
    from bench_arm import write_results

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="digits,effnet,yolo,bert")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=64)
    ap.add_argument("--work", default="/tmp/bench_ncnn")
    ap.add_argument("--write-results", action="store_true")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    models = load_models(a.models.split(","), work, a.calib, a.eval)
    for name, (src, calib, ev) in models.items():
        rows += run_model(name, src, calib, ev, work, a.calib, a.eval)
    text = render(rows, "python bench/bench_ncnn.py --models " + a.models)
    print(text)
    (work / "rows.json").write_text(json.dumps(rows, indent=1))
    if a.write_results:
        write_results(text, HEADING)


if __name__ == "__main__":
    main()

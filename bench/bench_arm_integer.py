"""ARM TFLite INT8: how much of the written .tflite runs integer (issue 30).

    .venv/bin/python bench/bench_arm_integer.py [--models cnn,effnet,yolo,ppocr_det,ppocr_rec]
        [--calib 64] [--eval 64] [--work /tmp/bench_arm_integer] [--label after] [--list-float]

Per model: ``compress(..., int8=True, targets="arm")`` with calibration data, then the written
.tflite is read back (``autoglm_compress/targets/tflite/census.py``, loaded from this checkout by
path, so the same count applies to a run of an older tree put first on PYTHONPATH): int8 / float
ops by their tensors' types, the share of MACs in float ops, the size against the FP32 .tflite of
the same model (lowered from the same prepared IR), held-out accuracy / top-1 agreement and
``vs_qdq_simulation``. Models: the issue's CNN (tests/test_arm_int8_integer.py, trained 3 epochs on
digits; eval = the 500 held-out digits), EfficientNet-Lite1, nudenet's YOLOv8n and RapidOCR's
PP-OCR detector / recognizer (tests/real/zoo.py; all with ``static_shapes``). Prints one JSON line
per model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "real"), str(ROOT / "examples")]


def _census():
    spec = importlib.util.spec_from_file_location(
        "_census", ROOT / "autoglm_compress" / "targets" / "tflite" / "census.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.census


def _models(names, work: Path, n_calib: int, n_eval: int) -> dict:
    out = {}
    if "cnn" in names:
        from test_arm_int8_integer import export_issue30_cnn

        folder = work / "cnn"
        folder.mkdir(parents=True, exist_ok=True)
        path, calib, ev = export_issue30_cnn(folder)
        out["issue30_cnn"] = (path, calib, ev, 500)
    if "effnet" in names:
        import zoo

        rm = zoo.efficientnet_lite(work / "effnet", 1, n_calib, n_eval)
        out["efficientnet_lite1"] = (rm.model, rm.calib, rm.eval, n_eval)
    if "yolo" in names:
        import zoo

        rm = zoo.nudenet_yolov8n(work / "yolo", n_calib, n_eval)
        out["yolov8n"] = (rm.model, rm.calib, rm.eval, n_eval)
    for part in ("det", "rec"):
        if f"ppocr_{part}" in names:
            import zoo

            rm = zoo.ppocr(work / f"ppocr_{part}", part, n_calib, n_eval)
            out[f"ppocr_{part}"] = (rm.model, rm.calib, rm.eval, n_eval)
    return out


def _fp32_size(model, ev) -> int:
    import numpy as np

    from autoglm_compress import load
    from autoglm_compress.frontend import make_static
    from autoglm_compress.pipeline import Pipeline, build_passes
    from autoglm_compress.targets.tflite.lower import lower_to_tflite

    m = load(model)
    with np.load(ev) as z:  # the eval data's shapes, batch 1 (as static_shapes does)
        m = make_static(m, {k: [1, *z[k].shape[1:]] for k in z.files if k != "labels"})
    Pipeline(build_passes(["cleanup", "fold_bn", "decompose_lpnorm", "fuse_gelu"]),
             progress=False).run(m)
    return len(lower_to_tflite(m, "fp32"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cnn,effnet")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_arm_integer"))
    ap.add_argument("--label", default="")
    ap.add_argument("--list-float", action="store_true",
                    help="also print each float op (TFLite op, ONNX node, reason)")
    a = ap.parse_args()
    from autoglm_compress import compress

    census = _census()
    for name, (model, calib, ev, n_eval) in _models(a.models.split(","), a.work, a.calib,
                                                     a.eval).items():
        t0 = time.perf_counter()
        res = compress(model, int8=True, targets="arm", calib=calib, calib_samples=a.calib,
                       eval_data=ev, samples=n_eval, out_dir=a.work / f"{name}_{a.label}",
                       latency_repeats=3, static_shapes=True)
        wall = time.perf_counter() - t0
        art = res.artifact("arm")
        c = census(art.path.read_bytes())
        out = next(iter(art.fidelity["outputs"].values()))
        row = {"model": name, "label": a.label, "int8_ops": c["int8"], "float_ops": c["float"],
               "float_op_types": sorted({f["op"] for f in c["float_ops"]}),
               "float_mac_share": round(c["float_mac_share"], 4),
               "size_bytes": art.size_bytes,
               "size_vs_fp32_tflite": round(art.size_bytes / _fp32_size(model, ev), 3),
               "accuracy": out.get("accuracy"), "accuracy_ref": out.get("accuracy_ref"),
               "top1_agreement": out.get("top1_agreement"),
               "cosine_min": art.fidelity["cosine_min"],
               "vs_qdq_simulation": art.extra["vs_qdq_simulation"]["cosine_min"],
               "wall_s": round(wall, 1)}
        if a.list_float:
            named = art.extra["tflite_ops"]["float_ops"]  # the lowering's census: with reasons
            row["float_op_list"] = [(f["op"], f["node"], f["reason"]) for f in named]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""Running a bundle's artifact on its stored samples, in the runtime its format needs — the same
code when the bundle is written (the stored outputs) and when it is checked (``verify-bundle``),
reading only the manifest (ncnn: blob names and shapes), never the tool's IR.
One thread everywhere: the stored outputs do not depend on how many cores the writer had; an
ONNX INT8 artifact runs its QDQ graph as written (onnxruntime's graph optimizations off), which
computes the same on every x86 CPU."""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

import numpy as np

__all__ = ["FORMAT_RUNTIME", "artifact_format", "make_runner", "runtime_version"]

# format → (import name, distribution name)
FORMAT_RUNTIME = {
    "onnx": ("onnxruntime", "onnxruntime"),
    "tflite": ("ai_edge_litert", "ai-edge-litert"),
    "ncnn": ("ncnn", "ncnn"),
    "tensorrt": ("tensorrt", "tensorrt"),
}
_SUFFIX_FORMAT = {".onnx": "onnx", ".tflite": "tflite", ".param": "ncnn", ".engine": "tensorrt",
                  ".plan": "tensorrt"}


def artifact_format(report_artifact: dict) -> str:
    """The artifact's file format: the target's own word (``extra.format``), else its suffix."""
    fmt = (report_artifact.get("extra") or {}).get("format")
    return fmt or _SUFFIX_FORMAT.get(Path(report_artifact["path"]).suffix, "unknown")


def runtime_version(fmt: str) -> str | None:
    dist = FORMAT_RUNTIME.get(fmt, (None, None))[1]
    if dist is None:
        return None
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def make_runner(root: Path, entry: dict):
    """``(run, None)``: ``run(feed) → [outputs]`` for the manifest ``entry`` whose files lie
    under ``root``; ``(None, why)`` when this machine cannot run it (runtime not installed, no
    CPU runner for the format). Only the runtime and numpy are imported (no torch, no onnx):
    ``verify-bundle`` starts in about a second and runs where just the runtime is installed."""
    fmt = entry["format"]
    mod = FORMAT_RUNTIME.get(fmt, (None,))[0]
    if fmt not in _RUNNERS:
        return None, f"no CPU runner for format {fmt}"
    if importlib.util.find_spec(mod) is None:
        return None, f"{mod} is not installed"
    files = {role: root / f["path"] for role, f in entry["files"].items()}
    return _RUNNERS[fmt](files, entry), None


def _onnx(files: dict, entry: dict):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    if entry["precision"] == "int8":  # the QDQ graph as written: the same maths on every CPU
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(files["model"]), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return lambda feed: sess.run(None, {n: feed[n] for n in names})


def _tflite(files: dict, entry: dict):
    from autoglm_compress.targets.tflite.litert_run import litert_runner

    return litert_runner(files["model"], 1)()


def _ncnn(files: dict, entry: dict):
    import ncnn

    n = entry["ncnn"]
    net = ncnn.Net()
    o = net.opt
    o.num_threads = 1
    o.use_fp16_storage = o.use_fp16_packed = entry["precision"] == "fp16"
    o.use_fp16_arithmetic = o.use_bf16_storage = o.use_vulkan_compute = False
    o.use_int8_inference = entry["precision"] == "int8"
    if net.load_param(str(files["param"])) != 0 or net.load_model(str(files["bin"])) != 0:
        raise RuntimeError(f"ncnn could not load {files['param'].name} / {files['bin'].name}")
    blobs, int32 = n["blobs"], set(n["blobs"].get("int32_inputs") or ())

    def run(feed):
        ex = net.create_extractor()
        keep = []
        for name, blob in blobs["inputs"].items():
            x = np.asarray(feed[name]).astype(np.int32 if name in int32 else np.float32)
            # clone(): a Mat wrapping numpy memory has no reference count of its own
            mat = ncnn.Mat(np.ascontiguousarray(x.reshape(n["input_shapes"][name]))).clone()
            keep.append(mat)
            ex.input(blob, mat)
        got = []
        for name, blob in blobs["outputs"].items():
            ret, m = ex.extract(blob)
            if ret != 0:
                raise RuntimeError(f"ncnn extract {blob!r} failed ({ret})")
            got.append(np.array(m).reshape(n["output_shapes"][name]))
        del keep
        return got

    return run


_RUNNERS = {"onnx": _onnx, "tflite": _tflite, "ncnn": _ncnn}

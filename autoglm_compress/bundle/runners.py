"""Running a bundle's artifact on its stored samples, in the runtime its format needs — the same
code when the bundle is written (the stored outputs) and when it is checked (``verify-bundle``).
One thread everywhere: the stored outputs do not depend on how many cores the writer had; an
ONNX INT8 artifact runs its QDQ graph as written (onnxruntime's graph optimizations off), which
computes the same on every x86 CPU."""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

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
    CPU runner for the format)."""
    fmt = entry["format"]
    mod = FORMAT_RUNTIME.get(fmt, (None,))[0]
    if fmt not in ("onnx", "tflite", "ncnn"):
        return None, f"no CPU runner for format {fmt}"
    if importlib.util.find_spec(mod) is None:
        return None, f"{mod} is not installed"
    files = {role: root / f["path"] for role, f in entry["files"].items()}
    if fmt == "onnx":
        from autoglm_compress.ir_utils import ort_run, ort_session

        # INT8: the QDQ graph as written (graph optimizations off), the same maths on every CPU
        # (fused int8 kernels differ between AVX2 and VNNI machines)
        sess = ort_session(str(files["model"]), threads=1, simulate=entry["precision"] == "int8")
        return (lambda feed: ort_run(sess, feed)), None
    if fmt == "tflite":
        from autoglm_compress.targets.tflite.target import litert_runner

        return litert_runner(files["model"], 1)(), None
    from autoglm_compress.targets.ncnn.target import ncnn_runner

    n = entry["ncnn"]
    io = {"inputs": n["blobs"]["inputs"], "outputs": n["blobs"]["outputs"],
          "int32_inputs": n["blobs"].get("int32_inputs", []), "output_shapes": n["output_shapes"]}
    return ncnn_runner(files["param"], files["bin"], io, entry["precision"], 1)(), None

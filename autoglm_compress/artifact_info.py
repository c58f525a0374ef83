"""Facts for the report: how the run was asked for, the source model's identity, each artifact's
inputs/outputs (names, shapes with dynamic dims, dtypes, IO quantization) and how many compute
layers run in int8 vs float. One dtype spelling everywhere: numpy names (``float32``, ``int8``)."""

from __future__ import annotations

import datetime
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_utils import dtype_name

__all__ = ["run_info", "source_info", "artifact_io", "layer_counts", "dtype_name", "name_sources"]

_RUNTIMES = ("onnx", "onnxruntime", "torch", "onnx-ir", "numpy", "onnxscript")


def run_info(argv: list[str] | None = None, recipe: dict | None = None) -> dict:
    """The command line (or recipe), when, and the versions of the tool's runtimes."""
    versions = {"python": platform.python_version()}
    for pkg in _RUNTIMES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "command": list(argv) if argv is not None else None,
        "recipe": recipe,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runtimes": versions,
    }


def source_info(path: str | Path) -> dict:
    from autoglm_compress.targets.base import sha256_of

    p = Path(path)
    info = {"path": str(path), "size_bytes": p.stat().st_size, "sha256": sha256_of(p)}
    extra = external_data_files(p)
    if extra:  # an ONNX file whose weights live beside it: the model is all of them
        info["external_data"] = [{"path": str(f), "size_bytes": f.stat().st_size} for f in extra]
        info["size_bytes"] += sum(e["size_bytes"] for e in info["external_data"])
    return info


def external_data_files(p: Path) -> list[Path]:
    """The external-data files an ONNX model file names (inside its folder), [] for anything else."""
    if p.suffix.lower() != ".onnx":
        return []
    try:
        import onnx

        proto = onnx.load(str(p), load_external_data=False)
    except Exception:  # noqa: BLE001 — not a readable ONNX file: the loader says why, not this
        return []
    names = {e.value for t in _all_tensors(proto.graph) for e in t.external_data if e.key == "location"}
    base = p.parent.resolve()
    files = [(base / n).resolve() for n in sorted(names)]
    return [f for f in files if f.is_file() and base in f.parents]


def _all_tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            for g in [a.g] if a.HasField("g") else list(a.graphs):
                yield from _all_tensors(g)


def _shape(v: ir.Value) -> list | None:
    if v.shape is None:
        return None
    return [d if isinstance(d, int) else (str(d) if d is not None else "?") for d in v.shape]


def _io_quant(v: ir.Value, consumer: bool) -> dict | None:
    """Scale/zero point when the graph input is read by a QuantizeLinear (or the output made by a
    DequantizeLinear): what an integer pipeline must feed/expect."""
    from autoglm_compress.quantization.qdq_read import read_qparams

    nodes = [u for u, _ in v.uses()] if consumer else [v.producer()]
    want = "QuantizeLinear" if consumer else "DequantizeLinear"
    for n in nodes:
        if n is not None and n.op_type == want:
            q = read_qparams(n)
            if q is not None:
                return {
                    "scale": np.asarray(q.scale).tolist(),
                    "zero_point": np.asarray(q.zero_point).tolist(),
                    "dtype": q.dtype,
                }
    return None


def artifact_io(model: ir.Model) -> dict:
    """Inputs and outputs of the artifact's graph."""

    def one(v: ir.Value, consumer: bool) -> dict:
        return {
            "name": v.name,
            "shape": _shape(v),
            "dtype": dtype_name(v.dtype),
            "quant": _io_quant(v, consumer),
        }

    return {
        "inputs": [one(v, True) for v in model.graph.inputs],
        "outputs": [one(v, False) for v in model.graph.outputs],
    }


def name_sources(io: dict, inputs: list[str], outputs: list[str],
                 blobs: dict | None = None) -> dict:
    """``io`` (:func:`artifact_io` or a target's own reading of its file) with each tensor's name
    as the artifact holds it and, where that differs from the source model's (``inputs`` /
    ``outputs``, graph order), ``source_name``. ``blobs``: ``{"inputs"|"outputs": {source name:
    artifact name}}`` for a format that renames (ncnn blob names keep only ``[A-Za-z0-9_.:/-]``)."""
    for role, names in (("inputs", inputs), ("outputs", outputs)):
        renamed = (blobs or {}).get(role) or {}
        for entry, source in zip(io.get(role) or [], names):
            entry["name"] = renamed.get(entry["name"], entry["name"])
            if entry["name"] != source:
                entry["source_name"] = source
    return io


def layer_counts(model: ir.Model, fell_back=(), kept=()) -> dict:
    """Compute layers that run in int8 vs float (read from the QDQ structure), and the layers
    returned to FP32 by the fallback / kept by ``--keep-fp32``."""
    from autoglm_compress.quantization.qdq_read import int8_split

    split = int8_split(model)
    dynamic = {n.name for n in model.graph if n.metadata_props.get("autoglm.role") == "dynamic_int8"}
    flt = [n for n in split.float if n not in dynamic]
    out = {
        "int8": len(split.int8) + sum(
            1 for n in model.graph if n.name in dynamic and n.op_type == "MatMulInteger"),
        "float": len(flt),
        "float_nodes": flt[:50],
        "fell_back": list(fell_back),
        "kept_fp32": list(kept),
    }
    weight_only = [n.name for n in model.graph if n.name in flt and _dq_weight(n)]
    if weight_only:
        out["weight_only_nodes"] = weight_only[:50]  # int8 weights, float compute
    return out


def artifact_layers(artifact, ir_counts: dict) -> dict:
    """The report's ``layers``, counted from the artifact where its target read it back (TFLite:
    operator tensor types; ncnn: int8 conv/FC layers; x86: onnxruntime's optimized graph) — the
    IR's own count kept under ``ir``; otherwise the IR's count, said so."""
    ex = artifact.extra
    if "tflite_ops" in ex:
        t = ex["tflite_ops"]
        got = {"int8": t["int8"], "float": t["float"], "float_nodes": t["float_nodes"],
               "float_mac_share": round(t["float_mac_share"], 4),
               "float_weight_bytes": t["float_weight_bytes"], "counted_from": t["counted_from"]}
    elif "ncnn_int8" in ex:
        n = ex["ncnn_int8"]
        got = {"int8": n["int8"], "float": n["float"], "float_nodes": n["float_layers"],
               "counted_from": "the written .param (conv / FC / LSTM / GRU layers with int8 "
                               "weights; other ncnn layers are float by design)"}
    elif "ort_fusion" in ex:
        o = ex["ort_fusion"]
        got = {"int8": o["int8_compute_nodes"], "float": o["float_compute_nodes"],
               "counted_from": "onnxruntime's optimized graph of the artifact"}
    else:
        return {**ir_counts, "counted_from": "the QDQ IR"}
    ir_part = {k: ir_counts[k] for k in ("int8", "float", "float_nodes") if k in ir_counts}
    return {**ir_counts, **got, "ir": ir_part}


def _dq_weight(node: ir.Node) -> bool:
    from autoglm_compress.ir_ops import is_weighted, weight_input

    if not is_weighted(node) or len(node.inputs) <= weight_input(node):
        return False
    w = node.inputs[weight_input(node)]
    p = w.producer() if w is not None else None
    return p is not None and p.op_type == "DequantizeLinear"

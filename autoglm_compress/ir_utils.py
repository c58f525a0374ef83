"""Small helpers around onnx_ir: serialize, check, save atomically, run in onnxruntime."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

__all__ = [
    "add_initializer",
    "check",
    "dtype_name",
    "fix_input_dims",
    "from_proto",
    "ort_run",
    "ort_session",
    "save_atomic",
    "to_proto",
    "write_bytes_atomic",
]


def to_proto(model: ir.Model) -> onnx.ModelProto:
    return ir.serde.serialize_model(model)


def from_proto(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def add_initializer(graph: ir.Graph, name: str, arr: np.ndarray) -> ir.Value:
    """Register ``arr`` as a new initializer under a unique name derived from ``name``."""
    base, i = name, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    arr = np.asarray(arr)
    v = ir.Value(
        name=name,
        shape=ir.Shape(arr.shape),
        type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)),
        const_value=ir.tensor(arr, name=name),
    )
    graph.register_initializer(v)
    return v


def fix_input_dims(proto: onnx.ModelProto, shapes: dict) -> onnx.ModelProto:
    """Set every symbolic dim of the named graph inputs to ``shapes[name]``; drop the inferred
    intermediate shapes, which a caller re-infers with the fixed dims."""
    for inp in proto.graph.input:
        for d, w in zip(inp.type.tensor_type.shape.dim, shapes.get(inp.name, ())):
            if not d.HasField("dim_value"):
                d.Clear()
                d.dim_value = int(w)
    del proto.graph.value_info[:]
    return proto


def check(model: ir.Model) -> None:
    """The IR check: onnx.checker on the serialized model (with strict shape inference)."""
    onnx.checker.check_model(to_proto(model), full_check=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temp file in the target folder, then rename: no partial file ever. The
    temp file's name carries this pid (``.NAME.autoglm-<pid>-XXXX.tmp``): one a killed process
    left is removed by the next run into that folder (output_set.clean_leftovers)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.autoglm-{os.getpid()}-", suffix=".tmp",
                               dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_atomic(model: ir.Model, path: str | os.PathLike) -> Path:
    return write_bytes_atomic(path, to_proto(model).SerializeToString())


def ort_session(
    model: ir.Model | bytes | str, *, optimized_path: str | None = None, threads: int = 0,
    simulate: bool = False,
):
    """An onnxruntime CPU session. ``simulate``: graph optimizations off, so a QDQ model runs as
    written (DequantizeLinear → float op → QuantizeLinear): the exact integer maths of the QDQ
    graph, the same on every CPU — not this CPU's fused int8 kernels (which saturate int16 pair
    sums on AVX2 without VNNI). What another runtime (TFLite, TensorRT, a VNNI CPU) computes is
    compared against this, never against this host's kernels."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if simulate:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    src = to_proto(model).SerializeToString() if isinstance(model, ir.Model) else model
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def ort_run(sess, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def dtype_name(dtype: ir.DataType | None) -> str | None:
    """The numpy spelling of an IR dtype (``float32``); None when unknown."""
    if dtype is None:
        return None
    try:
        return np.dtype(dtype.numpy()).name
    except Exception:  # noqa: BLE001 - a type numpy has no name for (e.g. float8)
        return dtype.name.lower()

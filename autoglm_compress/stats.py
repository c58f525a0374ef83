"""Model statistics for ``inspect`` and the report: op histogram, parameters, MACs, bytes."""

from __future__ import annotations

import collections
import dataclasses
import math

import onnx_ir as ir

from autoglm_compress.inputs import concrete_inputs, model_inputs
from autoglm_compress.ir_utils import dtype_name

__all__ = ["ModelStats", "model_stats", "format_stats"]


@dataclasses.dataclass
class ModelStats:
    inputs: list[dict]
    outputs: list[dict]
    op_histogram: dict[str, int]
    nodes: int
    params: int
    param_bytes: int
    macs: int
    opset: int
    macs_at: dict | str | None = None  # input shapes MACs were counted at (symbolic inputs)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _numel(shape) -> int | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return math.prod(shape)


def _conv_macs(node: ir.Node) -> int:
    w, y = node.inputs[1], node.outputs[0]
    if w is None or w.shape is None or _numel(y.shape) is None or _numel(w.shape) is None:
        return 0
    per_out = _numel(w.shape) // w.shape[0]  # (Cin/g)·kh·kw
    if node.op_type == "ConvTranspose":
        return (
            _numel(node.inputs[0].shape or ()) * _numel(w.shape[1:]) if node.inputs[0].shape else 0
        )
    return _numel(y.shape) * per_out


def _matmul_macs(node: ir.Node) -> int:
    a, y = node.inputs[0], node.outputs[0]
    if a is None or a.shape is None or _numel(y.shape) is None or not isinstance(a.shape[-1], int):
        return 0
    k = a.shape[-1]
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        k = a.shape[0]
    return _numel(y.shape) * k


_MACS = {
    "Conv": _conv_macs,
    "ConvTranspose": _conv_macs,
    "MatMul": _matmul_macs,
    "Gemm": _matmul_macs,
}


def _all_nodes(graph: ir.Graph):
    yield from ir.traversal.RecursiveGraphIterator(graph)


def _concrete_shapes(model: ir.Model) -> dict[str, tuple[int, ...]] | None:
    try:
        return {s.name: s.shape for s in concrete_inputs(model)}
    except Exception:  # noqa: BLE001 - symbolic dims without a hint: MACs stay per known dims
        return None


def _with_shapes(model: ir.Model, shapes: dict[str, tuple[int, ...]]) -> ir.Model:
    """A copy with the inputs' symbolic dims fixed and shapes re-inferred (for counting MACs)."""
    import onnx

    from autoglm_compress.ir_utils import fix_input_dims, from_proto, to_proto

    proto = fix_input_dims(to_proto(model), shapes)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - keep what is known
        return model
    sized = from_proto(proto)
    if all(_static(v) for n in _all_nodes(sized.graph) if n.op_type in _MACS
           for v in (*n.inputs[:2], *n.outputs[:1]) if v is not None):
        return sized
    # shapes computed at run time (Shape → Gather → Concat → Reshape): fold them as
    # --static-shapes does, on a copy, so that every MatMul / Conv has its dims
    from autoglm_compress.frontend import make_static

    try:
        return make_static(model, shapes)
    except Exception:  # noqa: BLE001 - keep what inference knows
        return sized


def _static(v: ir.Value) -> bool:
    return v.shape is not None and all(isinstance(d, int) for d in v.shape)


def model_stats(model: ir.Model, shapes: dict | None = None) -> ModelStats:
    """Op histogram, parameters, bytes and MACs; MACs of a model with symbolic input dims are
    counted at ``shapes`` (else ``--input-shape`` hints, else batch 1) and ``macs_at`` says so."""
    symbolic = any(not s.static for s in model_inputs(model))
    macs_at, sized = None, model
    if symbolic:
        known = shapes or _concrete_shapes(model)
        macs_at = {k: list(v) for k, v in known.items()} if known else "unknown"
        sized = _with_shapes(model, known) if known else model
    g = model.graph
    hist = collections.Counter(n.op_type for n in _all_nodes(g))
    params = nbytes = 0
    for v in g.initializers.values():
        if v.const_value is not None:
            params += _numel(v.const_value.shape) or 0
            nbytes += v.const_value.nbytes
    for n in _all_nodes(g):
        if n.op_type == "Constant" and n.outputs[0].shape is not None:
            params += _numel(n.outputs[0].shape) or 0
    macs = sum(_MACS[n.op_type](n) for n in _all_nodes(sized.graph) if n.op_type in _MACS)
    ins = [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in model_inputs(model)]
    outs = [
        {
            "name": v.name,
            "shape": [d if isinstance(d, int) else str(d) for d in v.shape]
            if v.shape is not None
            else None,
            "dtype": dtype_name(v.dtype),
        }
        for v in g.outputs
    ]
    return ModelStats(
        ins,
        outs,
        dict(hist.most_common()),
        sum(hist.values()),
        params,
        nbytes,
        macs,
        g.opset_imports.get("", 0),
        macs_at,
    )


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{suffix}{unit}"
        n /= 1000
    return f"{n:.3g}P{unit}"


def format_stats(s: ModelStats, file_bytes: int | None = None) -> str:
    lines = ["inputs:"]
    lines += [f"  {i['name']:<20} {i['dtype']:<8} {i['shape']}" for i in s.inputs]
    lines += ["outputs:"]
    lines += [f"  {o['name']:<20} {o['dtype']:<8} {o['shape']}" for o in s.outputs]
    lines.append(
        f"opset {s.opset}, {s.nodes} nodes, {_human(s.params)} parameters "
        f"({_human(s.param_bytes, 'B')} of weights), {_human(s.macs)} MACs"
        + (
            " (symbolic input dims: give --input-shape to count them)"
            if s.macs_at == "unknown"
            else f" at input shapes {s.macs_at}"
            if s.macs_at
            else ""
        )
        + (f", file {_human(file_bytes, 'B')}" if file_bytes is not None else "")
    )
    lines.append("ops:")
    lines += [f"  {op:<24} {n}" for op, n in s.op_histogram.items()]
    return "\n".join(lines)

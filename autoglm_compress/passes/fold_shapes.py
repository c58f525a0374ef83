"""fold_shapes: fix the inputs' symbolic dims to the data's shapes, then fold the shape arithmetic.

A model exported with dynamic axes (Hugging Face BERT/MiniLM through ``torch.onnx.export`` with
``dynamic_axes`` or the dynamo exporter's ``dynamic_shapes``) computes its Reshape targets, position
ids and attention-mask broadcasts at run time: Shape → Gather/Slice → Unsqueeze → Concat → Reshape,
Range → Expand → GatherND, ConstantOfShape, Equal/Where … The arm formats (TFLite, ncnn) need those
as constants. Once the input shapes are concrete, every such node is a constant:

  before  x[batch, seq] → Shape → Gather(0) → Unsqueeze ┐
                                 Gather(1) → Unsqueeze ┴ Concat(…, 4, 16) → Reshape(h, ·)
  after   x[1, 16] ……………………………………………………………………… Reshape(h, [1, 16, 4, 16] initializer)

Steps: (1) the graph inputs' symbolic dims take the data's shapes (metadata ``autoglm.data_shapes``,
written by the run from the verification/calibration data; else ``--input-shape``), shapes are
re-inferred; (2) onnxscript's constant folder (``fold_constants`` with per-node shape inference:
Shape of a static tensor, Expand/Reshape to the same shape, Cast to the same type become constants or
identities); (3) what the folder leaves that the arm formats cannot express: an Expand whose only
readers broadcast anyway is dropped, any other Expand becomes ``x + zeros`` (``x or false`` for bool)
with the smallest zeros that give the same broadcast; a GatherND with constant indices becomes a
Reshape (the indices walk the data in order) or Reshape + Gather; (4) unused nodes removed.

What stays dynamic (a NonZero's data-dependent size, a dim no data fixed) is found by
:func:`dynamic_refusal`: the first node whose shape input is still computed at run time, with why.
The x86 target keeps dynamic axes: only the arm formats list this pass in ``prepare_passes``.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult
from onnx_ir.passes import common as ir_common

from autoglm_compress.ir_ops import const_array
from autoglm_compress.passes.base import CompressPass, PassConfig, register

__all__ = ["DATA_SHAPES", "FoldShapesPass", "dynamic_refusal", "fix_input_shapes"]

logger = logging.getLogger(__name__)

DATA_SHAPES = "autoglm.data_shapes"  # metadata key: {input: concrete shape} of the run's data

# Inputs that an op reads as a shape, axes, sizes or counts (by op: input indices). A target lowers
# these only when they are constants.
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Tile": (1,), "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4), "Squeeze": (1,), "Unsqueeze": (1,), "Resize": (2, 3),
    "Upsample": (1,), "Pad": (1, 3), "TopK": (1,), "OneHot": (1,), "Split": (1,), "Trilu": (1,),
    "CumSum": (1,), "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,),
    "ReduceProd": (1,), "ReduceL2": (1,), "ReduceL1": (1,), "ReduceSumSquare": (1,),
    "ReduceLogSumExp": (1,), "CenterCropPad": (1,),
}  # fmt: skip
# Ops whose output size depends on the values they read, not only on shapes.
DATA_DEPENDENT = frozenset({"NonZero", "Unique", "Compress", "NonMaxSuppression", "StringSplit"})
# Elementwise ops that broadcast their inputs (ONNX multidirectional broadcasting).
_BROADCASTING = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "And", "Or", "Xor", "Equal",
    "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Where", "Mod", "BitShift", "PRelu",
})  # fmt: skip
# Ops of shape arithmetic: a non-constant shape is followed back through them to its cause.
_SHAPE_MATH = frozenset({
    "Shape", "Size", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Range", "Equal",
    "Where", "Expand", "ConstantOfShape", "Reshape", "Add", "Sub", "Mul", "Div", "Max", "Min",
    "Identity", "ReduceProd", "Mod", "Floor", "Ceil", "Neg", "Abs", "Not", "Less", "Greater",
})  # fmt: skip
_MAX_ROUNDS = 4  # fold → rewrite rounds (each round's rewrites may make more constants)
# Constants up to this many elements are folded (onnxscript's default): shape arithmetic and
# small index tables; a larger result only where it is no larger than what it reads.
FOLD_LIMIT = 8192
FOLD_OUT_LIMIT = 512 * 512  # onnxscript's output limit
# Kept as written: quantization nodes carry the scales; random ops are not constants.
_NEVER_FOLD = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                         "RandomNormal", "RandomUniform", "RandomNormalLike",
                         "RandomUniformLike", "Multinomial", "Bernoulli", "Constant",
                         "If", "Loop", "Scan"})


@dataclasses.dataclass(frozen=True)
class FoldShapesConfig(PassConfig):
    """No options: the shapes are the run's data shapes; every fold is exact."""


def _static(v: ir.Value | None) -> tuple[int, ...] | None:
    if v is None or v.shape is None or not all(isinstance(d, int) for d in v.shape):
        return None
    return tuple(int(d) for d in v.shape)


def concrete_shapes(model: ir.Model) -> dict[str, tuple[int, ...]]:
    """The shapes to fix the inputs to: the run's data shapes, else ``--input-shape`` hints."""
    from autoglm_compress.inputs import shape_hints

    text = model.metadata_props.get(DATA_SHAPES)
    data = {k: tuple(v) for k, v in json.loads(text).items()} if text else {}
    return {**shape_hints(model), **data}


def fix_input_shapes(model: ir.Model, shapes: dict[str, tuple[int, ...]]) -> int:
    """Set the graph inputs' symbolic dims from ``shapes`` (only where the rank agrees and every
    fixed dim matches); how many dims were fixed."""
    fixed = 0
    for v in model.graph.inputs:
        want, have = shapes.get(v.name), v.shape
        if want is None or have is None or len(want) != len(have):
            continue
        if any(isinstance(d, int) and d != w for d, w in zip(have, want)):
            continue
        n = sum(1 for d in have if not isinstance(d, int))
        if n:
            v.shape = ir.Shape([int(w) for w in want])
            fixed += n
    return fixed


def _fold(model: ir.Model) -> None:
    from onnxscript.optimizer import fold_constants

    fold_constants(model, onnx_shape_inference=True, input_size_limit=FOLD_LIMIT,
                   output_size_limit=FOLD_OUT_LIMIT)
    _fold_in_ort(model)
    ir.passes.Sequential(
        ir_common.IdentityEliminationPass(), ir_common.RemoveUnusedNodesPass()
    )(model)


def _ort_eval(model: ir.Model, node: ir.Node) -> list[np.ndarray] | None:
    """``node`` run alone in onnxruntime on its constant inputs (None when it cannot run)."""
    from autoglm_compress.ir_utils import ort_session

    ins = [ir.Value(name=f"in{k}", type=v.type, shape=v.shape) for k, v in enumerate(node.inputs)]
    outs = [ir.Value(name=f"out{k}", type=v.type) for k, v in enumerate(node.outputs)]
    attrs = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
    one = ir.Node(node.domain, node.op_type, ins, attributes=attrs, outputs=outs)
    graph = ir.Graph(ins, outs, nodes=[one], opset_imports=dict(model.opset_imports))
    try:
        sess = ort_session(ir.Model(graph, ir_version=model.ir_version))
        return sess.run(None, {f"in{k}": v.const_value.numpy()
                               for k, v in enumerate(node.inputs)})
    except Exception as e:  # noqa: BLE001 - left unfolded; dynamic_refusal names it if it matters
        logger.debug("fold_shapes: %s %s not evaluated in onnxruntime: %s", node.op_type,
                     node.name, e)
        return None


def _foldable(node: ir.Node) -> bool:
    """Every input a constant, the outputs static, at most ``FOLD_OUT_LIMIT`` elements and no
    larger than the largest input unless under ``FOLD_LIMIT`` (folding never grows the model)."""
    if (node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLD or not node.inputs
            or any(v is None or v.const_value is None or v.is_graph_input() for v in node.inputs)
            or any(v.is_graph_output() or _static(v) is None for v in node.outputs)):
        return False
    biggest = max(v.const_value.size for v in node.inputs)
    out = sum(int(np.prod(_static(v))) for v in node.outputs)
    return out <= FOLD_OUT_LIMIT and (out <= FOLD_LIMIT or out <= biggest)


def _fold_in_ort(model: ir.Model) -> int:
    """Constant nodes that onnxscript left, evaluated in onnxruntime; how many. onnxscript skips
    inputs over its size limit (a [512, 384] position table read at constant ids 0…S−1) and its
    reference evaluator fails on some (onnx's GatherElements on a [1, 128] table)."""
    done = 0
    for node in list(model.graph):
        if not _foldable(node):
            continue
        got = _ort_eval(model, node)
        if got is None:
            continue
        for y, arr in zip(node.outputs, got):
            c = _const(model.graph, y.name or node.op_type, np.asarray(arr))
            y.replace_all_uses_with(c)
        model.graph.remove(node, safe=True)
        done += 1
    return done


def _const(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """A new initializer named after ``name`` (unique in the graph)."""
    taken = {v.name for v in graph.initializers.values()}
    base, i = f"{name}_fold", 0
    while f"{base}{i}" in taken:
        i += 1
    v = ir.Value(name=f"{base}{i}", const_value=ir.tensor(array), shape=ir.Shape(array.shape),
                 type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(v)
    return v


def _replace(graph: ir.Graph, node: ir.Node, new_nodes: list[ir.Node]) -> None:
    """``new_nodes`` (the last one's output replaces ``node``'s, keeping its name) in its place."""
    ir.convenience.replace_nodes_and_values(
        graph, node, [node], new_nodes, [node.outputs[0]], [new_nodes[-1].outputs[0]]
    )


def _readers_broadcast(y: ir.Value, x_shape: tuple[int, ...]) -> bool:
    """Every reader of ``y`` is a broadcasting elementwise op whose output keeps its shape when it
    reads ``x`` (shape ``x_shape``) in ``y``'s place."""
    if y.is_graph_output() or not y.uses():
        return False
    for use in y.uses():
        reader = use.node
        out = _static(reader.outputs[0])
        if reader.op_type not in _BROADCASTING or reader.domain not in ("", "ai.onnx") or not out:
            return False
        shapes = []
        for i, v in enumerate(reader.inputs):
            s = x_shape if v is y else _static(v)
            if s is None:
                return False
            shapes.append(s)
        if reader.op_type == "PRelu" and use.idx != 1:
            return False
        try:
            if tuple(np.broadcast_shapes(*shapes)) != out:
                return False
        except ValueError:
            return False
    return True


def _rewrite_expand(graph: ir.Graph, node: ir.Node) -> str | None:
    """A static Expand: dropped when its readers broadcast anyway, else ``x + zeros``."""
    x, y = node.inputs[0], node.outputs[0]
    xs, target = _static(x), const_array(node.inputs[1])
    ys = _static(y)
    if xs is None or target is None or ys is None or x.dtype is None:
        return None
    if xs == ys and not y.is_graph_output():
        y.replace_all_uses_with(x)
        graph.remove(node, safe=True)
        return "expand_removed"
    if _readers_broadcast(y, xs):
        for use in list(y.uses()):
            use.node.replace_input_with(use.idx, x)
        graph.remove(node, safe=True)
        return "expand_removed"
    # zeros with the target's size on the axes x broadcasts, 1 elsewhere: x ⊕ zeros == Expand
    xr = (1,) * (len(ys) - len(xs)) + xs
    zshape = tuple(t if d == 1 and t != 1 else 1 for d, t in zip(xr, ys))
    dtype = x.dtype.numpy()
    op = "Or" if dtype == np.bool_ else "Add"
    zeros = _const(graph, y.name or "expand", np.zeros(zshape, dtype))
    _replace(graph, node, [ir.node(op, [x, zeros], name=f"{node.name}_broadcast")])
    return "expand_broadcast"


def _rewrite_gathernd(graph: ir.Graph, node: ir.Node) -> str | None:
    """GatherND(data, constant indices), batch_dims 0 → Reshape (indices in order) or
    Reshape + Gather on the flattened leading dims."""
    data, idx = node.inputs[0], const_array(node.inputs[1])
    ds, ys = _static(data), _static(node.outputs[0])
    if ds is None or ys is None or idx is None or node.attributes.get_int("batch_dims", 0):
        return None
    k, out_lead = idx.shape[-1], idx.shape[:-1]
    lead, rest = ds[:k], ds[k:]
    if k == 0 or tuple(out_lead) + rest != ys:
        return None
    idx = idx.reshape(-1, k).astype(np.int64)
    idx = np.where(idx < 0, idx + np.asarray(lead), idx)
    if np.any(idx < 0) or np.any(idx >= np.asarray(lead)):
        return None
    flat = np.ravel_multi_index(tuple(idx.T), lead)
    n = int(np.prod(lead))
    if np.array_equal(flat, np.arange(n)):  # every row once, in order: only a reshape
        shape = _const(graph, f"{node.name}_shape", np.asarray(ys, np.int64))
        _replace(graph, node, [ir.node("Reshape", [data, shape], name=f"{node.name}_reshape")])
        return "gathernd_reshaped"
    head = _const(graph, f"{node.name}_rows", np.asarray((n, *rest), np.int64))
    rows = ir.node("Reshape", [data, head], name=f"{node.name}_rows")
    index = _const(graph, f"{node.name}_index", flat.reshape(out_lead))
    gather = ir.node("Gather", [rows.outputs[0], index], attributes={"axis": 0},
                     name=f"{node.name}_gather")
    _replace(graph, node, [rows, gather])
    return "gathernd_gathered"


_REWRITES = {"Expand": _rewrite_expand, "GatherND": _rewrite_gathernd}


def _rewrite(model: ir.Model, stats: dict) -> int:
    done = 0
    for node in list(model.graph):
        fn = _REWRITES.get(node.op_type)
        if fn is None or node.domain not in ("", "ai.onnx"):
            continue
        key = fn(model.graph, node)
        if key:
            stats[key] = stats.get(key, 0) + 1
            done += 1
    return done


@register
class FoldShapesPass(CompressPass):
    """Inputs' symbolic dims fixed to the data's shapes, then shape arithmetic folded."""

    name = "fold_shapes"
    config_class = FoldShapesConfig
    changes_shapes = True  # the pipeline re-infers every shape from the fixed inputs

    def call(self, model: ir.Model) -> PassResult:
        from autoglm_compress.pipeline import infer_shapes

        before = sum(1 for _ in model.graph)
        fixed = fix_input_shapes(model, concrete_shapes(model))
        if fixed:
            infer_shapes(model)
        counts: dict[str, int] = {}
        for _ in range(_MAX_ROUNDS):
            n0 = sum(1 for _ in model.graph)
            _fold(model)
            changed = _rewrite(model, counts)
            if not changed and sum(1 for _ in model.graph) == n0:
                break
            infer_shapes(model)
        after = sum(1 for _ in model.graph)
        left = dynamic_refusal(model)
        self.stats.update(dims_fixed=fixed, nodes_before=before, nodes_after=after,
                          folded=before - after, **counts,
                          dynamic_left=f"{left[0].name} ({left[0].op_type})" if left else None)
        logger.info("fold_shapes: %d dims fixed, %d → %d nodes", fixed, before, after)
        return PassResult(model, modified=bool(fixed) or before != after or bool(counts))


# -- what stays dynamic ---------------------------------------------------------------------------

def _symbolic_dims(v: ir.Value) -> list[str]:
    return [f"{i} ({d})" for i, d in enumerate(v.shape or ()) if not isinstance(d, int)]


def _why_shape(v: ir.Value, seen: set) -> str:
    """Why ``v``'s shape is not known before run time."""
    if v.shape is None:
        what = f"{v.name!r} has no inferred shape"
    else:
        what = f"{v.name!r} has dims {', '.join(_symbolic_dims(v))} unknown"
    p = v.producer()
    if p is None:
        return (f"graph input {what}: give calibration/verification data of that shape, "
                "--input-shape or --static-shapes")
    if id(p) in seen:
        return what
    seen.add(id(p))
    if p.op_type in DATA_DEPENDENT:
        return f"{p.op_type} {p.name!r} makes a data-dependent shape (its size depends on values)"
    for i in SHAPE_INPUTS.get(p.op_type, ()):
        if i < len(p.inputs) and p.inputs[i] is not None and p.inputs[i].const_value is None:
            return f"{what}: {_why_value(p.inputs[i], seen)}"
    for x in p.inputs:
        if x is not None and _static(x) is None:
            return _why_shape(x, seen)
    return f"{what}: {p.op_type} {p.name!r} gives an output whose shape is not inferred"


def _why_value(v: ir.Value, seen: set) -> str:
    """Why the value ``v`` (read as a shape) is not a constant."""
    p = v.producer()
    if p is None:
        return f"it is the graph input {v.name!r} (a run-time value)"
    if id(p) in seen:
        return f"it is computed by {p.op_type} {p.name!r}"
    seen.add(id(p))
    if p.op_type in ("Shape", "Size"):
        return f"it is the shape of {_why_shape(p.inputs[0], seen)}"
    if p.op_type in DATA_DEPENDENT:
        return f"it comes from {p.op_type} {p.name!r} (a data-dependent result)"
    dyn = [x for x in p.inputs if x is not None and x.const_value is None]
    if not dyn:
        return f"{p.op_type} {p.name!r} was not folded (its inputs are constants)"
    x = dyn[0]
    if x.producer() is None or x.producer().op_type not in _SHAPE_MATH:
        src = "the graph input" if x.producer() is None else \
            f"{x.producer().op_type} {x.producer().name!r}"
        return f"it is computed from the values of {x.name!r} ({src}), known only at run time"
    return _why_value(x, seen)


def dynamic_refusal(model: ir.Model) -> tuple[ir.Node, str] | None:
    """The first node (graph order) whose shape still depends on run time, and why: a data-
    dependent op, a Shape/Size of a tensor with unknown dims, or an op whose shape input (Reshape's
    shape, Expand's, Range's bounds …) is not a constant. None when everything is static."""
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in DATA_DEPENDENT:
            return node, (f"its output's size depends on the values of {node.inputs[0].name!r} "
                          "(a data-dependent shape)")
        if node.op_type in ("Shape", "Size") and node.outputs[0].const_value is None:
            return node, f"input 0 is not static: {_why_shape(node.inputs[0], set())}"
        for i in SHAPE_INPUTS.get(node.op_type, ()):
            v = node.inputs[i] if i < len(node.inputs) else None
            if v is not None and v.const_value is None:
                return node, (f"input {i} ({v.name!r}) is not a constant: "
                              f"{_why_value(v, set())}")
    return None

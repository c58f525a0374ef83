"""Stats-only calibration in onnxruntime: the FP32 model, augmented so that its outputs are the
statistics (or the tensors) the calibration observers need.

The observed tensors are exactly those the torch executor's calibration hook sees: the float graph
inputs and the float outputs of every non-Constant node. Two augmentations:

* ``reduce`` (minmax): per tensor ``x`` the graph computes ``lo = ReduceMin(x)``, ``hi =
  ReduceMax(x)`` over all axes — for the inputs of Conv/Gemm/MatMul over all axes but the channel
  ``c`` instead (``min_c``, ``max_c``, plus ``mean_c = ReduceMean``), whence ``lo = min min_c`` and
  ``absmax_c = max(|min_c|, |max_c|)``; the output of a reshape, Relu or constant Clip of an
  observed tensor needs no node (``clip([lo, hi], a, b)`` of its source is exact). Only those small
  results leave the session, so memory is one inference's activations, whatever the number of
  tensors or samples, and the reductions run in onnxruntime's threaded kernels.
  ``min(lo_s)``/``max(hi_s)`` over samples is the running min/max; the mean of per-sample channel
  means is the mean over all samples (every sample has the same number of values per channel).
  onnxruntime's ReduceMin/ReduceMax may skip NaN, a mean does not: NaN is caught where it reaches
  a channel mean or a graph output (probed with ``ReduceMean``) — NaN propagates to those.
* ``stream`` (histogram methods, and ``auto``'s histogram tensors), on top of ``reduce``: each
  histogram tensor's values leave the session *drawn* — at most 64 Ki a sample, picked in the
  graph by :mod:`autoglm_compress.calibration.subsample` (seeded, documented error bound), a
  smaller tensor whole — with the sample's exact min/max appended, and go to the observers in
  byte-bounded chunks (:mod:`autoglm_compress.quantization.collect`). Streaming every tensor whole
  held 400 MB a sample and was 80 % of an INT8 run on a 256² image enhancer (bench_calib_cost).
* ``tensors`` (per-channel observers only): every observed tensor is a graph output, whole.

A model onnxruntime cannot load (unknown dtypes, a proto over 2 GB, an op it lacks) raises
:class:`OrtStatsUnavailable`; the caller then calibrates in the executor. ``tests/test_ort_stats.py``
checks both augmentations against the executor's statistics.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from autoglm_compress.calibration import subsample
from autoglm_compress.ir_utils import to_proto

__all__ = ["OrtStatsUnavailable", "ReduceRunner", "TensorRunner", "observed_tensors"]

logger = logging.getLogger(__name__)

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)


class OrtStatsUnavailable(Exception):
    """onnxruntime cannot compute the statistics for this model; calibrate in the executor."""


def observed_tensors(model: ir.Model) -> dict[str, int | None]:
    """Float tensors the executor hook would observe -> their rank (None when unknown). Types the
    IR lacks come from ONNX shape inference; a tensor still untyped raises OrtStatsUnavailable."""
    values = [v for v in model.graph.inputs if v.name not in model.graph.initializers]
    values += [v for n in model.graph if n.op_type != "Constant" for v in n.outputs if v.name]
    inferred = _inferred(model) if any(v.dtype is None for v in values) else {}
    out: dict[str, int | None] = {}
    for v in values:
        dtype, rank = v.dtype, None if v.shape is None else len(v.shape)
        if dtype is None and v.name in inferred:
            dtype, rank = inferred[v.name]
        if dtype is None:
            raise OrtStatsUnavailable(f"tensor {v.name!r} has no known dtype")
        if dtype in _FLOATS:
            out[v.name] = rank
    return out


def _inferred(model: ir.Model) -> dict[str, tuple[ir.DataType, int | None]]:
    try:
        proto = onnx.shape_inference.infer_shapes(to_proto(model))
    except Exception:  # noqa: BLE001 - no inference: the untyped tensors decide
        return {}
    out = {}
    for vi in [*proto.graph.value_info, *proto.graph.output, *proto.graph.input]:
        t = vi.type.tensor_type
        if t.elem_type:
            rank = len(t.shape.dim) if t.HasField("shape") else None
            out[vi.name] = (ir.DataType(t.elem_type), rank)
    return out


def _session(proto: onnx.ModelProto, arena: bool = False):
    """A CPU session; ``arena=False`` returns each run's buffers (for sessions whose outputs are
    large tensors), ``True`` keeps onnxruntime's arena: 2.4× faster runs of the reduce graph on
    EfficientNet-Lite1 (54 → 23 ms), holding one inference's activations between runs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = arena
    try:
        return ort.InferenceSession(
            proto.SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
    except Exception as e:
        raise OrtStatsUnavailable(str(e).splitlines()[0] if str(e) else type(e).__name__) from e


class _Builder:
    """Appends reduction nodes (opset-appropriate ``axes``) and graph outputs to a proto."""

    def __init__(self, proto: onnx.ModelProto):
        self.proto, self.g = proto, proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.nodes: list[onnx.NodeProto] = []
        self.n = 0

    def reduce(self, op: str, x: str, axes: list[int] | None) -> str:
        self.n += 1
        out = f"agc_stats/{self.n}/{op}"
        ins, attrs = [x], {"keepdims": 0}
        if axes is not None and self.opset >= 18:
            name = f"agc_stats/{self.n}/axes"
            self.g.initializer.append(
                helper.make_tensor(name, onnx.TensorProto.INT64, [len(axes)], axes)
            )
            ins.append(name)
        elif axes is not None:
            attrs["axes"] = axes
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def finish(self, outputs: list[str]) -> onnx.ModelProto:
        """Each statistics node goes right after the last producer of what it reads: onnxruntime
        runs nodes in this order, so an activation is freed as soon as the model is done with it
        (all reductions appended at the end kept every activation alive: 0.6 GB more on a 640²
        DBNet)."""
        known = {i.name for i in self.g.input} | {t.name for t in self.g.initializer} | {""}
        waiting: dict[str, list[int]] = {}
        missing = []
        for k, n in enumerate(self.nodes):
            need = {i for i in n.input if i not in known}
            missing.append(len(need))
            for i in need:
                waiting.setdefault(i, []).append(k)
        ordered: list[onnx.NodeProto] = []

        def place(node: onnx.NodeProto) -> None:
            ordered.append(node)
            for y in node.output:
                for k in waiting.pop(y, []):
                    missing[k] -= 1
                    if missing[k] == 0:
                        missing[k] = -1  # placed
                        place(self.nodes[k])

        for k, n in enumerate(self.nodes):
            if missing[k] == 0:
                missing[k] = -1
                place(n)
        for node in list(self.g.node):
            place(node)
        ordered += [n for k, n in enumerate(self.nodes) if missing[k] > 0]  # ORT names what
        del self.g.node[:]
        self.g.node.extend(ordered)
        del self.g.output[:]
        self.g.output.extend(onnx.ValueInfoProto(name=o) for o in outputs)
        return self.proto


_SAME_VALUES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"})
_ELEMENTWISE = frozenset({"Relu", "Clip", "Identity"})  # channel i of the output from channel i


def _derivation(node: ir.Node, observed) -> tuple[str, float, float] | None:
    """(source, a, b) when the node's output range is exactly ``clip([lo, hi] of source, a, b)``:
    value-preserving reshapes (a, b = ±inf), Relu (0, inf) and Clip with constant bounds."""
    x = node.inputs[0] if node.inputs else None
    if x is None or x.name not in observed or len(node.outputs) != 1:
        return None
    if node.op_type in _SAME_VALUES:
        return x.name, -np.inf, np.inf
    if node.op_type == "Relu":
        return x.name, 0.0, np.inf
    if node.op_type != "Clip":
        return None
    if len(node.inputs) == 1:  # opset < 11: attributes
        return (
            x.name,
            node.attributes.get_float("min", -np.inf),
            node.attributes.get_float("max", np.inf),
        )
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        v = node.inputs[i] if len(node.inputs) > i else None
        if v is not None and v.const_value is None:
            return None
        bounds.append(default if v is None else float(v.const_value.numpy()))
    return x.name, *bounds


class ReduceRunner:
    """Per-sample min/max (and channel mean/absmax of ``mean_axes``' tensors) from onnxruntime.

    Per tensor, the cheapest exact plan: ``chan`` (a Conv input: ``min_c``, ``max_c``, ``mean_c``;
    ``lo = min min_c``, ``absmax_c = max(|min_c|, |max_c|)``), ``rows`` (a Gemm/MatMul input,
    channels last: the same three from the tensor in numpy, where a last-axis reduction is about
    3× faster than onnxruntime's), ``derive`` (the output
    of a reshape / Relu / constant Clip of an observed tensor: ``clip`` of its range, no node),
    ``chanderive`` (a Conv input made by Relu/Clip of a tensor whose channel min/max are at hand:
    those clipped, and only ``mean_c`` reduced) or
    ``tensor`` (ReduceMin, ReduceMax; for rank ≥ 3 over all axes but 1, then
    the min/max of those vectors: about 25% faster on NCHW tensors). NaN is detected where it reaches a channel mean or a graph
    output (``ReduceMean`` probe there): NaN propagates through arithmetic to those.

    ``run(feed)`` -> {tensor: (lo, hi, no_nan, mean_c | None, absmax_c | None)}; the tensors named
    in ``stream`` also leave the session, subsampled for the histograms
    (:mod:`autoglm_compress.calibration.subsample`: drawn in the graph, exact min/max appended):
    ``streamed`` holds them after each run.
    """

    def __init__(self, model: ir.Model, mean_axes: dict[str, int], stream=()):
        ranks = observed_tensors(model)
        self.stream = [n for n in ranks if n in set(stream)]
        self.streamed: dict[str, np.ndarray] = {}
        producers = {v.name: n for n in model.graph for v in n.outputs}
        outputs = {v.name for v in model.graph.outputs}
        b = _Builder(to_proto(model))
        self.plan: dict[str, tuple] = {}  # name -> (kind, graph outputs read, derivation)
        self.vec: set[str] = set()  # tensors whose per-dim-1 min/max vectors are kept
        for name, rank in ranks.items():
            if name in mean_axes and rank is None:
                raise OrtStatsUnavailable(f"rank of {name!r} unknown")
            node = producers.get(name)
            der = _derivation(node, self.plan) if node is not None else None
            c = mean_axes[name] % rank if name in mean_axes and rank >= 2 else None
            if c is not None and c == rank - 1:
                self.plan[name] = ("rows", [name], None)  # numpy reduces a last axis faster
            elif c == 1 and der and node.op_type in _ELEMENTWISE and der[0] in self.vec:
                self.plan[name] = (
                    "chanderive",
                    [b.reduce("ReduceMean", name, [0, *range(2, rank)])],
                    der,
                )
            elif c is not None:
                axes = [d for d in range(rank) if d != c]
                ops = ("ReduceMin", "ReduceMax", "ReduceMean")
                self.plan[name] = ("chan", [b.reduce(op, name, axes) for op in ops], None)
            elif der is not None and name not in outputs:
                self.plan[name] = ("derive", [], der)
            else:
                ops = ("ReduceMin", "ReduceMax") + (("ReduceMean",) if name in outputs else ())
                axes = None if rank is None or rank < 3 else [d for d in range(rank) if d != 1]
                self.plan[name] = ("tensor", [b.reduce(op, name, axes) for op in ops], None)
                c = 1 if axes else None
            if c == 1 and self.plan[name][0] in ("chan", "chanderive", "tensor"):
                self.vec.add(name)
        self.outputs = [o for _, outs, _ in self.plan.values() for o in outs]
        self.draws = subsample.Draws(model, b.g, self.stream, b.opset)
        b.nodes += self.draws.nodes
        streams = self.draws.outputs
        self.sess = _session(b.finish(self.outputs + streams), arena=not streams)
        self.inputs = {i.name for i in self.sess.get_inputs()}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, tuple]:
        feed = {k: v for k, v in feed.items() if k in self.inputs}
        if self.stream:
            feed.update(self.draws.feed())
        got = self.sess.run(None, feed)
        res, vecs, i = {}, {}, 0
        for name, (kind, outs, der) in self.plan.items():
            vals = got[i : i + len(outs)]
            i += len(outs)
            if kind == "derive":
                (_, a, b), (lo, hi, ok) = der, res[der[0]][:3]
                res[name] = (float(np.clip(lo, a, b)), float(np.clip(hi, a, b)), ok, None, None)
                continue
            if kind == "chanderive":  # clip of the source's channel min/max: exact
                (_, a, b), (mn, mx) = der, vecs[der[0]]
                kind, vals = "chan", [np.clip(mn, a, b), np.clip(mx, a, b), vals[0]]
            if name in self.vec:
                vecs[name] = (vals[0], vals[1])
            res[name] = _summarize(kind, vals)
        self.streamed = self.draws.take(got[len(self.outputs):], res) if self.stream else {}
        return res


def _summarize(kind: str, vals: list[np.ndarray]) -> tuple:
    if kind == "tensor":  # scalars, or per dim-1 vectors (rank ≥ 3: faster in onnxruntime)
        if vals[0].size == 0:
            return np.inf, -np.inf, True, None, None
        ok = len(vals) < 3 or not np.isnan(vals[2]).any()
        return float(vals[0].min()), float(vals[1].max()), ok, None, None
    if kind == "rows":  # the tensor itself, channels last: [rows, C]
        x = vals[0].reshape(-1, vals[0].shape[-1])
        if x.size == 0:
            return np.inf, -np.inf, True, None, None
        vals = [x.min(axis=0), x.max(axis=0), x.mean(axis=0, dtype=np.float64)]
    mn, mx, mean = vals
    if mn.size == 0:  # an empty tensor: nothing observed, like the executor's hook
        return np.inf, -np.inf, True, None, None
    amax = np.maximum(np.abs(mn), np.abs(mx)).astype(np.float32)
    ok = not np.isnan(mean).any()
    return float(mn.min()), float(mx.max()), ok, mean.astype(np.float64), amax


class TensorRunner:
    """Named tensors of one sample as numpy arrays (default: every observed tensor):
    ``run(feed)`` -> {tensor: array}."""

    def __init__(self, model: ir.Model, names: list[str] | None = None):
        self.names = list(observed_tensors(model) if names is None else names)
        b = _Builder(to_proto(model))
        self.sess = _session(b.finish(self.names))
        self.inputs = {i.name for i in self.sess.get_inputs()}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: v for k, v in feed.items() if k in self.inputs}
        return dict(zip(self.names, self.sess.run(self.names, feed)))

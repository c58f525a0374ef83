"""Stats-only calibration in onnxruntime: the FP32 model, augmented so that its outputs are the
statistics (or the tensors) the calibration observers need.

The observed tensors are exactly those the torch executor's calibration hook sees: the float graph
inputs and the float outputs of every non-Constant node. Two augmentations:

* ``reduce`` (minmax): per tensor ``x`` the graph computes ``lo = ReduceMin(x)``, ``hi =
  ReduceMax(x)`` over all axes and a NaN probe ``ReduceMean(x)`` (onnxruntime's ReduceMin /
  ReduceMax may skip NaN; a mean does not), and for the inputs of Conv/Gemm/MatMul the per-channel
  ``mean_c = ReduceMean(x, axes ≠ c)`` and ``absmax_c = ReduceMax(|x|, axes ≠ c)``. Only those
  small results leave the session, so memory is one inference's activations, whatever the number
  of tensors or samples, and the reductions run in onnxruntime's threaded kernels.
  ``min(lo_s)``/``max(hi_s)`` over samples is the running min/max; the mean of per-sample channel
  means is the mean over all samples (every sample has the same number of values per channel).
* ``tensors`` (histogram methods): every observed tensor is a graph output, streamed to the
  observers in byte-bounded chunks by :mod:`autoglm_compress.quantization.collect`.

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


def _session(proto: onnx.ModelProto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = False  # return each run's buffers: memory is one inference's
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

    def abs(self, x: str) -> str:
        self.n += 1
        out = f"agc_stats/{self.n}/Abs"
        self.nodes.append(helper.make_node("Abs", [x], [out], name=out))
        return out

    def finish(self, outputs: list[str]) -> onnx.ModelProto:
        self.g.node.extend(self.nodes)
        del self.g.output[:]
        self.g.output.extend(onnx.ValueInfoProto(name=o) for o in outputs)
        return self.proto


class ReduceRunner:
    """Per-sample min/max (and channel mean/absmax of ``mean_axes``' tensors) from onnxruntime.

    ``run(feed)`` -> {tensor: (lo, hi, no_nan, mean_c | None, absmax_c | None)}.
    """

    def __init__(self, model: ir.Model, mean_axes: dict[str, int]):
        ranks = observed_tensors(model)
        b = _Builder(to_proto(model))
        self.plan: dict[str, list[str]] = {}
        for name, rank in ranks.items():
            outs = [b.reduce("ReduceMin", name, None), b.reduce("ReduceMax", name, None)]
            if name in mean_axes and rank is None:
                raise OrtStatsUnavailable(f"rank of {name!r} unknown")
            if name in mean_axes and rank >= 2:
                c = mean_axes[name] % rank
                axes = [d for d in range(rank) if d != c]
                outs += [
                    b.reduce("ReduceMean", name, axes),
                    b.reduce("ReduceMax", b.abs(name), axes),
                ]
            else:
                outs.append(b.reduce("ReduceMean", name, None))
            self.plan[name] = outs
        self.outputs = [o for outs in self.plan.values() for o in outs]
        self.sess = _session(b.finish(self.outputs))
        self.inputs = {i.name for i in self.sess.get_inputs()}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, tuple]:
        got = self.sess.run(self.outputs, {k: v for k, v in feed.items() if k in self.inputs})
        res, i = {}, 0
        for name, outs in self.plan.items():
            vals = got[i : i + len(outs)]
            i += len(outs)
            lo, hi = float(vals[0]), float(vals[1])
            if len(vals) == 4:
                mean, amax = vals[2].astype(np.float64), vals[3].astype(np.float32)
                finite = not np.isnan(mean).any()
            else:
                mean = amax = None
                finite = not np.isnan(vals[2])
            res[name] = (lo, hi, finite, mean, amax)
        return res


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

"""quantize: insert QuantizeLinear/DequantizeLinear (QDQ) pairs from calibration ranges.

Rewrite, for a compute node y = Op(x, W, b) chosen by the target's scheme:
    x  → Q(x; s_x, z_x) → DQ → Op          activation: s_x, z_x from the calibrated range [lo, hi]
    W  → int8 W_q = clamp(round(W / s_w[c])) → DQ(axis=c)   per-channel symmetric, s_w[c] = max|W_c| / q_max
    b  → int32 b_q = round(b / (s_x · s_w[c])) → DQ          when the scheme asks for int32 bias
    y  → Q → DQ (or after a fused Relu/Clip)                   so the runtime can keep y in int8
Affine quantization: q = clamp(round(x / s) + z, q_min, q_max), x̂ = (q − z) · s. Every tensor gets
one Q/DQ pair shared by all its consumers; tensors joined by a shared-scale op get the union range.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging

import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.ir_ops import bias_input, is_weighted, weight_input
from autoglm_compress.passes.base import CompressPass, PassConfig, field, register
from autoglm_compress.quantization.qdq import QDQWriter, shared_scale_groups
from autoglm_compress.quantization.range_search import search_for
from autoglm_compress.quantization.reconstruct import rounding_for
from autoglm_compress.quantization.saturation import widths_for
from autoglm_compress.quantization.scheme import QuantScheme

__all__ = ["QuantizePass", "QuantizeConfig"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class QuantizeConfig(PassConfig):
    scheme: QuantScheme | None = field(None, help="the target's quantization scheme")
    ranges: dict | None = field(
        None, help="tensor name -> (lo, hi) calibrated range, or a callable(names) returning that"
    )
    keep_fp32: tuple[str, ...] = field((), help="node names or op types (glob) left in float")
    per_tensor: bool = field(False, help="per-tensor weight scales instead of per-channel")
    fake_weights: bool = field(
        False, help="keep float weights behind QuantizeLinear (QAT training form), float biases"
    )
    reconstruct: bool = field(False, help="layer-wise reconstructed weight rounding (GPTQ-style)")
    range_search: bool = field(False, help="clip activation ranges by their consumers' error")
    range_overrides: dict | None = field(
        None, help="tensor -> (lo, hi) replacing the calibrated range (QAT's learned scales)")


def _is_float(v: ir.Value | None) -> bool:
    return v is not None and v.dtype in (ir.DataType.FLOAT, None)


@register
class QuantizePass(CompressPass):
    name = "quantize"
    config_class = QuantizeConfig
    needs = frozenset({"stats", "target"})

    def required(self) -> frozenset[str]:
        return frozenset() if self.config.scheme and self.config.ranges else self.needs

    def _kept(self, node: ir.Node) -> bool:
        pats = self.config.keep_fp32
        return any(
            fnmatch.fnmatchcase(node.name or "", p) or fnmatch.fnmatchcase(node.op_type, p)
            for p in pats
        )

    def call(self, model: ir.Model) -> PassResult:
        cfg = self.config
        scheme = cfg.scheme or self.ctx.target.scheme()
        ranges = cfg.ranges
        if ranges is None:
            stats, symmetric = self.ctx.stats, scheme.activation.symmetric

            def ranges(names):
                return stats.ranges(symmetric=symmetric, names=names)
        if cfg.per_tensor:
            scheme = scheme.with_(weight=dataclasses.replace(scheme.weight, per_channel=False))
        g = model.graph
        targets = self._activation_targets(g, scheme)
        if callable(ranges):  # compute (histogram searches) only for tensors this scheme touches
            ranges = ranges(_needed(g, scheme, targets))
        if cfg.range_search and cfg.ranges is None:
            found = search_for(model, scheme, getattr(self.ctx, "stats", None))
            ranges = {**ranges, **{k: v for k, v in found.items() if k in ranges}}
            self.stats["ranges_searched"] = len(found)
        if cfg.range_overrides:
            ranges = {**ranges, **{k: v for k, v in cfg.range_overrides.items() if k in ranges}}
        ranges, pinned = _fixed_output_ranges(g, scheme, ranges)
        ranges = shared_scale_groups(g, scheme, ranges, targets, pinned)
        stats = getattr(self.ctx, "stats", None) if cfg.ranges is None else None
        widths = widths_for(model, scheme, stats, None if stats is not None else ranges)
        rounded = None
        if cfg.reconstruct and not cfg.fake_weights:
            rounded = rounding_for(model, scheme, stats, widths, cfg.per_tensor)
        writer = QDQWriter(g, scheme, fake_weights=cfg.fake_weights, widths=widths,
                           rounded=rounded)
        for name in sorted(targets, key=list(targets).index):
            value = targets[name]
            if name not in ranges:
                self.count("tensors_without_range")
                continue
            writer.quantize_activation(value, *ranges[name])
        for node in list(g):
            if is_weighted(node) and not self._kept(node):
                writer.quantize_weights(node)
        if scheme.quantize_embeddings:
            for node in [n for n in g if n.op_type == "Gather" and not self._kept(n)]:
                writer.quantize_embedding(node)
        n_init = len(g.initializers)
        ir.passes.common.RemoveUnusedNodesPass()(model)  # the float weights now read by nobody
        self.stats["float_initializers_removed"] = n_init - len(g.initializers)
        self.stats.update(writer.stats)
        self.stats["layers"] = writer.layers
        if widths is not None:
            used = [la for la in writer.layers if "weight_width_rule" in la]
            self.stats["weight_widths"] = {
                "rule": "x86 AVX2 without VNNI: int8 weights unless VPMADDUBSW's int16 pair "
                        "saturation, simulated on held-out samples, changes the layer's output "
                        "more than its 8-bit rounding does; those store the same grid as uint8 "
                        "(U8U8 kernel)",
                "8bit": sum(la["weight_bits"] == 8 for la in used),
                "7bit": sum(la["weight_bits"] == 7 for la in used),
                "uint8_stored": sum(la.get("weight_dtype") == "uint8" for la in used),
            }
        self.count(
            "nodes_kept_fp32", sum(1 for n in g if self._kept(n) and n.op_type in scheme.input_ops)
        )
        logger.info("quantize: %s", {k: v for k, v in self.stats.items() if k != "layers"})
        return PassResult(model, modified=bool(writer.stats.get("qdq_inserted")))

    def _activation_targets(self, g: ir.Graph, scheme: QuantScheme) -> dict[str, ir.Value]:
        """Tensors to quantize, in graph order: float inputs of chosen ops and (fused) outputs."""
        out: dict[str, ir.Value] = {}

        def dead_end(node: ir.Node) -> bool:
            """A weightless op writing a graph output read by nobody runs float (its output gets
            no Q: YOLO's final Concat of boxes and scores), so its inputs need no Q/DQ — a
            Sigmoid score feeding it keeps float resolution instead of 1/256 of its range. (A
            Conv writing into it still quantizes its own output: NEEDS_OUTPUT_Q.) Not for
            input-only schemes (TensorRT), whose Q/DQ placement is about fusions, not outputs."""
            y = node.outputs[0]
            return (bool(scheme.output_ops or scheme.quantize_graph_outputs)
                    and not is_weighted(node) and y.is_graph_output()
                    and not any(True for _ in y.uses()))

        floating, read_through = _float_islands(g, scheme, self._kept)

        def read_quantized(y: ir.Value) -> bool:
            return any(u.op_type in scheme.input_ops and not self._kept(u) and not dead_end(u)
                       for u, _ in y.uses())

        for node in g:
            if (node.op_type not in scheme.input_ops or self._kept(node) or dead_end(node)
                    or node in floating):
                continue
            params = (weight_input(node), bias_input(node)) if is_weighted(node) else ()
            for i, v in enumerate(node.inputs):
                if i in params and v is not None and v.const_value is not None:
                    continue
                if scheme.residual_add_only and node.op_type == "Add" and _from_weighted_op(v):
                    continue
                if _is_float(v) and not _is_const(v):
                    out.setdefault(v.name, v)
            if node.op_type not in scheme.output_ops:
                continue
            # every output of a multi-output op (a TFLite SPLIT writes each part in int8)
            for y0 in node.outputs if node.op_type in _MULTI_OUTPUT else node.outputs[:1]:
                y = _fused_output(y0, scheme)
                # A graph output read by nobody gets no Q/DQ: runtimes keep such a node's output in
                # float anyway (ORT fuses DQ→Gemm into QGemm/MatMulIntegerToFloat with float output).
                # quantize_graph_outputs: a classifier head's output (a weighted op) only; an
                # output that joins several ranges (YOLO's Concat of boxes and scores) stays float.
                if scheme.quantize_graph_outputs:
                    readers = read_quantized(y)
                elif node.op_type not in NEEDS_OUTPUT_Q:
                    readers = read_through(y)
                else:  # its int8 compute needs the Q whoever reads it
                    readers = any(True for _ in y.uses())
                if _is_float(y) and (readers or (
                        scheme.quantize_graph_outputs and y.is_graph_output()
                        and is_weighted(node))):
                    out.setdefault(y.name, y)
        return out


# Ops whose every output is quantized when the scheme lists them as output ops.
_MULTI_OUTPUT = frozenset({"Split"})
# onnxruntime runs these in int8 only with a Q on their output (QLinearConv); a MatMul or Gemm
# without one still does (MatMulIntegerToFloat, QGemm with float output).
NEEDS_OUTPUT_Q = frozenset({"Conv", "ConvTranspose"})
# Readers that only move data: a value they pass on to a quantized op is read quantized.
_PASS_ON = frozenset({"Split", "Slice"})
_COMPUTE = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})  # never left float here


def _float_islands(g: ir.Graph, scheme: QuantScheme, kept):
    """Weightless element-wise ops and pools (Add, Mul, Concat, AveragePool) that run float
    anyway because nothing reads their output quantized — onnxruntime fuses them to QLinearAdd
    & co. only with a Q on the output. Q/DQ on their inputs would only cost resolution: a
    BERT's residual Add feeding LayerNorm (the residual stream's outliers set a coarse step), a
    detector's box decoding.
    Only where graph outputs stay float (x86); nodes come out in reverse graph order, so every
    reader is classified before the op it reads from. Returns (those nodes, ``read_q(value)``:
    whether a quantized op reads the value, directly or through data movement)."""
    if scheme.quantize_graph_outputs or not scheme.output_ops:
        return set(), lambda v: False
    floating: set[ir.Node] = set()
    memo: dict[int, bool] = {}

    def read_q(v: ir.Value) -> bool:
        if id(v) not in memo:
            memo[id(v)] = any(
                (u.op_type in scheme.input_ops and not kept(u) and u not in floating)
                or ((u.op_type in scheme.shared_scale_ops or u.op_type in _PASS_ON)
                    and any(read_q(o) for o in u.outputs))
                for u, _ in v.uses())
        return memo[id(v)]

    for node in reversed(list(g)):
        if (node.op_type in scheme.input_ops and node.op_type in scheme.output_ops
                and node.op_type not in _COMPUTE and not is_weighted(node) and not kept(node)
                and not any(read_q(o) for o in node.outputs)):
            floating.add(node)
    return floating, read_q


def _fixed_output_ranges(g: ir.Graph, scheme: QuantScheme, ranges: dict):
    """Ops whose runtime kernel fixes the output scale/zero point (TFLite LOGISTIC and SOFTMAX:
    1/256, −128): their output range is the one those parameters encode, [(q_min − z)·s,
    (q_max − z)·s], so the writer's qparams come out exactly fixed. Also returns those tensors'
    names: a shared-scale group holding one takes its range (a Pad after a Tanh)."""
    if not scheme.fixed_output:
        return ranges, set()
    from autoglm_compress.calibration.qparams import quant_range

    qmin, qmax = quant_range(scheme.activation)
    out, pinned = dict(ranges), set()
    for node in g:
        fixed = scheme.fixed_output.get(node.op_type)
        if fixed is not None and node.outputs[0].name in out:
            s, z = fixed
            out[node.outputs[0].name] = ((qmin - z) * s, (qmax - z) * s)
            pinned.add(node.outputs[0].name)
    return out, pinned


def _needed(g: ir.Graph, scheme: QuantScheme, targets: dict) -> set[str]:
    names = set(targets)
    for node in g:
        if node.op_type in scheme.shared_scale_ops:
            names.update(v.name for v in (*node.inputs, *node.outputs) if v is not None)
    return names


def _from_weighted_op(v: ir.Value | None) -> bool:
    p = v.producer() if v is not None else None
    return p is not None and is_weighted(p)


def _is_const(v: ir.Value) -> bool:
    if v.const_value is not None:
        return True
    p = v.producer()
    return p is not None and p.op_type == "Constant"


def _fused_output(y: ir.Value, scheme: QuantScheme) -> ir.Value:
    """Follow y through a single fused activation (Conv→Relu→Q quantizes the Relu output)."""
    uses = list(y.uses())
    if len(uses) == 1 and not y.is_graph_output():
        user = uses[0][0] if isinstance(uses[0], tuple) else uses[0].node
        if user.op_type in scheme.fused_activations:
            return user.outputs[0]
    return y

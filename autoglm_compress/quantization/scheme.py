"""Quantization schemes: what a target wants quantized and how (torchao-pt2e style, frozen data).

Generic code observes tensors, turns ranges into qparams under a scheme, and writes QDQ. A target
owns its scheme(s): x86/onnxruntime wants uint8 asymmetric activations (fused either way on AVX2),
TensorRT wants symmetric int8 with zero point 0, TFLite int8 asymmetric activations with shared scales
through pooling/concat/reshape.

A :class:`TensorQuant`'s integer limits are
:func:`autoglm_compress.calibration.qparams.quant_range`; where a weighted op keeps its weight and
which axis is its output channel is :mod:`autoglm_compress.ir_ops`.
"""

from __future__ import annotations

import dataclasses
import logging

__all__ = ["TensorQuant", "QuantScheme"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TensorQuant:
    dtype: str = "int8"  # "int8" | "uint8"
    symmetric: bool = True
    per_channel: bool = False
    narrow_range: bool = False  # [-127, 127] instead of [-128, 127]
    reduce_range: bool = False  # 7-bit range (avoids u8·s8 int16 saturation without VNNI)


@dataclasses.dataclass(frozen=True)
class QuantScheme:
    name: str
    activation: TensorQuant
    weight: TensorQuant
    # Ops whose float activation inputs get QDQ.
    input_ops: frozenset[str]
    # Ops whose output gets QDQ (so the runtime can emit a quantized op with quantized output).
    output_ops: frozenset[str]
    # Elementwise activations a runtime fuses into the preceding op: quantize after them instead.
    fused_activations: frozenset[str] = frozenset({"Relu", "Clip"})
    # Ops whose inputs and output must share one scale/zero point (union of ranges).
    shared_scale_ops: frozenset[str] = frozenset()
    # Write conv/gemm biases as int32 with scale = s_input · s_weight[c].
    bias_int32: bool = True
    # Add: quantize only inputs not produced by a weighted op (TensorRT fuses the residual into the conv).
    residual_add_only: bool = False
    # Quantize graph outputs made by a weighted op (the DQ becomes the output, same name): a
    # full-integer runtime (TFLite) then runs the classifier head in int8 too.
    quantize_graph_outputs: bool = False
    # Ops with a fixed output scale/zero point, e.g. TFLite Softmax (1/256, -128).
    fixed_output: dict = dataclasses.field(default_factory=dict)
    # Embedding tables (Gather of a constant float table of ≥ 1024 values, axis 0): int8 per-row
    # weights with a DequantizeLinear before the Gather — weight-only, its output stays float
    # (onnxruntime's quantizer does the same; a BERT's tables are most of its bytes).
    quantize_embeddings: bool = False
    # x86 AVX2 without VNNI: weights 8-bit per layer unless VPMADDUBSW's int16 pair sums saturate
    # there (then 7-bit), decided by :mod:`autoglm_compress.quantization.saturation`.
    saturation_guard: bool = False

    def with_(self, **kw) -> QuantScheme:
        return dataclasses.replace(self, **kw)

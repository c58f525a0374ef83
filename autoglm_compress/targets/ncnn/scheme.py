"""ncnn's INT8 scheme, as ncnn2table/ncnn2int8 make it: symmetric int8 activations (scale only),
symmetric per-output-channel weights, fp32 biases; only the inputs of Conv / Gemm / MatMul are
quantized — ncnn runs those layers int8 and everything else float. Its own module so that the
target and its pre-flight (which quantizes with placeholder ranges) share it without a circle."""

from __future__ import annotations

__all__ = ["ncnn_scheme"]

_QOPS = frozenset({"Conv", "Gemm", "MatMul"})


def ncnn_scheme():
    from autoglm_compress.quantization.scheme import QuantScheme, TensorQuant

    return QuantScheme(
        name="ncnn-s8s8",
        activation=TensorQuant("int8", symmetric=True, narrow_range=True),
        weight=TensorQuant("int8", symmetric=True, per_channel=True, narrow_range=True),
        input_ops=_QOPS,
        output_ops=frozenset(),
        fused_activations=frozenset(),
        bias_int32=False,
    )

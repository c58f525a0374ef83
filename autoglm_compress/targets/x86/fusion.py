"""What onnxruntime really runs: read its optimized graph and count int8 vs float compute nodes.

A QDQ model is only fast when the CPU EP fuses DQ → Op → Q into QLinear*/QGemm/MatMulInteger* kernels;
a DQ/Q pair it cannot fuse costs time instead of saving it. The report carries these counts.
"""

from __future__ import annotations

import collections
import os
import tempfile

import onnx

__all__ = ["fusion_report", "INT8_OPS", "FLOAT_COMPUTE_OPS"]

INT8_OPS = {
    "QLinearConv",
    "QGemm",
    "QLinearMatMul",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QLinearAdd",
    "QLinearMul",
    "QLinearConcat",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearSigmoid",
    "QLinearSoftmax",
    "QLinearLeakyRelu",
    "QLinearWhere",
    "ConvInteger",
    "MatMulInteger",
    "QAttention",
    "NhwcQLinearConv",
}
FLOAT_COMPUTE_OPS = {
    "Conv",
    "FusedConv",
    "NhwcFusedConv",
    "Gemm",
    "MatMul",
    "FusedMatMul",
    "ConvTranspose",
    "FusedGemm",
}


def fusion_report(model_path: str) -> dict:
    """Op histogram of onnxruntime's optimized graph, with int8/float compute counts."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opt = os.path.join(tmp, "optimized.onnx")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = opt
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
        g = onnx.load(opt, load_external_data=False).graph
    hist = collections.Counter(n.op_type for n in g.node)
    q = sum(v for k, v in hist.items() if k in INT8_OPS)
    f = sum(v for k, v in hist.items() if k in FLOAT_COMPUTE_OPS)
    unfused = hist.get("QuantizeLinear", 0) + hist.get("DequantizeLinear", 0)
    return {
        "int8_compute_nodes": q,
        "float_compute_nodes": f,
        "remaining_qdq_nodes": unfused,
        "optimized_ops": dict(hist.most_common()),
    }

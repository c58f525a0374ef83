"""What a written ``.tflite`` really runs: each operator classified by its tensors' types.

An operator is *int8* when its activation tensors (inputs and outputs without constant data) are
integer-quantized, *float* when any of them is float32/float16; QUANTIZE and DEQUANTIZE convert
between the two (QUANTIZE int8 → int8 is a requantization); ops on index tensors only (int32
shapes) are *other*. MACs are counted per op from the file's shapes for the ops that carry
nearly all of a CNN's: CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV, FULLY_CONNECTED, BATCH_MATMUL,
and a recurrent net's UNIDIRECTIONAL_SEQUENCE_LSTM (4 gates × steps × (input + recurrent) MACs).
The counts are the artifact's, not the IR's: a float op the lowering had to keep shows up here
with its reason (``reasons``: operator index → (ONNX node, why), from the lowering).
"""

from __future__ import annotations

import numpy as np

__all__ = ["census", "op_names", "MAX_FLOAT_MAC_SHARE"]

# More than this share of MACs in float ops makes an INT8 artifact's report warn.
MAX_FLOAT_MAC_SHARE = 0.10

_FLOAT_TYPES = {0, 1}  # FLOAT32, FLOAT16
_QUANT_TYPES = {3, 7, 9}  # UINT8, INT16, INT8
_CONV, _DW, _FC, _TCONV, _BMM, _LSTM = 3, 4, 9, 67, 126, 44


def op_names(s) -> dict[int, str]:
    return {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}


def _macs(code: int, ins, outs, shape) -> int:
    if not outs or outs[0] < 0:
        return 0
    out = int(np.prod(shape(outs[0]))) if shape(outs[0]) else 0
    if code in (_CONV, _DW, _FC) and len(ins) > 1 and ins[1] >= 0:
        w = shape(ins[1])
        if code == _CONV and len(w) == 4:
            return out * w[1] * w[2] * w[3]
        if code == _DW and len(w) == 4:
            return out * w[1] * w[2]
        if code == _FC and len(w) == 2:
            return out * w[1]
    if code == _TCONV and len(ins) > 2:  # inputs: output_shape, weights [O, H, W, I], x
        w, x = shape(ins[1]), shape(ins[2])
        return int(np.prod(x)) * w[0] * w[1] * w[2] if len(w) == 4 and x else 0
    if code == _BMM and ins and ins[0] >= 0 and shape(ins[0]):
        return out * shape(ins[0])[-1]
    if code == _LSTM and len(ins) > 6 and min(ins[2], ins[6]) >= 0:
        w, r = shape(ins[2]), shape(ins[6])  # input_to_forget [cell, in], recurrent [cell, out]
        return out // max(r[1], 1) * 4 * w[0] * (w[1] + r[1]) if len(w) == len(r) == 2 else 0
    return 0


def census(data: bytes, reasons: dict[int, tuple[str, str]] | None = None) -> dict:
    """Op counts of the .tflite ``data``: int8 / float / quantize / requantize / dequantize /
    other, MACs by kind, and the float ops named (TFLite op, ONNX node, reason, MACs)."""
    import ai_edge_litert.schema_py_generated as s

    m = s.ModelT.InitFromPackedBuf(data, 0)
    g = m.subgraphs[0]
    names = op_names(s)
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in m.operatorCodes]

    def is_const(i: int) -> bool:
        b = g.tensors[i].buffer
        return b > 0 and m.buffers[b].data is not None and len(m.buffers[b].data) > 0

    def shape(i: int) -> list[int]:
        sh = g.tensors[i].shape
        return [] if sh is None else [int(d) for d in sh]

    counts = {"int8": 0, "float": 0, "quantize": 0, "requantize": 0, "dequantize": 0, "other": 0}
    macs = {"int8": 0, "float": 0}
    float_ops, float_bytes = [], 0
    for k, o in enumerate(g.operators):
        code = codes[o.opcodeIndex]
        ins = [int(i) for i in (o.inputs if o.inputs is not None else [])]
        outs = [int(i) for i in (o.outputs if o.outputs is not None else [])]
        acts = [i for i in ins + outs if i >= 0 and not is_const(i)]
        types = {g.tensors[i].type for i in acts}
        if code == 114:  # QUANTIZE
            kind = "requantize" if types <= _QUANT_TYPES else "quantize"
        elif code == 6:  # DEQUANTIZE
            kind = "dequantize"
        elif types & _FLOAT_TYPES:
            kind = "float"
        elif types & _QUANT_TYPES:
            kind = "int8"
        else:
            kind = "other"
        counts[kind] += 1
        n_macs = _macs(code, ins, outs, shape)
        if kind in macs:
            macs[kind] += n_macs
        if kind == "float":
            wbytes = sum(len(m.buffers[g.tensors[i].buffer].data) for i in ins
                         if i >= 0 and is_const(i))
            float_bytes += wbytes
            node, why = (reasons or {}).get(k, ("", "layout change of a float graph input/output"))
            float_ops.append({"op": names.get(code, str(code)), "node": node, "reason": why,
                              "macs": n_macs, "weight_bytes": wbytes})
    total = macs["int8"] + macs["float"]
    return {**counts, "total": len(g.operators), "macs": macs,
            "float_mac_share": macs["float"] / total if total else 0.0,
            "float_weight_bytes": float_bytes, "float_ops": float_ops,
            "float_nodes": list(dict.fromkeys(f["node"] or f["op"] for f in float_ops))[:20],
            "counted_from": "the written .tflite (operator tensor types)"}

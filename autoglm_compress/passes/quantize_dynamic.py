"""quantize_dynamic: int8 weights, float activations (``--int8 --weights-only``): no calibration.

Rewrite, per node with a constant float weight (x86 target):
    MatMul(x, W[K, N]) / Gemm(x, W, C)   →  DynamicQuantizeLinear(x) → (x_u8, s_x, z_x)
                                             MatMulInteger(x_u8, W_q[K, N] int8, z_x, 0) → int32
                                             Cast(float) · (s_x · s_w[N]) (+ β·C)
        what onnxruntime's quantize_dynamic writes and fuses into DynamicQuantizeMatMul: the
        activation's scale is taken per inference from the tensor itself, so nothing is calibrated;
    Conv(x, W, b)                        →  Conv(x, DequantizeLinear(W_q, s_w[c]), b)  (size only:
                                             onnxruntime has no dynamic u8·s8 conv; it runs float)
    Gather(table, ids)                   →  Gather(DequantizeLinear(table_q, s[row]), ids)
Weights are symmetric per output channel (column N for MatMul). Width: 8 bits, or on an x86 CPU
without VNNI 7 bits unless no pair of weights can saturate VPMADDUBSW with u8 inputs anywhere in
[0, 255] (:mod:`autoglm_compress.quantization.saturation`'s bound; there is no data to measure on).
Gemm with transA or alpha ≠ 1 is left in float (listed in the record).

``form="weights"`` (the arm target: TFLite's dynamic-range kernels quantize the input themselves)
writes every Conv/Gemm/MatMul weight as DequantizeLinear(int8, per-channel scales) → the float op;
the TFLite emitter turns that into a hybrid op with an int8 weight tensor.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.ir_utils import add_initializer
from autoglm_compress.passes.base import CompressPass, PassConfig, field, register
from autoglm_compress.quantization.qdq import QDQWriter, weight_qparams
from autoglm_compress.quantization.saturation import INT16_MAX, INT16_MIN, pair_bounds
from autoglm_compress.quantization.scheme import QuantScheme, TensorQuant

__all__ = ["QuantizeDynamicPass", "QuantizeDynamicConfig"]

logger = logging.getLogger(__name__)
ROLE = "autoglm.role"


@dataclasses.dataclass(frozen=True)
class QuantizeDynamicConfig(PassConfig):
    cpu: str = field("vnni", help="avx2: 7-bit MatMul weights unless they cannot saturate; vnni: 8")
    keep_fp32: tuple[str, ...] = field((), help="node names or op types (glob) left in float")
    form: str = field("dynamic", help="dynamic: MatMulInteger (x86); weights: DQ(int8 W) → op")


def _tq(bits: int) -> TensorQuant:
    return TensorQuant("int8", symmetric=True, per_channel=True, narrow_range=True,
                       reduce_range=bits == 7)


@register
class QuantizeDynamicPass(CompressPass):
    name = "quantize_dynamic"
    config_class = QuantizeDynamicConfig

    def _kept(self, node: ir.Node) -> bool:
        return any(fnmatch.fnmatchcase(node.name or "", p) or fnmatch.fnmatchcase(node.op_type, p)
                   for p in self.config.keep_fp32)

    def call(self, model: ir.Model) -> PassResult:
        g = model.graph
        self.stats.update(matmuls_dynamic=0, convs_weight_only=0, embeddings_quantized=0,
                          weights_7bit=0, left_float=[])
        scheme = QuantScheme("weights-only", TensorQuant("uint8", symmetric=False), _tq(8),
                             frozenset(), frozenset())
        self._correct_biases(model)
        writer = QDQWriter(g, scheme)
        for node in list(g):
            if self._kept(node):
                continue
            w = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] else None
            weights_form = self.config.form == "weights"
            if node.op_type in ("MatMul", "Gemm") and w is not None and weights_form:
                if w.numpy().dtype == np.float32 and w.numpy().ndim == 2:
                    writer.scheme = scheme.with_(weight=_tq(8))
                    writer.quantize_weights(node)
                    self.stats["matmuls_weight_only"] = self.stats.get("matmuls_weight_only", 0) + 1
            elif node.op_type in ("MatMul", "Gemm") and w is not None:
                why = self._matmul(g, node, w.numpy())
                if why:
                    self.stats["left_float"].append({"node": node.name, "why": why})
            elif node.op_type == "Conv" and w is not None and w.numpy().dtype == np.float32:
                writer.scheme = scheme.with_(weight=_tq(8))
                writer.quantize_weights(node)
                self.stats["convs_weight_only"] += 1
            elif node.op_type == "Gather" and not weights_form and writer.quantize_embedding(node):
                self.stats["embeddings_quantized"] += 1
        ir.passes.common.RemoveUnusedNodesPass()(model)  # the float weights read by nobody
        logger.info("quantize_dynamic: %s", self.stats)
        changed = self.stats["matmuls_dynamic"] + self.stats["convs_weight_only"] + self.stats[
            "embeddings_quantized"] + self.stats.get("matmuls_weight_only", 0)
        return PassResult(model, modified=bool(changed))

    def _correct_biases(self, model: ir.Model) -> None:
        """With calibration data at hand (``--calib`` given): the mean output shift of the int8
        weights removed from the biases, as the static path does (the weights' own widths)."""
        means = getattr(getattr(self.ctx, "stats", None), "channel_means", None)
        if not means:
            return
        from autoglm_compress.quantization.bias_correction import correct_biases

        widths = {}
        if self.config.form == "dynamic":
            for n in model.graph:
                w = n.inputs[1].const_value if len(n.inputs) > 1 and n.inputs[1] else None
                if n.op_type in ("MatMul", "Gemm") and w is not None and w.numpy().ndim == 2:
                    wkn = w.numpy().T if (n.op_type == "Gemm" and n.attributes.get_int(
                        "transB", 0)) else w.numpy()
                    widths[n.name] = {"bits": self._bits(n, wkn.astype(np.float32))}
        skip = {n.name for n in model.graph if self._kept(n)}
        res = correct_biases(model, means, _tq(8), skip, widths)
        self.stats["biases_corrected"] = res["biases_corrected"]

    def _bits(self, node: ir.Node, wkn: np.ndarray) -> int:
        """8, or 7 on AVX2 where some weight pair could saturate for u8 inputs in [0, 255]."""
        if self.config.cpu != "avx2":
            return 8
        wq = np.clip(np.round(wkn / weight_qparams(wkn, 1, _tq(8))[0]), -127, 127)
        k = wkn.shape[0]  # [K, N]: the pairs run along K, one row of them per output column
        hi, lo = pair_bounds(wq.T, np.zeros(k), np.full(k, 255))
        return 8 if hi.max() <= INT16_MAX and lo.min() >= INT16_MIN else 7

    def _matmul(self, g: ir.Graph, node: ir.Node, w: np.ndarray) -> str | None:
        a = node.attributes
        if w.dtype != np.float32 or w.ndim != 2:
            return "weight is not a 2-D float constant"
        if node.op_type == "Gemm":
            if a.get_int("transA", 0) or a.get_float("alpha", 1.0) != 1.0:
                return "Gemm with transA or alpha != 1"
            if a.get_int("transB", 0):
                w = w.T
        x = node.inputs[0]
        if x is None or x.dtype not in (ir.DataType.FLOAT, None):
            return "input is not float"
        bits = self._bits(node, w)
        tq = _tq(bits)
        s_w, _ = weight_qparams(w, 1, tq)  # per column N
        lo, hi = (-63, 63) if bits == 7 else (-127, 127)
        wq = np.clip(np.round(w / s_w[None, :]), lo, hi).astype(np.int8)
        base = node.name or "matmul"
        wq_v = add_initializer(g, f"{node.inputs[1].name}_quantized", wq)
        sw_v = add_initializer(g, f"{node.inputs[1].name}_scale", s_w.astype(np.float32))
        zw_v = add_initializer(g, f"{node.inputs[1].name}_zp", np.zeros(w.shape[1], np.int8))
        dq = ir.node("DynamicQuantizeLinear", [x], num_outputs=3, name=f"{base}_dql")
        xq, xs, xz = dq.outputs
        xq.name, xs.name, xz.name = f"{base}_x_u8", f"{base}_x_scale", f"{base}_x_zp"
        xq.dtype, xs.dtype, xz.dtype = ir.DataType.UINT8, ir.DataType.FLOAT, ir.DataType.UINT8
        xq.shape, xs.shape, xz.shape = x.shape, ir.Shape([]), ir.Shape([])
        mmi = ir.node("MatMulInteger", [xq, wq_v, xz, zw_v], name=f"{base}_mmi")
        mmi.outputs[0].name, mmi.outputs[0].dtype = f"{base}_acc", ir.DataType.INT32
        cast = ir.node("Cast", [mmi.outputs[0]], attributes={"to": ir.DataType.FLOAT},
                       name=f"{base}_cast")
        cast.outputs[0].name, cast.outputs[0].dtype = f"{base}_accf", ir.DataType.FLOAT
        sc = ir.node("Mul", [xs, sw_v], name=f"{base}_scales")
        sc.outputs[0].name, sc.outputs[0].dtype = f"{base}_scale_prod", ir.DataType.FLOAT
        y = ir.node("Mul", [cast.outputs[0], sc.outputs[0]], name=f"{base}_rescale")
        new = [dq, mmi, cast, sc, y]
        out = y.outputs[0]
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            c = node.inputs[2]
            beta = a.get_float("beta", 1.0)
            if beta != 1.0:
                cv = c.const_value
                if cv is None:
                    return "Gemm with a non-constant C and beta != 1"
                c = add_initializer(g, f"{c.name}_beta", (cv.numpy() * beta).astype(np.float32))
            add = ir.node("Add", [out, c], name=f"{base}_bias")
            new.append(add)
            out = add.outputs[0]
        for n in new:  # read by artifact_info.layer_counts: one int8 layer, not 5 float nodes
            n.metadata_props[ROLE] = "dynamic_int8"
        g.insert_before(node, new)
        old = node.outputs[0]
        out.shape, out.dtype = old.shape, ir.DataType.FLOAT
        name = old.name
        old.replace_all_uses_with(out, replace_graph_outputs=True)
        g.remove(node, safe=True)
        out.name = name
        self.stats["matmuls_dynamic"] += 1
        self.stats["weights_7bit"] += bits == 7
        return None

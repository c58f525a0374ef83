"""fp16: FP16 weights and compute, graph inputs/outputs kept FP32, sensitive ops kept FP32.

Rewrite: every node not on the block list computes in float16 — its float32 initializers and Constant
values are stored as float16, its float outputs become float16, Cast(to=FLOAT) inside the fp16
region becomes Cast(to=FLOAT16). Where a float tensor crosses between precisions (blocked op, graph
input/output with ``keep_io_types``) a Cast is inserted, one per tensor and direction.

Range: a constant that FP16 cannot hold is never clamped silently. When a finite ``|x| > 65504``, or
the FP16 copy's error ``|fp16(a) - a| / |a|`` exceeds 1e-2 (values in or below FP16's subnormal range,
5.96e-8 … 6.1e-5, flushed or coarsened), every consumer of that tensor stays FP32 (so does the
tensor), listed in ``stats["kept_fp32_for_range"]`` with the reason. BatchNormalization also stays
FP32 when its statistics lose more than 1e-2 in FP16 relative to ``var + eps`` (variance) or
``sqrt(var + eps)`` (mean); when ``|mean| + 4 sqrt(var)`` exceeds 65504 its input activations do not
fit FP16, so the node producing them stays FP32 too. Exceptions, saturated to ±65504 instead
(``values_saturated``): bounds and fill values (consumers Clip/Min/Max/Where, ConstantOfShape) and
sentinels ``|x| >= 1e30`` (``finfo.min`` masks), where ±65504 keeps the meaning and a Cast to
FP16 downstream would make ±inf. Small harmless values under 2⁻²⁴ become ±2⁻²⁴ (``values_clamped``).
Inputs that the ONNX spec types as float32 whatever the data type (Resize roi/scales, Upsample
scales) stay float32. Block list, after onnxconverter-common's: ops without reliable fp16 kernels
or with range/accumulation hazards (Range, CumSum, TopK, NonMaxSuppression, RoiAlign, Upsample,
RandomUniformLike), plus reductions that sum many terms (ReduceSum,
ReduceProd, ReduceL2) whose fp16 accumulation overflows on large tensors.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassResult

from autoglm_compress.ir_ops import const_array
from autoglm_compress.passes.base import CompressPass, PassConfig, field, register

__all__ = ["DEFAULT_OP_BLOCK_LIST", "ConvertFloat16Pass", "Float16Config"]

logger = logging.getLogger(__name__)

DEFAULT_OP_BLOCK_LIST = (
    "Range",
    "CumSum",
    "TopK",
    "NonMaxSuppression",
    "RoiAlign",
    "Upsample",
    "RandomUniformLike",
    "RandomNormalLike",
    "ReduceSum",
    "ReduceProd",
    "ReduceL2",
)
_FLOAT32_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}
_F32, _F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16
_MAX, _TINY = 65504.0, 2.0**-24
_REL_TOL, _SENTINEL, _BN_SIGMAS = 1e-2, 1e30, 4.0
_BOUND_OPS = ("Clip", "Min", "Max", "Where")


@dataclasses.dataclass(frozen=True)
class Float16Config(PassConfig):
    keep_io_types: bool = field(
        True, help="graph inputs/outputs stay float32 (Casts at the boundary)"
    )
    op_block_list: tuple[str, ...] = field(DEFAULT_OP_BLOCK_LIST, help="op types kept in float32")
    node_block_list: tuple[str, ...] = field((), help="node names kept in float32")


@register
class ConvertFloat16Pass(CompressPass):
    name = "fp16"
    config_class = Float16Config

    def call(self, model: ir.Model) -> PassResult:
        g = model.graph
        self.bytes_before = sum(
            v.const_value.nbytes for v in g.initializers.values() if v.const_value is not None
        )
        self._casts: dict[tuple[str, int], ir.Value] = {}
        fp16_nodes = {id(n) for n in g if self._is_fp16(n)}
        self._keep_out_of_range(g, fp16_nodes)
        self._convert_constants(g, fp16_nodes)
        for node in list(g):
            self._fix_inputs(g, node, id(node) in fp16_nodes)
            if id(node) in fp16_nodes:
                self._retype_node(node)
        self._fix_graph_io(g)
        after = sum(
            v.const_value.nbytes for v in g.initializers.values() if v.const_value is not None
        )
        self.stats.update(
            nodes_fp16=len(fp16_nodes),
            nodes_kept_fp32=sum(1 for _ in g)
            - len(fp16_nodes)
            - self.stats.get("casts_inserted", 0),
            bytes_before=self.bytes_before,
            bytes_after=after,
        )
        logger.info("fp16: %s", self.stats)
        return PassResult(model, modified=bool(fp16_nodes))

    def _is_fp16(self, node: ir.Node) -> bool:
        if node.op_type in self.config.op_block_list or node.name in self.config.node_block_list:
            return False
        if node.op_type == "Constant":
            return False  # decided by its consumers in _convert_constants
        vals = [v for v in (*node.inputs, *node.outputs) if v is not None]
        return any(v.dtype == _F32 for v in vals)

    def _keep_out_of_range(self, g: ir.Graph, fp16_nodes: set[int]) -> None:
        """Consumers of constants FP16 cannot hold (and BNs whose statistics it cannot) stay FP32."""
        for v in self._float_constants(g):
            users = [
                u.node
                for u in v.uses()
                if id(u.node) in fp16_nodes and u.idx not in _FLOAT32_INPUTS.get(u.node.op_type, ())
            ]
            if not users or all(n.op_type in _BOUND_OPS for n in users):
                continue
            why = _misfit(const_array(v))
            for n in users if why else ():
                self._keep(n, fp16_nodes, f"{v.name}: {why}")
        for n in list(g):
            if n.op_type == "BatchNormalization" and len(n.inputs) == 5:
                self._check_bn(n, fp16_nodes)

    def _check_bn(self, n: ir.Node, fp16_nodes: set[int]) -> None:
        mean, var = const_array(n.inputs[3]), const_array(n.inputs[4])
        if mean is None or var is None:
            return
        eps = n.attributes.get_float("epsilon", 1e-5)
        var = np.maximum(var.astype(np.float64), 0.0)
        std = np.sqrt(var + eps)
        bound = float((np.abs(mean) + _BN_SIGMAS * np.sqrt(var)).max())
        if bound > _MAX:
            why = f"its input reaches {bound:.3g} by the statistics of {n.name}"
            prod = n.inputs[0].producer()
            if prod is not None:
                self._keep(prod, fp16_nodes, why)
            self._keep(n, fp16_nodes, why)
        if id(n) not in fp16_nodes:
            return
        dv = float((np.abs(_f16(var) - var) / (var + eps)).max())
        dm = float((np.abs(_f16(mean) - mean) / std).max())
        if max(dv, dm) > _REL_TOL:
            self._keep(n, fp16_nodes, f"statistics lose {max(dv, dm):.2g} (relative) in FP16")

    def _keep(self, node: ir.Node, fp16_nodes: set[int], why: str) -> None:
        if id(node) not in fp16_nodes:
            return
        fp16_nodes.discard(id(node))
        rec = {"node": node.name, "op": node.op_type, "reason": why}
        self.stats.setdefault("kept_fp32_for_range", []).append(rec)
        logger.info("fp16: %s (%s) kept FP32: %s", node.name, node.op_type, why)

    @staticmethod
    def _float_constants(g: ir.Graph) -> list[ir.Value]:
        values = list(g.initializers.values()) + [
            n.outputs[0] for n in g if n.op_type == "Constant"
        ]
        out = []
        for v in values:
            if v.dtype not in (_F32, None):
                continue
            a = const_array(v)
            if a is not None and a.dtype == np.float32:
                v.dtype = _F32
                out.append(v)
        return out

    def _convert_constants(self, g: ir.Graph, fp16_nodes: set[int]) -> None:
        """Float32 initializers / Constant outputs read only by fp16 nodes become float16."""
        for v in self._float_constants(g):
            uses = list(v.uses())
            if not uses or v.is_graph_output():
                continue
            if not all(
                id(u[0]) in fp16_nodes and u[1] not in _FLOAT32_INPUTS.get(u[0].op_type, ())
                for u in uses
            ):
                continue
            arr = self._clamp(const_array(v).astype(np.float32)).astype(np.float16)
            prod = v.producer()
            if prod is not None:
                for key in ("value_float", "value_floats"):
                    prod.attributes.pop(key, None)
                prod.attributes["value"] = ir.AttrTensor("value", ir.tensor(arr))
            else:
                v.const_value = ir.tensor(arr, name=v.name)
                self.count("initializers_converted")
            v.dtype = _F16

    def _clamp(self, a: np.ndarray) -> np.ndarray:
        """Saturate finite |x| > 65504 (bounds, fills, sentinels only: others kept FP32 earlier);
        nonzero |x| < 2^-24 become ±2^-24 rather than 0."""
        big = np.isfinite(a) & (np.abs(a) > _MAX)
        tiny = (a != 0) & (np.abs(a) < _TINY)
        if big.any():
            self.count("values_saturated", int(big.sum()))
        if tiny.any():
            self.count("values_clamped", int(tiny.sum()))
        if big.any() or tiny.any():
            a = np.where(big, np.sign(a) * _MAX, np.where(tiny, np.sign(a) * _TINY, a))
        return a

    def _fix_inputs(self, g: ir.Graph, node: ir.Node, fp16: bool) -> None:
        keep32 = _FLOAT32_INPUTS.get(node.op_type, set())
        for i, v in enumerate(node.inputs):
            if v is None or v.dtype not in (_F32, _F16):
                continue
            want = _F16 if fp16 and i not in keep32 else _F32
            if v.dtype != want:
                node.replace_input_with(i, self._cast(g, v, want, before=node))

    def _cast(self, g: ir.Graph, v: ir.Value, to: ir.DataType, before: ir.Node) -> ir.Value:
        key = (v.name, int(to))
        if key not in self._casts:
            c = ir.node("Cast", [v], attributes={"to": to}, name=f"{v.name}_to_{to.name.lower()}")
            c.outputs[0].name, c.outputs[0].dtype, c.outputs[0].shape = c.name, to, v.shape
            prod = v.producer()
            if prod is not None:
                g.insert_after(prod, c)
            else:
                g.insert_before(next(iter(g)), c)
            self._casts[key] = c.outputs[0]
            self.count("casts_inserted")
        return self._casts[key]

    def _retype_node(self, node: ir.Node) -> None:
        if node.op_type == "Cast" and node.attributes.get_int("to") == int(_F32):
            node.attributes["to"] = ir.AttrInt64("to", int(_F16))
        if node.op_type == "ConstantOfShape" and "value" in node.attributes:
            t = node.attributes["value"].as_tensor()
            if t.dtype == _F32:
                arr = self._clamp(t.numpy()).astype(np.float16)
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(arr))
        for v in node.outputs:
            if v.dtype == _F32:
                v.dtype = _F16

    def _fix_graph_io(self, g: ir.Graph) -> None:
        for i, v in enumerate(list(g.outputs)):
            if v.dtype != _F16 or not self.config.keep_io_types:
                continue
            name = v.name
            v.name = f"{name}_fp16"
            c = ir.node("Cast", [v], attributes={"to": _F32}, name=f"{name}_to_float")
            c.outputs[0].name, c.outputs[0].dtype, c.outputs[0].shape = name, _F32, v.shape
            g.insert_after(v.producer(), c)
            g.outputs[i] = c.outputs[0]
            self.count("casts_inserted")
        if not self.config.keep_io_types:
            self._inputs_to_fp16(g)

    def _inputs_to_fp16(self, g: ir.Graph) -> None:
        """keep_io_types=False: float inputs become float16; Casts that fed fp16 nodes go away."""
        for v in g.inputs:
            if v.dtype != _F32:
                continue
            cast = self._casts.get((v.name, int(_F16)))
            v.dtype = _F16
            if cast is not None:
                cast.replace_all_uses_with(v)
                g.remove(cast.producer(), safe=True)
                self.count("casts_inserted", -1)


def _f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float64)


def _misfit(a: np.ndarray) -> str | None:
    """Why FP16 cannot hold ``a`` faithfully (finite |x| > 65504, or > 1e-2 relative error), or None.

    Sentinels (|x| >= 1e30 — finfo.min masks and the like) are not reasons: they saturate."""
    x = a[np.isfinite(a)].astype(np.float64)
    x = x[np.abs(x) < _SENTINEL]
    if x.size == 0:
        return None
    top = float(np.abs(x).max())
    if top > _MAX:
        return f"|x| up to {top:.3g} exceeds the FP16 maximum 65504"
    norm = float(np.linalg.norm(x))
    rel = float(np.linalg.norm(_f16(x) - x)) / norm if norm else 0.0
    if rel > _REL_TOL:
        low = float(np.abs(x[x != 0]).min())
        return f"FP16 copy is off by {rel:.2g} of its norm (values down to {low:.3g} underflow)"
    return None

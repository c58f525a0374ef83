"""fp16: FP16 weights and compute, graph inputs/outputs kept FP32, sensitive ops kept FP32.

Rewrite: every node not on the block list computes in float16 — its float32 initializers and Constant
values are stored as float16 (clamped to ±65504; magnitudes under 2⁻²⁴ flushed to ±2⁻²⁴ rather than
0, counted as ``values_clamped``), its float outputs become float16, Cast(to=FLOAT) inside the fp16
region becomes Cast(to=FLOAT16). Where a float tensor crosses between precisions (blocked op, graph
input/output with ``keep_io_types``) a Cast is inserted, one per tensor and direction.
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

from autoglm_compress.passes.base import CompressPass, PassConfig, field, register

__all__ = ["ConvertFloat16Pass", "Float16Config", "DEFAULT_OP_BLOCK_LIST"]

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

    def _convert_constants(self, g: ir.Graph, fp16_nodes: set[int]) -> None:
        """Float32 initializers / Constant outputs read only by fp16 nodes become float16."""
        values = list(g.initializers.values())
        values += [n.outputs[0] for n in g if n.op_type == "Constant"]
        for v in values:
            uses = list(v.uses())
            if v.dtype != _F32 or not uses or v.is_graph_output():
                continue
            if not all(
                id(u[0]) in fp16_nodes and u[1] not in _FLOAT32_INPUTS.get(u[0].op_type, ())
                for u in uses
            ):
                continue
            prod = v.producer()
            src = prod.attributes["value"].as_tensor() if prod is not None else v.const_value
            if src is None:
                continue
            arr = self._clamp(src.numpy().astype(np.float32)).astype(np.float16)
            if prod is not None:
                prod.attributes["value"] = ir.AttrTensor("value", ir.tensor(arr))
            else:
                v.const_value = ir.tensor(arr, name=v.name)
                self.count("initializers_converted")
            v.dtype = _F16

    def _clamp(self, a: np.ndarray) -> np.ndarray:
        big = np.abs(a) > _MAX
        tiny = (a != 0) & (np.abs(a) < _TINY)
        n = int(big.sum() + tiny.sum())
        if n:
            self.count("values_clamped", n)
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
                node.attributes["value"] = ir.AttrTensor(
                    "value", ir.tensor(t.numpy().astype(np.float16))
                )
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

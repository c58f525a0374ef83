"""A TFLite flatbuffer under construction: tensors, constant buffers, operator codes, operators.

Written with the schema's object API (``ai_edge_litert.schema_py_generated``: ``ModelT`` …
``.Pack``), facts from ../shared/formats.md: file identifier ``TFL3``, ``version`` 3, ``buffers[0]``
an empty sentinel that every activation tensor uses, both ``builtin_code`` and
``deprecated_builtin_code = min(code, 127)`` on each operator code, buffer data 16-byte aligned.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["TFLiteBuilder", "TENSOR_TYPES"]

logger = logging.getLogger(__name__)

TENSOR_TYPES = {
    np.dtype("float32"): 0, np.dtype("float16"): 1, np.dtype("int32"): 2, np.dtype("uint8"): 3,
    np.dtype("int64"): 4, np.dtype("bool"): 6, np.dtype("int16"): 7, np.dtype("int8"): 9,
}


def _schema():
    import ai_edge_litert.schema_py_generated as s

    return s


class TFLiteBuilder:
    """Collects one subgraph; ``tensor``/``const``/``op`` return indices; ``to_bytes`` packs."""

    def __init__(self):
        s = _schema()
        self.s = s
        self.model = s.ModelT()
        self.model.version = 3
        self.model.description = "autoglm-compress"
        self.model.buffers = [s.BufferT()]  # the empty sentinel
        self.model.operatorCodes = []
        self.graph = s.SubGraphT()
        self.graph.tensors, self.graph.operators = [], []
        self.graph.inputs, self.graph.outputs = [], []
        self.graph.name = "main"
        self._codes: dict[tuple[int, int], int] = {}
        self.dtypes: dict[int, np.dtype] = {}
        self.quant: dict[int, dict | None] = {}
        self._consts: dict[tuple, int] = {}
        self.io_names: tuple[list[str], list[str]] = ([], [])  # the model's names, for the signature

    def tensor(self, name: str, shape, dtype="float32", quant: dict | None = None) -> int:
        s = self.s
        t = s.TensorT()
        t.name = name
        t.shape = np.asarray([int(d) for d in shape], np.int32)
        t.type = TENSOR_TYPES[np.dtype(dtype)]
        t.buffer = 0
        if quant is not None:
            q = s.QuantizationParametersT()
            q.scale = np.asarray(quant["scale"], np.float32).reshape(-1)
            q.zeroPoint = np.asarray(quant["zero_point"], np.int64).reshape(-1)
            q.quantizedDimension = int(quant.get("axis", 0))
            t.quantization = q
        self.graph.tensors.append(t)
        idx = len(self.graph.tensors) - 1
        self.dtypes[idx], self.quant[idx] = np.dtype(dtype), quant
        return idx

    def const(self, name: str, array: np.ndarray, quant: dict | None = None) -> int:
        """A constant tensor with its own buffer (equal constants are shared)."""
        a = np.ascontiguousarray(array)
        key = (a.dtype.str, a.shape, a.tobytes(), repr(quant))
        if key in self._consts:
            return self._consts[key]
        idx = self.tensor(name, a.shape, a.dtype, quant)
        buf = self.s.BufferT()
        buf.data = np.frombuffer(a.tobytes(), np.uint8)
        self.model.buffers.append(buf)
        self.graph.tensors[idx].buffer = len(self.model.buffers) - 1
        self._consts[key] = idx
        return idx

    def shape_of(self, idx: int) -> list[int]:
        return [int(d) for d in self.graph.tensors[idx].shape]

    def op(self, code: int, inputs, outputs, options=None, options_type: int = 0,
           version: int = 1) -> None:
        s = self.s
        key = (code, version)
        if key not in self._codes:
            oc = s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
            self.model.operatorCodes.append(oc)
            self._codes[key] = len(self.model.operatorCodes) - 1
        o = s.OperatorT()
        o.opcodeIndex = self._codes[key]
        o.inputs = np.asarray(list(inputs), np.int32)
        o.outputs = np.asarray(list(outputs), np.int32)
        if options is not None:
            o.builtinOptionsType, o.builtinOptions = options_type, options
        self.graph.operators.append(o)

    def _signature(self) -> None:
        """A ``serving_default`` signature naming the graph's inputs and outputs (LiteRT's
        signature runner and tools such as ai-edge-quantizer address tensors through it)."""
        s = self.s
        sig = s.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = "serving_default", 0

        def maps(indices, names):
            out = []
            for i, name in zip(indices, names):
                m = s.TensorMapT()
                m.name, m.tensorIndex = name, int(i)
                out.append(m)
            return out

        ins, outs = self.io_names
        sig.inputs = maps(self.graph.inputs, ins)
        sig.outputs = maps(self.graph.outputs, outs)
        self.model.signatureDefs = [sig]

    def to_bytes(self) -> bytes:
        import flatbuffers

        self._signature()
        self.model.subgraphs = [self.graph]
        b = flatbuffers.Builder(1024)
        b.Finish(self.model.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())

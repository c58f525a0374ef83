"""One-node ONNX graphs for the emitters' rule tests (test_ncnn_rules.py, test_tflite_rules.py):
a rule's check reads the node's shapes, attributes and constant inputs, so each case is one node in
a graph where the rest is graph inputs and initializers."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

__all__ = ["model_of", "one", "f32", "i64", "gelu_erf"]

F = TensorProto.FLOAT


def model_of(nodes, consts=None, shapes=None, outputs=("y",), opset=18) -> ir.Model:
    """An onnx_ir model of ``nodes``: every input that is neither a constant nor produced inside is
    a float graph input (shape from ``shapes``, default [1, 3, 8, 8]); ``outputs`` are graph
    outputs, shaped only where ``shapes`` says."""
    consts, shapes = consts or {}, shapes or {}
    made = {o for n in nodes for o in n.output}
    ins = list(dict.fromkeys(i for n in nodes for i in n.input
                             if i and i not in consts and i not in made))
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(i, F, shapes.get(i, [1, 3, 8, 8])) for i in ins],
        [helper.make_tensor_value_info(o, F, shapes.get(o)) for o in outputs],
        [onnx.numpy_helper.from_array(np.asarray(a), k) for k, a in consts.items()],
        value_info=[helper.make_tensor_value_info(k, F, s) for k, s in shapes.items()
                    if k in made and k not in outputs])
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    return ir.from_proto(helper.make_model(g, opset_imports=opsets))


def one(op, ins, outs=("y",), *, c=None, shapes=None, domain="", **attrs) -> ir.Node:
    """One ``op`` node named "n" (its graph built by :func:`model_of`)."""
    node = helper.make_node(op, list(ins), list(outs), name="n", domain=domain, **attrs)
    m = model_of([node], c, shapes, outs)
    return next(n for n in m.graph if n.name == "n")


def f32(*shape):
    return np.ones(shape, np.float32)


def i64(*vals):
    return np.asarray(vals, np.int64)


def gelu_erf(lone: bool = False) -> ir.Node:
    """The Erf of 0.5·x·(1 + erf(x/√2)) (``lone``: an Erf read by nothing else of a GELU)."""
    c = {"r2": np.asarray(np.sqrt(2.0), np.float32), "one": np.asarray(1.0, np.float32),
         "half": np.asarray(0.5, np.float32)}
    nodes = [helper.make_node("Div", ["x", "r2"], ["t"]),
             helper.make_node("Erf", ["t"], ["e" if not lone else "y"], name="n")]
    if not lone:
        nodes += [helper.make_node("Add", ["e", "one"], ["a"]),
                  helper.make_node("Mul", ["x", "a"], ["m"]),
                  helper.make_node("Mul", ["m", "half"], ["y"])]
    m = model_of(nodes, c if not lone else {"r2": c["r2"]})
    return next(n for n in m.graph if n.name == "n")

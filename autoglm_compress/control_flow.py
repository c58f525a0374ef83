"""Control flow on load: ``If`` with a constant condition is inlined; what remains is refused.

The executor and the quantization passes see one straight-line graph. An ``If`` whose condition
is a constant (an initializer or a ``Constant`` node, typically after the loader's constant
folding with static shapes) computes exactly its taken branch, so it is replaced by that branch:
the branch's nodes move into the enclosing graph before the ``If`` (node and value names prefixed
with the ``If``'s name, made unique), its initializers are registered in the main graph, and each
``If`` output becomes an ``Identity`` of the branch's output under the output's old name (the
``cleanup`` pass removes the Identities). Folding repeats until no constant ``If`` is left, so
nested ones inside a taken branch fold too. Any ``If``/``Loop``/``Scan`` that remains depends on
data and is refused in one line naming the op, the node, and the inputs the condition reads.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from autoglm_compress.errors import UnsupportedOpError

__all__ = ["CONTROL_FLOW_OPS", "fold_control_flow"]

logger = logging.getLogger(__name__)
CONTROL_FLOW_OPS = ("If", "Loop", "Scan")


def fold_control_flow(model: ir.Model, where: str = "the model") -> int:
    """Inline every constant-condition ``If``; refuse remaining control flow. Returns #folded."""
    graph, folded = model.graph, 0
    while True:
        node = next((n for n in graph if n.op_type == "If" and _condition(n) is not None), None)
        if node is None:
            break
        _inline(graph, node, _condition(node))
        folded += 1
    if folded:
        logger.info("control flow: %d If node(s) with constant conditions inlined", folded)
    left = [n for n in graph if n.op_type in CONTROL_FLOW_OPS and n.domain in ("", "ai.onnx")]
    if left:
        _refuse(graph, left, where)
    return folded


def _condition(node: ir.Node) -> bool | None:
    """The If's condition when it is a constant, else None."""
    cond = node.inputs[0] if node.inputs else None
    if cond is None:
        return None
    tensor = cond.const_value
    producer = cond.producer()
    if tensor is None and producer is not None and producer.op_type == "Constant":
        attr = producer.attributes.get("value")
        tensor = attr.as_tensor() if attr is not None else None
    if tensor is None:
        return None
    arr = np.asarray(tensor.numpy())
    return bool(arr.reshape(-1)[0]) if arr.size == 1 else None


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 1
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out


def _all_names(graph: ir.Graph) -> tuple[set[str], set[str]]:
    """(value names, node names) in use anywhere in the graph, subgraphs included."""
    values = {v.name for v in graph.inputs if v.name} | set(graph.initializers)
    nodes = set()
    for n in graph.all_nodes():
        values |= {v.name for v in n.outputs if v.name}
        nodes |= {n.name} if n.name else set()
    return values, nodes


def _inline(graph: ir.Graph, node: ir.Node, cond: bool) -> None:
    branch = node.attributes["then_branch" if cond else "else_branch"].as_graph()
    prefix = node.name or f"If_{graph.index(node)}"
    taken, node_names = _all_names(graph)
    for name in list(branch.initializers):
        init = branch.initializers.pop(name)
        init.name = _unique(f"{prefix}/{name}", taken)
        graph.register_initializer(init)
    formal = list(branch.outputs)
    branch.outputs.clear()
    moved = list(branch)
    branch.remove(moved)
    for sub in moved:
        sub.name = _unique(f"{prefix}/{sub.name or sub.op_type}", node_names)
        for v in sub.outputs:
            v.name = _unique(f"{prefix}/{v.name or 'v'}", taken)
    graph.insert_before(node, moved)
    for i, (inner, actual) in enumerate(zip(formal, node.outputs)):
        ident = ir.Node("", "Identity", [inner], name=_unique(f"{prefix}/output_{i}", node_names))
        graph.insert_before(node, ident)
        out = ident.outputs[0]
        out.type, out.shape = actual.type or inner.type, actual.shape or inner.shape
        name, actual.name = actual.name, None
        ir.convenience.replace_all_uses_with(actual, out, replace_graph_outputs=True)
        out.name = name
    graph.remove(node, safe=True)
    logger.debug(
        "inlined %s branch of %s (%d nodes)", "then" if cond else "else", prefix, len(moved)
    )


def _graph_inputs_read(graph: ir.Graph, value: ir.Value | None) -> list[str]:
    """Names of the graph inputs that ``value`` is computed from."""
    inputs = {id(v): v.name for v in graph.inputs}
    seen, stack, found = set(), [value], []
    while stack:
        v = stack.pop()
        if v is None or id(v) in seen:
            continue
        seen.add(id(v))
        if id(v) in inputs:
            found.append(inputs[id(v)])
        elif v.producer() is not None:
            stack.extend(v.producer().inputs)
    return sorted(found)


def _refuse(graph: ir.Graph, left: list[ir.Node], where: str) -> None:
    node = left[0]
    more = f" ({len(left)} control-flow nodes in all)" if len(left) > 1 else ""
    if node.op_type == "If":
        reads = _graph_inputs_read(graph, node.inputs[0] if node.inputs else None)
        cause = f"its condition depends on input(s) {reads}" if reads else "its condition is data"
        hint = (
            f"{cause}{more}; re-export the model without data-dependent control flow "
            "(trace one path with those inputs fixed, e.g. torch.jit.trace / torch.export)"
        )
    else:
        hint = (
            f"a data-dependent {node.op_type} cannot be run or quantized as a static graph{more}; "
            "re-export with the loop unrolled (fixed shapes, torch.jit.trace / torch.export)"
        )
    raise UnsupportedOpError(node.op_type, node.name or "?", where, hint)

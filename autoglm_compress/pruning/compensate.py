"""Bias compensation after pruning: a removed channel still fed its mean to the next layer.

A pruned channel is rarely silent: with a folded BatchNorm its filter carries a bias, so after the
activation it adds a near-constant signal to every reader. Removing it shifts each reader's output
by W[:, removed] · mean(removed inputs). Measured on a few samples of the unpruned model, that shift
goes into the reader's bias (a convolution: summed over its kernel taps — exact away from the zero
padding). Readers handled: Conv (group 1) and Gemm with constant weights (a bias is added when they have
none); MatMul readers and readers behind a Flatten or Concat are left as they are.
EfficientNet-Lite1 at 5 % of the channels: cosine 0.65 → 0.85 before any fine-tuning.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array

__all__ = ["input_means", "compensate"]


def _readers(model: ir.Model):
    for n in model.graph:
        if n.op_type in ("Conv", "Gemm") and len(n.inputs) > 1 and const_array(
                n.inputs[1]) is not None and n.attributes.get_int("group", 1) == 1 \
                and not n.attributes.get_int("transA", 0) and n.inputs[0].producer() is not None:
            yield n


def input_means(model: ir.Model, feeds) -> dict[str, np.ndarray]:
    """Per-channel mean of every Conv/Gemm input over ``feeds`` (unpruned ``model``)."""
    import torch

    from autoglm_compress.runtime import TorchExecutor

    names = tuple({n.inputs[0].name for n in _readers(model)})
    if not names:
        return {}
    ex = TorchExecutor(model, device="cpu")
    sums: dict[str, torch.Tensor] = {}
    count = 0
    with torch.no_grad():
        for f in feeds:
            out = ex.run(f, extra=names)
            for k in names:
                t = out[k].double()
                t = t.movedim(1, 0).reshape(t.shape[1], -1).mean(1)
                sums[k] = t if k not in sums else sums[k] + t
            count += 1
    return {k: (v / max(count, 1)).numpy() for k, v in sums.items()}


def compensate(before: ir.Model, after: ir.Model, kept: dict, means: dict) -> int:
    """Add each reader's lost input (removed channels × their means) to its bias in ``after``;
    ``kept``: value → (axis, kept indices) from the prune; how many readers changed."""
    originals = {n.name: n for n in _readers(before) if n.name}
    changed = 0
    for n in list(_readers(after)):
        o = originals.get(n.name)
        x = n.inputs[0].name
        if o is None or x not in kept or x not in means:
            continue
        mean = means[x]
        removed = np.setdiff1d(np.arange(mean.size), np.asarray(kept[x][1]))
        if removed.size == 0:
            continue
        w = const_array(o.inputs[1]).astype(np.float64)
        if n.op_type == "Conv":
            delta = (w[:, removed].reshape(w.shape[0], removed.size, -1).sum(2)
                     * mean[removed][None, :]).sum(1)
        else:
            w = w.T if n.attributes.get_int("transB", 0) else w  # [in, out]
            delta = mean[removed] @ w[removed]
        y = kept.get(n.outputs[0].name)
        if y is not None:
            delta = delta[np.asarray(y[1])]
        _add_bias(n, delta)
        changed += 1
    return changed


def _add_bias(n: ir.Node, delta: np.ndarray) -> None:
    has = len(n.inputs) > 2 and n.inputs[2] is not None and n.inputs[2].name
    old = const_array(n.inputs[2]).astype(np.float64).reshape(-1) if has else 0.0
    if has and np.size(old) not in (1, delta.size):
        return  # a Gemm C that is not a per-output vector: leave it
    b = (old + delta).astype(np.float32)
    name = f"{n.name or n.outputs[0].name}_bias_comp"
    v = ir.Value(name=name, shape=ir.Shape(b.shape), type=ir.TensorType(ir.DataType.FLOAT),
                 const_value=ir.tensor(b, name=name))
    n.graph.register_initializer(v)
    if len(n.inputs) < 3:
        n.resize_inputs(3)
    n.replace_input_with(2, v)

"""Fuse exported scaled-dot-product attention into ncnn's ``SDPA`` layer (ncnn lowering).

The pattern (what torch / Hugging Face exports, heads already split, batch 1)::

    Q [1, h, S, d]   (· a)?          Kᵀ = Transpose(X) [1, h, d, T]   (· b)?
    scores = MatMul(Q, Kᵀ)  (· c | / c)?  (+ mask [1, 1|h, S, T])?
    P = Softmax(scores, axis=-1)  (Where(IsNaN(P), 0, P))?
    O = MatMul(P, V [1, h, T, d_v])

becomes one ``SDPA`` layer (ncnn ≥ 2025: 5=attn_mask, 6=scale; query [h, S, d], key [h, T, d],
value [h, T, d_v], mask [1|h, S, T]) with scale = a·b·c (or a·b/c). K is taken before its
transpose: the layer reads X through a Permute to [h, T, d]. The Q/DQ pairs an INT8 QDQ graph puts
on the MatMul inputs are looked through (ncnn runs attention in float). Every value inside the
pattern must have that one reader; anything else stays decomposed (batched MatMul + Softmax).
ncnn's SDPA runs on its x86 and ARM gemm kernels, with no [h, S, T] blobs between layers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array
from autoglm_compress.targets.ir_reads import scalar
from autoglm_compress.targets.ncnn.blobs import permute_type, shape

__all__ = ["Attention", "match_attention", "lower_sdpa"]


@dataclasses.dataclass
class Attention:
    out: ir.Node  # the P·V MatMul
    q: ir.Value
    k_src: ir.Value  # X, with Kᵀ = Transpose(X, perm_kt)
    k_perm: list[int]  # permutation of X giving K [1, h, T, d]
    v: ir.Value
    mask: ir.Value | None
    scale: float
    nodes: list[ir.Node]  # every node folded into the SDPA layer


def _through_qdq_up(v: ir.Value) -> tuple[ir.Value, list[ir.Node]]:
    """The float value behind a DequantizeLinear(QuantizeLinear(x)) pair, and the pair."""
    d = v.producer()
    if d is not None and d.op_type == "DequantizeLinear":
        q = d.inputs[0].producer()
        if q is not None and q.op_type == "QuantizeLinear" and _one_reader(q.outputs[0]):
            return q.inputs[0], [q, d]
    return v, []


def _one_reader(v: ir.Value) -> ir.Node | None:
    uses = list(v.uses())
    if len(uses) != 1 or v.is_graph_output():
        return None
    return uses[0][0]


def _scaled(v: ir.Value) -> tuple[ir.Value, float, list[ir.Node]]:
    """``v`` = Mul(x, const) (either order) / Div(x, const) read only here → (x, factor, [node])."""
    p = v.producer()
    if p is None or p.op_type not in ("Mul", "Div") or _one_reader(v) is None:
        return v, 1.0, []
    a, b = p.inputs
    sb, sa = scalar(b), scalar(a) if p.op_type == "Mul" else None
    if sb is not None and const_array(a) is None:
        return a, (sb if p.op_type == "Mul" else 1.0 / sb), [p]
    if sa is not None and const_array(b) is None:
        return b, sa, [p]
    return v, 1.0, []


def match_attention(mm2: ir.Node) -> Attention | None:
    """The attention pattern ending in the MatMul ``mm2`` (P·V), or None."""
    if mm2.op_type != "MatMul" or const_array(mm2.inputs[1]) is not None:
        return None
    nodes: list[ir.Node] = [mm2]
    p, qdq = _through_qdq_up(mm2.inputs[0])
    nodes += qdq
    v, qdq = _through_qdq_up(mm2.inputs[1])
    nodes += qdq
    prod = p.producer()
    if prod is not None and prod.op_type == "Where":  # Where(IsNaN(P), c, P)
        c, a, b = prod.inputs
        isnan = c.producer()
        if isnan is None or isnan.op_type != "IsNaN" or isnan.inputs[0] is not b \
                or const_array(a) is None or _one_reader(c) is None:
            return None
        if len(list(b.uses())) != 2 or _one_reader(p) is None:
            return None
        nodes += [prod, isnan]
        p = b
    elif _one_reader(p) is None:
        return None
    sm = p.producer()
    if sm is None or sm.op_type != "Softmax":
        return None
    rank = len(shape(sm.inputs[0]))
    if rank != 4 or sm.attributes.get_int("axis", -1) % rank != 3:
        return None
    nodes.append(sm)
    s = sm.inputs[0]
    mask = None
    add = s.producer()
    if add is not None and add.op_type == "Add" and _one_reader(s) is not None:
        a, b = add.inputs

        def scores(x):  # MatMul, or a scaled MatMul
            p = _scaled(x)[0].producer()
            return p is not None and p.op_type == "MatMul"

        mm_side, mask = (a, b) if scores(a) else (b, a)
        mshape = shape(mask)
        if len(mshape) != 4 or mshape[0] != 1 or mshape[2:] != shape(s)[2:] \
                or mshape[1] not in (1, shape(s)[1]):
            return None  # ncnn's SDPA reads a full [S, T] mask per head (or one for all)
        nodes.append(add)
        s = mm_side
    s, c, extra = _scaled(s)
    nodes += extra
    mm1 = s.producer()
    if mm1 is None or mm1.op_type != "MatMul" or _one_reader(s) is None:
        return None
    nodes.append(mm1)
    q, qdq = _through_qdq_up(mm1.inputs[0])
    nodes += qdq
    kt, qdq = _through_qdq_up(mm1.inputs[1])
    nodes += qdq
    q, a, extra = _scaled(q)
    nodes += extra
    kt, b, extra = _scaled(kt)
    nodes += extra
    tr = kt.producer()
    if tr is None or tr.op_type != "Transpose":
        return None
    perm = [int(x) for x in tr.attributes.get_ints("perm", [])]
    if len(perm) != 4 or perm[0] != 0:
        return None
    if _one_reader(kt) is not None:
        nodes.append(tr)
    k_perm = [perm[0], perm[1], perm[3], perm[2]]
    qs, ks, vs = shape(q), shape(tr.inputs[0]), shape(v)
    k_shape = [ks[i] for i in k_perm]
    if len(qs) != 4 or qs[0] != 1 or k_shape[1] != qs[1] or k_shape[3] != qs[3] \
            or vs[1] != qs[1] or vs[2] != k_shape[2]:
        return None
    return Attention(mm2, q, tr.inputs[0], k_perm, v, mask, a * b * c, nodes)


def lower_sdpa(lw, att: Attention) -> None:
    """One SDPA layer (+ a Permute giving K as [h, T, d]) for ``att`` (``lw``: the _Lowerer)."""
    name = att.out.name or "sdpa"
    k_blob = lw.ng.unique(f"{name}_key")
    if att.k_perm == [0, 1, 2, 3]:
        k_blob = lw.b(att.k_src)
    else:
        lw.ng.add("Permute", f"{name}_key", [lw.b(att.k_src)], [k_blob],
                  {0: permute_type(att.k_perm)})
    ins = [lw.b(att.q), k_blob, lw.b(att.v)]
    params: dict = {6: float(np.float32(att.scale))}
    if att.mask is not None:
        arr = const_array(att.mask) if att.mask.name not in lw.blob else None
        ins.append(lw.b(att.mask) if arr is None else lw.memory_data(arr, att.mask.name, 4))
        params[5] = 1
    lw.ng.add("SDPA", name, ins, [lw.out(att.out.outputs[0])], params)

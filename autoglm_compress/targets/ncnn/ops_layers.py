"""ncnn rules for the weighted and windowed layers: Convolution, Deconvolution, InnerProduct,
MatMul, Pooling, BatchNorm, LayerNorm, Softmax, Interp, Padding.

Weights: Convolution OIHW, ConvolutionDepthWise the same with 7=group, InnerProduct [out][in],
Deconvolution [out][in] per output as ncnn's loader reads it. INT8 (``lw.int8_parts``): int8
weights (tag 0x000D4B38), weight scales 1/s_w per output channel (per group for depthwise), the
bottom-blob scale 1/s_x, 8=int8_scale_term (2 conv/FC, 1 depthwise); the bias stays fp32.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from autoglm_compress.ir_ops import const_array, trailing_bias
from autoglm_compress.targets.ir_reads import input_or_none, ints, onnx_pads, wconst
from autoglm_compress.targets.ncnn.blobs import shape
from autoglm_compress.targets.ncnn.rules import RULES

PAD_MODES = {"constant": 0, "edge": 1, "reflect": 2}


def _check_conv(node: ir.Node) -> str | None:
    """2-D convolutions with constant weights; transposed ones ungrouped."""
    w = wconst(node.inputs[1])
    if w is None or w.ndim != 4:
        return "only 2-D convolutions with constant weights"
    if node.op_type == "ConvTranspose" and node.attributes.get_int("group", 1) != 1:
        return "grouped transposed convolution"
    return None


@RULES.rule("Conv", check=_check_conv)
def conv(lw, n: ir.Node) -> None:
    w = wconst(n.inputs[1]).astype(np.float32)
    o, _, kh, kw = w.shape
    st, dil = ints(n, "strides", [1, 1]), ints(n, "dilations", [1, 1])
    pads = onnx_pads(n, shape(n.inputs[0])[2:], [kh, kw], st, dil)
    g = n.attributes.get_int("group", 1)
    b = input_or_none(n, 2)
    bias = wconst(b) if b is not None else None
    p = {0: o, 1: kw, 11: kh, 2: dil[1], 12: dil[0], 3: st[1], 13: st[0], 4: pads[1],
         14: pads[0], 15: pads[3], 16: pads[2], 5: int(bias is not None), 6: w.size}
    if g > 1:
        p[7] = g
    x = lw.b(n.inputs[0])
    act, y = lw.fuse(n)
    p.update(act)
    q = lw.int8_parts(n, 1)
    if q is not None:
        wdata, w_scales, s_in = q
        if g > 1:
            # depthwise: one weight scale per group (8=1); grouped: per group needs equal
            # scales inside a group, so use the group's max multiplier's inverse (8=1)
            per = o // g
            if per != 1:
                w_scales = w_scales.reshape(g, per).min(axis=1)
                wdata = None  # requantize below with the group scale
            p[8] = 1
        else:
            p[8] = 2
        if wdata is None:
            wq = np.clip(np.rint(w.reshape(g, -1) * w_scales.reshape(g, 1)), -127, 127)
            wdata = wq.astype(np.int8)
        weights = [("tagged", np.asarray(wdata, np.int8).reshape(-1))]
        if bias is not None:
            weights.append(("raw", bias.astype(np.float32)))
        weights += [("raw", w_scales), ("raw", np.asarray([s_in], np.float32))]
        lw.int8_layers.append(n.name or "conv")
    else:
        weights = [lw.weight(w)]
        if bias is not None:
            weights.append(("raw", bias.astype(np.float32)))
        if lw.precision == "int8":
            lw.float_layers.append(n.name or "conv")
    layer = lw.ng.add("ConvolutionDepthWise" if g > 1 else "Convolution", n.name or "conv",
                      [x], [lw.out(y)], p, weights)
    layer.source = n.name
    if q is not None:
        layer.bottom_scale = float(q[2])


@RULES.rule("ConvTranspose", check=_check_conv)
def conv_transpose(lw, n: ir.Node) -> None:
    w = wconst(n.inputs[1]).astype(np.float32)  # [Cin, Cout, kh, kw]
    _, o, kh, kw = w.shape
    st, dil = ints(n, "strides", [1, 1]), ints(n, "dilations", [1, 1])
    pads = ints(n, "pads", [0, 0, 0, 0])
    opad = ints(n, "output_padding", [0, 0])
    b = input_or_none(n, 2)
    bias = wconst(b) if b is not None else None
    p = {0: o, 1: kw, 11: kh, 2: dil[1], 12: dil[0], 3: st[1], 13: st[0], 4: pads[1],
         14: pads[0], 15: pads[3], 16: pads[2], 18: opad[1], 19: opad[0],
         5: int(bias is not None), 6: w.size}
    act, y = lw.fuse(n)
    p.update(act)
    # ncnn Deconvolution weights: [out][in][kh][kw] (its loader transposes per output)
    weights = [lw.weight(w.transpose(1, 0, 2, 3))]
    if bias is not None:
        weights.append(("raw", bias.astype(np.float32)))
    if lw.precision == "int8":
        lw.float_layers.append(n.name or "deconv")
    lw.ng.add("Deconvolution", n.name or "deconv", [lw.b(n.inputs[0])], [lw.out(y)], p, weights)


def inner_product(lw, n: ir.Node, w_out_in: np.ndarray, bias, w_idx: int) -> None:
    p = {0: w_out_in.shape[0], 1: int(bias is not None), 2: w_out_in.size}
    x = lw.b(n.inputs[0])
    act, y = lw.fuse(n)
    p.update(act)
    q = lw.int8_parts(n, w_idx)
    if q is not None:
        wdata, w_scales, s_in = q
        wdata = wdata if n.op_type == "Gemm" and n.attributes.get_int("transB", 0) else wdata.T
        p[8] = 2
        weights = [("tagged", np.ascontiguousarray(wdata, np.int8).reshape(-1))]
        if bias is not None:
            weights.append(("raw", np.asarray(bias, np.float32).reshape(-1)))
        weights += [("raw", w_scales), ("raw", np.asarray([s_in], np.float32))]
        lw.int8_layers.append(n.name or "fc")
    else:
        weights = [lw.weight(w_out_in)]
        if bias is not None:
            weights.append(("raw", np.asarray(bias, np.float32).reshape(-1)))
        if lw.precision == "int8":
            lw.float_layers.append(n.name or "fc")
    layer = lw.ng.add("InnerProduct", n.name or "fc", [x], [lw.out(y)], p, weights)
    layer.source = n.name
    if q is not None:
        layer.bottom_scale = float(q[2])


def _check_gemm(node: ir.Node) -> str | None:
    """No transA, a constant weight, a 2-D input."""
    if node.attributes.get_int("transA", 0) or wconst(node.inputs[1]) is None:
        return "Gemm with transA or a non-constant weight"
    if len(shape(node.inputs[0])) != 2:
        return "Gemm on a rank ≠ 2 input"
    return None


@RULES.rule("Gemm", check=_check_gemm)
def gemm(lw, n: ir.Node) -> None:
    w = wconst(n.inputs[1]).astype(np.float32)
    w = w if n.attributes.get_int("transB", 0) else w.T
    alpha = n.attributes.get_float("alpha", 1.0)
    cv = input_or_none(n, 2)
    c = wconst(cv) if cv is not None else None
    if c is not None:
        c = c.astype(np.float32) * n.attributes.get_float("beta", 1.0)
        c = np.broadcast_to(c.reshape(-1) if c.size == w.shape[0] else c, (w.shape[0],))
    inner_product(lw, n, w * alpha, c, 1)


def _check_matmul(node: ir.Node) -> str | None:
    """A constant 2-D weight on 2-D/3-D rows, or two activations batched 3-D/4-D of one rank."""
    w = wconst(node.inputs[1])
    rank = len(shape(node.inputs[0]))
    if w is not None and (w.ndim != 2 or rank not in (2, 3)):
        return "MatMul with a constant weight on a rank other than 2 or 3 (rows) input"
    if w is None and not (3 <= rank <= 4 and len(shape(node.inputs[1])) == rank):
        return "MatMul of two activations other than batched 3-D/4-D of equal rank"
    return None


def _bias_add(lw, n: ir.Node):
    """(Add, bias) when ``n``'s only reader adds a constant [N] (a Gemm lifted to rows)."""
    found = trailing_bias(n)
    if found is None or found[0].inputs[found[1]].name in lw.blob \
            or found[2].size != shape(n.outputs[0])[-1]:
        return None, None
    return found[0], found[2].astype(np.float32)


@RULES.rule("MatMul", check=_check_matmul)
def matmul(lw, n: ir.Node) -> None:
    if wconst(n.inputs[1]) is None:
        lw.ng.add("MatMul", n.name or "matmul", [lw.b(v) for v in n.inputs],
                  [lw.out(n.outputs[0])], {0: 0})
        return
    # [1, S, H] is the 2-D blob h=S: InnerProduct runs row by row
    add, bias = _bias_add(lw, n)
    if add is not None:
        lw.fused.add(id(add))
    inner_product(lw, n, wconst(n.inputs[1]).astype(np.float32).T, bias, 1)
    if add is not None:
        lw.blob[add.outputs[0].name] = lw.blob[n.outputs[0].name]


@RULES.rule("MaxPool", "AveragePool")
def pool(lw, n: ir.Node) -> None:
    k, st = ints(n, "kernel_shape", [1, 1]), ints(n, "strides", [1, 1])
    pads = onnx_pads(n, shape(n.inputs[0])[2:], k, st, [1, 1])
    p = {0: 0 if n.op_type == "MaxPool" else 1, 1: k[1], 11: k[0], 2: st[1], 12: st[0],
         3: pads[1], 13: pads[0], 14: pads[3], 15: pads[2],
         5: 0 if n.attributes.get_int("ceil_mode", 0) else 1,
         6: n.attributes.get_int("count_include_pad", 0)}
    lw.ng.add("Pooling", n.name or "pool", [lw.b(n.inputs[0])], [lw.out(n.outputs[0])], p)


@RULES.rule("GlobalAveragePool", "GlobalMaxPool")
def global_pool(lw, n: ir.Node) -> None:
    """Global pooling gives ncnn a 1-D [C] blob: written straight into a following Flatten /
    Reshape to [1, C] (pnnx's layout: one layer), else reshaped back to [C, 1, 1]."""
    y = n.outputs[0]
    uses = list(y.uses())
    nxt = uses[0][0] if len(uses) == 1 and not y.is_graph_output() else None
    kind = {0: 0 if n.op_type == "GlobalMaxPool" else 1, 4: 1}
    if nxt is not None and nxt.op_type in ("Flatten", "Reshape") \
            and shape(nxt.outputs[0]) == shape(y)[:2]:
        lw.fused.add(id(nxt))
        lw.ng.add("Pooling", n.name or "gpool", [lw.b(n.inputs[0])], [lw.out(nxt.outputs[0])],
                  kind)
        return
    mid = lw.ng.unique(n.outputs[0].name + "_flat")
    lw.ng.add("Pooling", n.name or "gpool", [lw.b(n.inputs[0])], [mid], kind)
    c = shape(n.outputs[0])[1]
    lw.ng.add("Reshape", (n.name or "gpool") + "_chw", [mid], [lw.out(n.outputs[0])],
              {0: 1, 1: 1, 2: c})


@RULES.rule("BatchNormalization")
def batch_norm(lw, n: ir.Node) -> None:
    g, beta, mean, var = (const_array(v).astype(np.float32) for v in n.inputs[1:5])
    eps = n.attributes.get_float("epsilon", 1e-5)
    lw.simple(n, "BatchNorm", {0: g.size, 1: eps},
              [("raw", g), ("raw", mean), ("raw", var), ("raw", beta)])


def _check_layernorm(node: ir.Node) -> str | None:
    """Over the last axis, with a constant scale."""
    rank = len(shape(node.inputs[0]))
    if node.attributes.get_int("axis", -1) % rank != rank - 1 or const_array(
            node.inputs[1]) is None:
        return "LayerNormalization over more than the last axis, or non-constant scale"
    return None


@RULES.rule("LayerNormalization", check=_check_layernorm)
def layer_norm(lw, n: ir.Node) -> None:
    gamma = const_array(n.inputs[1]).astype(np.float32).reshape(-1)
    bv = input_or_none(n, 2)
    beta = const_array(bv).astype(np.float32).reshape(-1) if bv is not None \
        else np.zeros_like(gamma)
    lw.simple(n, "LayerNorm", {0: gamma.size, 1: n.attributes.get_float("epsilon", 1e-5), 2: 1},
              [("raw", gamma), ("raw", beta)])


@RULES.rule("Softmax")
def softmax(lw, n: ir.Node) -> None:
    axis = n.attributes.get_int("axis", -1) % len(shape(n.inputs[0]))
    lw.simple(n, "Softmax", {0: axis - 1, 1: 1})


def _check_resize(node: ir.Node) -> str | None:
    """4-D; nearest/asymmetric, or linear with half-pixel or align-corners coordinates."""
    mode = node.attributes.get_string("mode", "nearest")
    ct = node.attributes.get_string("coordinate_transformation_mode", "half_pixel")
    if len(shape(node.outputs[0])) != 4:
        return "only 4-D resizes"
    if not ((mode == "nearest" and ct == "asymmetric") or (mode == "linear" and ct in (
            "half_pixel", "pytorch_half_pixel", "align_corners"))):
        return f"Resize mode {mode}/{ct} has no ncnn Interp equivalent"
    return None


@RULES.rule("Resize", check=_check_resize)
def resize(lw, n: ir.Node) -> None:
    mode = n.attributes.get_string("mode", "nearest")
    ct = n.attributes.get_string("coordinate_transformation_mode", "half_pixel")
    oh, ow = shape(n.outputs[0])[2:]
    lw.simple(n, "Interp", {0: 1 if mode == "nearest" else 2, 3: oh, 4: ow,
                            6: int(ct == "align_corners")})


def _check_pad(node: ir.Node) -> str | None:
    """Constant/edge/reflect with constant pads on a 4-D map, not on the batch axis."""
    mode = node.attributes.get_string("mode", "constant")
    rank = len(shape(node.inputs[0]))
    pads = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if mode not in PAD_MODES or pads is None or rank != 4 or input_or_none(node, 3) is not None:
        return "Pad other than constant/edge/reflect with constant pads on a 4-D map"
    if pads[0] or pads[4]:
        return "Pad on the batch axis"
    return None


@RULES.rule("Pad", check=_check_pad)
def pad(lw, n: ir.Node) -> None:
    p = [int(x) for x in const_array(n.inputs[1]).reshape(-1)]
    cv = input_or_none(n, 2)
    value = const_array(cv) if cv is not None else None
    lw.simple(n, "Padding", {0: p[2], 1: p[6], 2: p[3], 3: p[7],
                             4: PAD_MODES[n.attributes.get_string("mode", "constant")],
                             5: float(value.reshape(-1)[0]) if value is not None else 0.0,
                             7: p[1], 8: p[5]})

"""Seeded subsampling of big tensors for the range histograms, in numpy and inside the ONNX graph.

A histogram tensor of ``n`` values gives its observer at most ``VALUES`` (64 Ki) of them a sample:
with ``step = ceil(n / VALUES)`` the flattened tensor is cut into ``m = ceil(n / step)`` blocks of
``step`` consecutive values and one value is drawn from each, at offset ``floor(u_j · step)``
(``u`` uniform in [0, 1), float32, a fresh vector per sample from a generator seeded with
``SEED``: calibration stays reproducible). A tensor of at most ``VALUES`` values has ``step = 1``
and is kept whole, exactly. The sample's exact min and max are appended whenever values were
left out, so the histogram's range (and every search's candidate grid) is the full data's.

Why it is safe. Every value has the same chance ``1/step`` of being drawn (the last, shorter
block aside: at most one draw), the draws are independent, so the subsample's empirical CDF
``F̂(t)`` is unbiased for the tensor's ``F(t)`` to within ``1/m``, and by Hoeffding

    P(|F̂(t) - F(t)| > ε + 1/m) ≤ 2 exp(-2 M ε²)

with ``M`` the values drawn over all samples (independent ``u`` per sample). A union bound over
the histogram's ``B + 1`` bin edges bounds the whole histogram: with probability ``1 - δ`` every
edge's CDF is off by at most ``ε = sqrt(ln(2 (B + 1) / δ) / (2 M))`` — :func:`cdf_error_bound`;
for 2048 bins, δ = 10⁻⁶ and 48 samples of 64 Ki values that is 0.19 % of the mass. A percentile
read off the histogram is then the true ``p ± ε`` quantile, and the per-value MSE objective of
any candidate range ``[a, b]`` (clipping + rounding error, an integral of a function of bounded
variation ``V = (a - min)² + (max - b)² + Δ²/6`` against ``F``) moves by at most ``ε · V``, so
the mse search's choice costs at most ``2 ε V`` against the full-data optimum.
``tests/test_calib_cost.py`` checks the bound and the ranges on a high-resolution model.

Why it is needed: streaming a 32×256×256 map whole out of onnxruntime and binning all of its
2 M values a sample is most of an INT8 run's time and memory on a small high-resolution model
(a 79 K-parameter enhancer: 48 such tensors, 400 MB a sample; bench/bench_calib_cost.py).
:func:`add_nodes` does the drawing in the graph (``Size``, integer arithmetic, ``Gather``) so only
the drawn values leave the session; :func:`draw` is the same in numpy (the reference, and the
fallback for opsets below 13).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

__all__ = [
    "VALUES", "SEED", "MIN_OPSET", "Offsets", "indices", "draw", "with_extremes", "add_gather",
    "add_nodes", "Draws", "cdf_error_bound", "graph_constants",
]

VALUES = 1 << 16  # values one sample gives a tensor's histogram at most
SEED = 0
MIN_OPSET = 13  # Slice with tensor starts/ends, Min on int64, Range


class Offsets:
    """The ``u`` vectors, one a sample, from a generator seeded with ``seed``."""

    def __init__(self, seed: int = SEED):
        self.rng = np.random.default_rng(seed)

    def next(self) -> np.ndarray:
        return self.rng.random(VALUES, dtype=np.float32)


def _step(n: int) -> int:
    return max(-(-n // VALUES), 1)


def indices(n: int, u: np.ndarray) -> np.ndarray:
    """Positions drawn from a flattened tensor of ``n`` values (``n > VALUES``) for offsets ``u``."""
    step = _step(n)
    m = -(-n // step)
    r = np.minimum(np.floor(u[:m] * np.float32(step)).astype(np.int64), step - 1)
    return np.minimum(np.arange(m, dtype=np.int64) * step + r, n - 1)


def draw(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The drawn values of ``x`` (flattened) for offsets ``u``; ``x`` itself when small."""
    flat = np.asarray(x).reshape(-1)
    return flat if flat.size <= VALUES else flat[indices(flat.size, u)]


def with_extremes(drawn: np.ndarray, n: int, lo: float, hi: float) -> np.ndarray:
    """``drawn`` plus the sample's exact ``lo``, ``hi`` when values were left out (``n > VALUES``)."""
    if n <= VALUES:
        return drawn
    return np.concatenate([drawn, np.array([lo, hi], dtype=drawn.dtype)])


def add_gather(graph: onnx.GraphProto, x: str, idx: str, prefix: str) -> tuple[list, str]:
    """Nodes drawing the values of ``x`` at the positions fed as ``idx`` (:func:`indices` of its
    static size, computed in numpy each sample); returns ``(nodes, drawn)``."""
    flat, drawn = f"{prefix}/flat", f"{prefix}/drawn"
    return [
        helper.make_node("Reshape", [x, graph_constants(graph)["flat"]], [flat], name=flat),
        helper.make_node("Gather", [flat, idx], [drawn], name=drawn, axis=0),
    ], drawn


def add_nodes(graph: onnx.GraphProto, x: str, u: str, prefix: str) -> tuple[list, str, str]:
    """Nodes computing :func:`draw` of tensor ``x`` of unknown size with offsets input ``u``
    (float32 ``[VALUES]``); returns ``(nodes, drawn, size)``: the drawn values (1-D) and
    ``Size(x)``. The shared int64 constants are added to ``graph`` once."""
    c = graph_constants(graph)
    p = f"{prefix}/"
    nodes = []

    def op(kind: str, *ins: str, **attrs) -> str:
        out = f"{p}{len(nodes)}_{kind}"
        nodes.append(helper.make_node(kind, list(ins), [out], name=out, **attrs))
        return out

    n = op("Size", x)
    step = op("Max", op("Div", op("Add", n, c["vm1"]), c["values"]), c["one"])
    step_m1 = op("Sub", step, c["one"])
    m = op("Div", op("Add", n, step_m1), step)
    j = op("Range", c["zero"], m, c["one"])
    us = op("Slice", u, c["zero1"], op("Reshape", m, c["shape1"]))
    r = op("Cast", op("Floor", op("Mul", us, op("Cast", step, to=onnx.TensorProto.FLOAT))),
           to=onnx.TensorProto.INT64)
    idx = op("Add", op("Mul", j, step), op("Min", r, step_m1))
    idx = op("Min", idx, op("Sub", n, c["one"]))
    drawn = op("Gather", op("Reshape", x, c["flat"]), idx, axis=0)
    return nodes, drawn, n


def graph_constants(graph: onnx.GraphProto) -> dict[str, str]:
    """The shared INT64 constants the drawing nodes read, added to ``graph`` once; their names."""
    names = {"values": VALUES, "vm1": VALUES - 1, "one": 1, "zero": 0}
    have = {i.name for i in graph.initializer}
    out = {}
    for key, v in names.items():
        out[key] = f"agc_sub/{key}"
        if out[key] not in have:
            graph.initializer.append(helper.make_tensor(out[key], onnx.TensorProto.INT64, [], [v]))
    for key, v in {"zero1": [0], "shape1": [1], "flat": [-1]}.items():
        out[key] = f"agc_sub/{key}"
        if out[key] not in have:
            graph.initializer.append(helper.make_tensor(out[key], onnx.TensorProto.INT64, [1], v))
    return out


class Draws:
    """The drawing plan of a statistics session: per streamed tensor, ``whole`` (at most
    ``VALUES`` values, static), ``gather`` (static size: positions fed as an input, one per
    size), ``graph`` (unknown size: :func:`add_nodes`) or ``numpy`` (opset below ``MIN_OPSET``:
    the tensor leaves the session whole and is drawn from in numpy)."""

    U = "agc_sub/u"

    def __init__(self, model: ir.Model, graph: onnx.GraphProto, names: list[str], opset: int):
        self.names, self.offsets, self.u = list(names), Offsets(), None
        sizes = _static_sizes(model)
        self.plan: list[tuple[str, int | None]] = []  # (kind, static size)
        self.outputs: list[str] = []
        self.nodes: list[onnx.NodeProto] = []
        self.gathers: set[int] = set()
        for k, name in enumerate(self.names):
            n = sizes.get(name)
            kind = ("whole" if n is not None and n <= VALUES else "numpy" if opset < MIN_OPSET
                    else "gather" if n is not None else "graph")
            if kind == "gather":
                if n not in self.gathers:
                    graph.input.append(helper.make_tensor_value_info(
                        f"agc_sub/idx{n}", onnx.TensorProto.INT64, [-(-n // _step(n))]))
                    self.gathers.add(n)
                nodes, drawn = add_gather(graph, name, f"agc_sub/idx{n}", f"agc_sub/{k}")
                size = f"agc_sub/{k}/size"  # checked against the shape the IR declared
                nodes.append(helper.make_node("Size", [name], [size], name=size))
                outs = [drawn, size]
            elif kind == "graph":
                if not any(i.name == self.U for i in graph.input):
                    graph.input.append(
                        helper.make_tensor_value_info(self.U, onnx.TensorProto.FLOAT, [VALUES]))
                nodes, drawn, size = add_nodes(graph, name, self.U, f"agc_sub/{k}")
                outs = [drawn, size]
            else:
                nodes, outs = [], [name]
            self.plan.append((kind, n))
            self.nodes += nodes
            self.outputs += outs

    def feed(self) -> dict[str, np.ndarray]:
        """This sample's offsets (and the positions of the static sizes) as session inputs."""
        self.u = self.offsets.next()
        feed = {f"agc_sub/idx{n}": indices(n, self.u) for n in self.gathers}
        if any(kind == "graph" for kind, _ in self.plan):
            feed[self.U] = self.u
        return feed

    def take(self, got: list[np.ndarray], ranges: dict[str, tuple]) -> dict[str, np.ndarray]:
        """``got``: the session's outputs for :attr:`outputs`; ``ranges``: each tensor's exact
        ``(lo, hi, ...)`` this sample. Returns the values each histogram gets."""
        out, i = {}, 0
        for name, (kind, n) in zip(self.names, self.plan):
            if kind in ("graph", "gather"):
                x, size = got[i], int(got[i + 1])
                i += 2
                if kind == "gather" and size != n:
                    raise ValueError(f"tensor {name!r} has {size} values, its shape says {n}")
            else:
                x, i = got[i].reshape(-1), i + 1
                size = x.size
                if kind == "numpy":
                    x = draw(x, self.u)
            out[name] = with_extremes(x, size, *ranges[name][:2])
        return out


def _static_sizes(model: ir.Model) -> dict[str, int]:
    """Values count of every value whose shape is static, when the graph inputs are too (feeds
    cannot change them then)."""
    def size(v):
        if v.shape is None or not all(isinstance(d, int) for d in v.shape):
            return None
        return int(np.prod(v.shape, dtype=np.int64))

    if any(size(v) is None for v in model.graph.inputs):
        return {}
    vals = [*model.graph.inputs, *(v for n in model.graph for v in n.outputs)]
    return {v.name: s for v in vals if (s := size(v)) is not None}


def cdf_error_bound(values: int, bins: int = 2048, delta: float = 1e-6) -> float:
    """``ε``: with probability ``1 - δ`` no bin edge's CDF (fraction of the mass) is off by more
    than ``ε`` (plus ``1/m`` a sample) when ``values`` values were drawn in all (module doc)."""
    return math.sqrt(math.log(2 * (bins + 1) / delta) / (2 * values))

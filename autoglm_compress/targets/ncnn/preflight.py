"""The ncnn check's pre-flight: lower the prepared FP32 IR and run it once in ncnn, before any
calibration, so a graph ncnn cannot run is a refusal (exit 2) rather than a failed verification
after the work.

The lowering itself refuses a structurally inconsistent ``.param`` (``NcnnGraph.problem``: a blob
written twice, read before written, read by several layers without a Split, a graph output read by a
layer). The run (FP16 storage for an FP16 run, else FP32) then feeds random inputs of the prepared IR's static shapes (inputs with an unknown
dim are not run) and extracts every output in the runtime the artifact will be verified in: whatever
ncnn says (an extract that fails, a load error) is one line naming the output's node.

INT8 is pre-flighted too: what ncnn checks of an INT8 graph — its int8 layers (conv / FC / LSTM
weights and scales, int8 Embed tables), the requantize fusion between int8 convs — does not depend on
the scale values, so the prepared IR is quantized with placeholder ranges ([-1, 1] for every
activation the ncnn scheme quantizes, ``--keep-fp32`` honoured), lowered INT8 and run once with
``use_int8_inference``. A failure is bisected to the int8 layer that causes it (the first k int8
layers int8, the rest float: the smallest failing k) and refused naming that node and
``--keep-fp32 NODE``. :func:`int8_failure` does the same for the calibrated artifact when its
verification fails (the scales themselves at fault: exit 2, nothing written, not an internal error).
"""

from __future__ import annotations

import fnmatch
import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir

from autoglm_compress.errors import UnsupportedOpError

__all__ = ["preflight", "int8_failure", "kept_float"]

logger = logging.getLogger(__name__)

_PLACEHOLDER = (-1.0, 1.0)  # any finite range: ncnn checks structure and int8 params, not values


def _feed(model: ir.Model) -> dict[str, np.ndarray] | None:
    rng = np.random.default_rng(0)
    feed = {}
    for v in model.graph.inputs:
        if v.shape is None or not all(isinstance(d, int) for d in v.shape):
            return None
        dt = v.dtype.numpy() if v.dtype is not None else np.float32
        shape = tuple(int(d) for d in v.shape)
        feed[v.name] = rng.random(shape).astype(dt) if np.issubdtype(dt, np.floating) \
            else np.zeros(shape, dt)  # token ids: 0 is in every table
    return feed


def _culprit(model: ir.Model, message: str) -> ir.Node | None:
    """The node writing the output (or any value) the runtime's message names in quotes."""
    quoted = set(re.findall(r"'([^']+)'", message))
    for v in model.graph.outputs:
        if v.name in quoted and v.producer() is not None:
            return v.producer()
    return next((n for n in model.graph for o in n.outputs if o.name in quoted), None)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _run_error(model: ir.Model, lowered: tuple, prec: str, feeds: list[dict],
               threads: int) -> str | None:
    """Run the lowered (``.param``, ``.bin``, io) on ``feeds`` in ncnn: the first line of what
    ncnn says when it cannot load or run it, else None."""
    from autoglm_compress.targets.ncnn.ncnn_run import ncnn_runner

    param, data, io = lowered
    io = {**io, "output_shapes": {v.name: [-1] for v in model.graph.outputs}}
    with tempfile.TemporaryDirectory(prefix="agc_ncnn_check_") as tmp:
        pp, pb = Path(tmp) / "check.param", Path(tmp) / "check.bin"
        pp.write_text(param)
        pb.write_bytes(data)
        try:
            run = ncnn_runner(pp, pb, io, prec, threads)()
            for feed in feeds:
                run(feed)
        except Exception as e:  # noqa: BLE001 - whatever the runtime says, one line
            return _first_line(e).replace(f"{pp.name} / {pb.name}",
                                          f"the {prec.upper()} .param / .bin")
    return None


def kept_float(model: ir.Model, patterns) -> frozenset[str]:
    """Names of the LSTM / GRU / RNN / embedding-Gather nodes ``--keep-fp32`` patterns match
    (node name or op type, globs): the ncnn lowering quantizes these itself, not from Q/DQ."""
    own = ("LSTM", "GRU", "RNN", "Gather")
    return frozenset(n.name for n in model.graph if n.op_type in own and n.name and any(
        fnmatch.fnmatchcase(n.name, p) or fnmatch.fnmatchcase(n.op_type, p) for p in patterns))


def _placeholder_int8(model: ir.Model, keep_fp32) -> ir.Model:
    """A copy of ``model`` quantized under the ncnn scheme with placeholder activation ranges."""
    from autoglm_compress.passes.quantize import QuantizeConfig, QuantizePass
    from autoglm_compress.targets.ncnn.scheme import ncnn_scheme

    q = ir.from_proto(ir.to_proto(model))
    QuantizePass(QuantizeConfig(scheme=ncnn_scheme(), keep_fp32=tuple(keep_fp32),
                                ranges=lambda names: dict.fromkeys(names, _PLACEHOLDER)))(q)
    return q


def _bisect_int8(model: ir.Model, keep: frozenset[str], fails: Callable) -> str | None:
    """The int8 layer (node name) whose int8 form makes ``fails(keep_float)`` true: the last of
    the smallest failing prefix of the int8 layers in graph order (the others float); None when
    the graph fails with every layer float too."""
    from autoglm_compress.targets.ncnn.lower import lower_to_ncnn

    order = lower_to_ncnn(model, "int8", keep_float=keep)[2]["int8"]
    if not order or fails(keep | frozenset(order)):
        return None
    lo, hi = 0, len(order)  # the first lo layers int8 run; the first hi fail
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(keep | frozenset(order[mid:])):
            hi = mid
        else:
            lo = mid
    return order[hi - 1]


def int8_failure(model: ir.Model, keep: frozenset[str], feeds: list[dict], threads: int,
                 label: str, alternatives: str, stage: str) -> UnsupportedOpError | None:
    """None when ncnn runs ``model`` (a QDQ IR under the ncnn scheme) lowered INT8 on ``feeds``;
    else the refusal naming the int8 layer at fault (bisected) and what to do."""
    from autoglm_compress.targets.ncnn.lower import lower_to_ncnn

    def error(keep_float: frozenset[str]) -> str | None:
        return _run_error(model, lower_to_ncnn(model, "int8", keep_float=keep_float), "int8",
                          feeds, threads)

    first = error(keep)
    if first is None:
        return None
    name = _bisect_int8(model, keep, lambda k: error(k) is not None)
    node = next((n for n in model.graph if n.name == name), None) if name else None
    where = f"{label} (int8)"
    if node is None:
        return UnsupportedOpError(
            "?", "?", where,
            f"ncnn cannot run the INT8 lowering ({first}; {stage}), not even with every "
            f"conv / FC / LSTM / embedding float: this is a bug of the ncnn lowering (please "
            f"report it): use --fp16, {alternatives}")
    return UnsupportedOpError(
        node.op_type, node.name, where,
        f"ncnn cannot run the graph once this layer is int8 ({first}; {stage}; the int8 "
        f"layers before it run): keep it float with --keep-fp32 '{node.name}', or use "
        f"{alternatives}")


def preflight(model: ir.Model, precision: str, label: str, alternatives: str, threads: int,
              keep_fp32=()) -> None:
    """Lower ``model`` (the prepared FP32 IR) to ncnn and run it once — as FP16 for an FP16 run,
    else FP32 — and refuse what ncnn cannot run; for INT8 then also its INT8 lowering with
    placeholder scales (``keep_fp32``: the ``--keep-fp32`` patterns, kept float as the run will)."""
    prec = "fp16" if precision == "fp16" else "fp32"
    from autoglm_compress.targets.ncnn.lower import lower_to_ncnn

    lowered = lower_to_ncnn(model, prec)  # refuses an inconsistent .param
    feed = _feed(model)
    if feed is None:
        logger.info("ncnn pre-flight: an input has an unknown dim, the lowering was not run")
        return
    first = _run_error(model, lowered, prec, [feed], threads)
    if first is not None:
        node = _culprit(model, first)
        raise UnsupportedOpError(
            node.op_type if node is not None else "?", node.name if node is not None else "?",
            f"{label} ({prec})",
            f"ncnn cannot run the lowered model ({first}; found before calibration); this "
            f"is a bug of the ncnn lowering (please report it): use {alternatives}",
        )
    if precision != "int8":
        return
    q = _placeholder_int8(model, keep_fp32)
    found = int8_failure(q, kept_float(model, keep_fp32), [feed], threads, label, alternatives,
                         "found before calibration, with placeholder scales")
    if found is not None:
        raise found

"""The ncnn check's pre-flight: lower the prepared FP32 IR and run it once in ncnn, before any
calibration, so a graph ncnn cannot run is a refusal (exit 2) rather than a failed verification
after the work.

The lowering itself refuses a structurally inconsistent ``.param`` (``NcnnGraph.problem``: a blob
written twice, read before written, read by several layers without a Split, a graph output read by a
layer). The run (FP16 storage for an FP16 run, else FP32) then feeds random inputs of the prepared IR's static shapes (inputs with an unknown
dim are not run) and extracts every output in the runtime the artifact will be verified in: whatever
ncnn says (an extract that fails, a load error) is one line naming the output's node.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir

from autoglm_compress.errors import UnsupportedOpError

__all__ = ["preflight"]

logger = logging.getLogger(__name__)


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


def preflight(model: ir.Model, precision: str, label: str, alternatives: str, threads: int) -> None:
    """Lower ``model`` (the prepared FP32 IR) to ncnn and run it once — as FP16 for an FP16 run,
    else FP32 (INT8 has no scales before calibration) — and refuse what ncnn cannot run."""
    prec = "fp16" if precision == "fp16" else "fp32"
    from autoglm_compress.targets.ncnn.lower import lower_to_ncnn
    from autoglm_compress.targets.ncnn.ncnn_run import ncnn_runner

    param, data, io = lower_to_ncnn(model, prec)  # refuses an inconsistent .param
    feed = _feed(model)
    if feed is None:
        logger.info("ncnn pre-flight: an input has an unknown dim, the lowering was not run")
        return
    io["output_shapes"] = {v.name: [-1] for v in model.graph.outputs}
    with tempfile.TemporaryDirectory(prefix="agc_ncnn_check_") as tmp:
        pp, pb = Path(tmp) / "check.param", Path(tmp) / "check.bin"
        pp.write_text(param)
        pb.write_bytes(data)
        try:
            ncnn_runner(pp, pb, io, prec, threads)()(feed)
        except Exception as e:  # noqa: BLE001 - whatever the runtime says, one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            node = _culprit(model, first)
            raise UnsupportedOpError(
                node.op_type if node is not None else "?", node.name if node is not None else "?",
                f"{label} ({prec})",
                f"ncnn cannot run the lowered model ({first}; found before calibration); this "
                f"is a bug of the ncnn lowering (please report it): use {alternatives}",
            ) from None

"""An onnxruntime runner for ONNX artifacts (x86 and cuda verify through it on CPU)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ort_runner"]


def ort_runner(path: Path, simulate: bool = False):
    """``make_runner`` for :func:`~autoglm_compress.targets.base.verify_in_runtime`: a session on
    the file, returning a function feed → outputs (graph output order); ``simulate``: the QDQ
    graph as written (see :func:`~autoglm_compress.ir_utils.ort_session`)."""
    from autoglm_compress.ir_utils import ort_run, ort_session

    def make():
        sess = ort_session(str(path), simulate=simulate)
        return lambda feed: ort_run(sess, feed)

    return make

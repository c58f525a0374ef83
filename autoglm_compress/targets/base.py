"""What every target provides: legalize the IR, emit an artifact atomically, verify it in its runtime."""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx_ir as ir

__all__ = ["Artifact", "Target", "VerifyContext", "sha256_of"]


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass
class Artifact:
    target: str
    precision: str
    path: Path
    size_bytes: int = 0
    sha256: str = ""
    runtime: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)
    fidelity: dict = dataclasses.field(default_factory=dict)
    latency: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    def finalize(self) -> Artifact:
        self.size_bytes = self.path.stat().st_size
        self.sha256 = sha256_of(self.path)
        return self

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


@dataclasses.dataclass
class VerifyContext:
    """What verification compares against: the FP32 IR, sample feeds and their reference outputs."""

    reference_model: ir.Model
    feeds: list[dict[str, np.ndarray]]
    reference_outputs: list[list[np.ndarray]]
    output_names: list[str]
    labels: np.ndarray | None = None
    latency_repeats: int = 30
    batch: int = 1  # rows per sample feed (a fixed batch > 1): top-1 and labels are per row
    fp32_session: object = None  # onnxruntime session of the FP32 IR, made once and shared

    def reference_session(self):
        """The FP32 model in onnxruntime (latency side by side), built at most once per run."""
        if self.fp32_session is None:
            from autoglm_compress.ir_utils import ort_session

            self.fp32_session = ort_session(self.reference_model)
        return self.fp32_session


class Target(abc.ABC):
    name: ClassVar[str] = ""
    runtime: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ()

    def min_opset(self, precision: str) -> int:
        """The opset the artifact needs: per-channel Q/DQ (the ``axis`` attribute) needs 13."""
        return 13 if precision == "int8" else 7

    def legalize(self, model: ir.Model, precision: str) -> list[str]:
        """Apply target rules in place; return notes for the report. Raise UnsupportedOpError early."""
        return []

    @abc.abstractmethod
    def emit(self, model: ir.Model, precision: str, out_dir: Path, stem: str) -> Artifact:
        """Write the artifact for ``model`` atomically into ``out_dir``."""

    @abc.abstractmethod
    def verify(self, artifact: Artifact, ctx: VerifyContext) -> None:
        """Run the artifact in its runtime; fill ``artifact.fidelity`` and ``artifact.latency``."""

"""The ``fake`` target: the lowered IR as ONNX plus a JSON sidecar (two files, roles "model" and
"meta"), verified through the shared verifier with its own runner (onnxruntime on the file)."""

from __future__ import annotations

import json
from pathlib import Path

from autoglm_compress.ir_utils import save_atomic, write_bytes_atomic
from autoglm_compress.targets.base import Artifact, Target, verify_in_runtime
from autoglm_compress.targets.ort_runner import ort_runner
from fake_target.options import Options


class FakeTarget(Target):
    name = "fake"
    runtime = "onnxruntime (fake target)"
    precisions = ("fp32", "fp16")
    options_class = Options
    lowering_file = Path(__file__).with_name("lowering.toml")
    runs: list[str] = []  # the steps the compress flow called, in order (the test reads them)

    def check(self, model, precision):
        FakeTarget.runs.append("check")
        return super().check(model, precision)

    def prepare(self, model, precision, stats):
        FakeTarget.runs.append("prepare")
        return ["fake: prepared"]

    def validate(self, model, precision):
        FakeTarget.runs.append("validate")
        return []

    def emit(self, model, precision, out_dir, stem):
        FakeTarget.runs.append("emit")
        onnx_path = out_dir / f"{stem}.fake.{precision}.onnx"
        meta_path = out_dir / f"{stem}.fake.{precision}.json"
        save_atomic(model, onnx_path)
        meta = {"nodes": model.graph.num_nodes(), "precision": precision}
        write_bytes_atomic(meta_path, json.dumps(meta, indent=self.options.sidecar_indent).encode())
        return Artifact(
            self.name, precision, {"model": onnx_path, "meta": meta_path}, runtime=self.runtime
        ).finalize()

    def verify(self, artifact, ctx):
        FakeTarget.runs.append("verify")
        verify_in_runtime(ort_runner(artifact.files["model"]), artifact, ctx, "onnxruntime CPU")


TARGET = FakeTarget

"""Distillation under torchrun: 2 CPU processes (DDP, gloo) train to the same student as 1 process,
and only rank 0 writes (prune 0.5 → distill → INT8 on the digits CNN)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import CALIB, DEMO, EVAL, ROOT

ARGS = [str(DEMO), "--prune", "0.5", "--distill-steps", "80", "--distill-samples", "96",
        "--int8", "--target", "x86", "--calib", str(CALIB), "--eval", str(EVAL), "--samples", "200",
        "--full-range"]


def _cli() -> str:
    return str(Path(sys.executable).with_name("autoglm-compress"))


def _run(cmd, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*cmd, *ARGS, "-o", str(out)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def _distill(rep: dict) -> dict:
    return next(p["stats"] for p in rep["passes"] if p["name"] == "distill")


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed beside this python")
@pytest.mark.slow
def test_two_processes_train_the_same_student(tmp_path):
    one = _run([_cli()], tmp_path / "one")
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    two = _run([torchrun, "--standalone", "--nproc-per-node", "2", _cli()],
               tmp_path / "two")
    d1, d2 = _distill(one), _distill(two)
    assert d1["world_size"] == 1 and d2["world_size"] == 2 and "DistributedDataParallel" in d2[
        "distributed"]
    assert d2["loss_after"] < 0.5 * d2["loss_before"]
    assert d2["loss_after"] == pytest.approx(d1["loss_after"], rel=1e-3)
    # rank 0 alone wrote: one report, the artifacts of one run
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())
    # the two INT8 artifacts compute the same function
    data = np.load(EVAL)["x"][:64]
    outs = []
    for rep in (one, two):
        path = rep["artifacts"][0]["files"]["model"]["path"]
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        outs.append(np.concatenate([s.run(None, {name: data[i:i + 1]})[0] for i in range(64)]))
    assert np.mean(outs[0].argmax(1) == outs[1].argmax(1)) >= 0.98
    np.testing.assert_allclose(outs[1], outs[0], atol=0.05 * np.abs(outs[0]).max())
    acc = [a["fidelity"].get("accuracy") for a in (one["artifacts"][0], two["artifacts"][0])]
    assert acc[0] is None or abs(acc[0] - acc[1]) <= 0.01

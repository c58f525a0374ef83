"""The INT8 lowering is a plan plus the strategies a target registers (int8_strategies.py): a
target's own strategy runs in its phase, on the plan, and its result reaches the artifact."""

from __future__ import annotations

import pytest
from conftest import calibrated_digits
from qhelpers import _ctx

from autoglm_compress import lowering
from autoglm_compress.config import CompressConfig, Int8Config
from autoglm_compress.int8_strategies import (
    DEFAULT_STRATEGIES,
    ArmLatencyGuard,
    CosineFallback,
    LatencyGuard,
    ReconstructChoice,
    Strategy,
)
from autoglm_compress.quantization.qdq_read import int8_split
from autoglm_compress.targets.tflite.target import TFLiteTarget
from autoglm_compress.targets.x86.target import X86Target


@pytest.fixture(scope="module")
def digits():
    return calibrated_digits(64, 50)


def test_targets_register_their_strategies():
    assert X86Target().int8_strategies() == (*DEFAULT_STRATEGIES, LatencyGuard)
    # TFLite: the ARM latency guard (aarch64 instruction counts; acts only with --latency-guard)
    assert TFLiteTarget().int8_strategies() == (*DEFAULT_STRATEGIES, ArmLatencyGuard)
    assert DEFAULT_STRATEGIES.index(ReconstructChoice) < DEFAULT_STRATEGIES.index(CosineFallback)


class KeepFirstConv(Strategy):
    """A target's own decision: the first Conv stays float (recorded, with a note)."""

    name = "keep_first_conv"
    phase = "after"

    def run(self, plan):
        first = next(n.name for n in plan.model.graph if n.op_type == "Conv")
        plan.keep.append(first)
        plan.q, _ = plan.quantize()
        plan.stats["keep_first_conv"] = first
        plan.notes.append(f"{first} kept float by the target")


class _Target(X86Target):
    def int8_strategies(self):
        return (*DEFAULT_STRATEGIES, KeepFirstConv)


def test_a_registered_strategy_runs_on_the_plan(digits):
    model, stats, *_ = digits
    target = _Target(cpu="vnni")
    ctx = _ctx(stats, target)
    low = lowering.lower_for_target(model, target, "int8", ctx,
                                    CompressConfig(model="m", precision="int8"))
    first = next(n.name for n in model.graph if n.op_type == "Conv")
    assert low.records[0].stats["keep_first_conv"] == first  # in the quantize record
    assert first not in int8_split(low.model).int8 and int8_split(low.model).int8
    assert low.notes == [f"{first} kept float by the target"]


def test_quantize_phase_alone_is_the_public_quantize(digits):
    model, stats, *_ = digits
    target = X86Target(cpu="vnni")
    q, rec = lowering.quantize(model, target, _ctx(stats, target), Int8Config(reconstruct=False),
                               min_cosine=0.5)
    assert rec.name == "quantize[x86]" and rec.stats["calibration_cosine"] >= 0.5
    assert rec.stats["fell_back"] == [] and rec.config["reconstruct"] is False

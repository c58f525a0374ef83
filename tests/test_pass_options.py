"""One option is one field: every pass option is set through exactly one config field (CLI flag,
recipe key, API keyword) or filled by the run, and the two defaults agree (pass_options.py)."""

from __future__ import annotations

import dataclasses

import pytest

from autoglm_compress.config import CompressConfig
from autoglm_compress.config_build import flat_fields, from_flat
from autoglm_compress.pass_options import ENABLED_VALUE, PASS_OPTIONS, RUN_FILLED, pass_kwargs
from autoglm_compress.passes.base import get_pass


def _section_field(path: str) -> dataclasses.Field:
    cls, parts = CompressConfig, path.split(".")
    for part in parts[:-1]:
        cls = {f.name: f for f in dataclasses.fields(cls)}[part].default_factory().__class__
    return {f.name: f for f in dataclasses.fields(cls)}[parts[-1]]


@pytest.mark.parametrize("name", sorted(PASS_OPTIONS))
def test_every_pass_option_is_one_config_field_with_the_same_default(name):
    fields = {f.name: f for f in dataclasses.fields(get_pass(name).config_class)}
    flat_paths = {".".join(ff.path) for ff in flat_fields().values()}
    mapped, filled = PASS_OPTIONS[name], RUN_FILLED.get(name, frozenset())
    assert set(fields) == set(mapped) | filled, f"{name}: unmapped {set(fields) - set(mapped)}"
    for key, path in mapped.items():
        sect = _section_field(path)
        assert path in flat_paths, f"{path} has no CLI / recipe name"
        if sect.default is None or (name, key) in ENABLED_VALUE:
            continue  # None: "not given", the pass's default applies
        assert sect.default == fields[key].default, (name, key, sect.default, fields[key].default)


def test_options_that_had_no_flag_can_be_set():
    cfg = from_flat("m.onnx", sparsity=0.3, sparsity_scope="global", distill=True,
                    distill_scaled_lr=False, distill_device="cpu", qat_steps=2,
                    qat_learn_scales=False, qat_scale_lr=0.01)
    assert pass_kwargs(cfg, "sparsify") == {"sparsity": 0.3, "scope": "global"}
    d = pass_kwargs(cfg, "distill")
    assert d["scaled_lr"] is False and d["device"] == "cpu" and d["steps"] == 300
    assert d["samples"] == cfg.calibration.samples  # no --train-data: the calibration samples
    q = pass_kwargs(cfg, "qat")
    assert q["learn_scales"] is False and q["scale_lr"] == 0.01 and q["steps"] == 2


def test_a_pass_named_alone_runs_with_its_own_defaults():
    cfg = from_flat("m.onnx", passes=("cleanup", "prune", "smoothquant"))
    assert "ratio" not in pass_kwargs(cfg, "prune")  # PruneConfig's 0.5
    assert pass_kwargs(cfg, "smoothquant") == {}

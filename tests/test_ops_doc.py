"""docs/arm_ops.md and docs/cli.md are generated (``make docs``) from the emitters' rules and the
config tree, and match them."""

from pathlib import Path

from autoglm_compress.targets.ncnn.lower import RULES as NCNN
from autoglm_compress.targets.ops_doc import render
from autoglm_compress.targets.tflite.lower import RULES as TFLITE

DOC = Path(__file__).resolve().parents[1] / "docs" / "arm_ops.md"


def test_docs_arm_ops_is_generated_from_the_rules():
    assert DOC.read_text() == render(), "docs/arm_ops.md is stale: run `make docs`"


def test_every_public_op_of_each_rule_set_is_in_the_doc_once():
    text = render()
    for rules in (TFLITE, NCNN):
        assert len(rules.table()) == len(rules.ops())
        for op in rules.ops():
            assert f"| {op} |" in text
    assert "QuantizeLinear" not in text  # internal: only in this tool's own INT8 graphs


def test_docs_cli_is_generated_from_the_config():
    from autoglm_compress.cli_doc import render as render_cli
    from autoglm_compress.config_build import flat_fields
    from autoglm_compress.targets.registry import target_names

    text = render_cli()
    assert (DOC.parent / "cli.md").read_text() == text, "docs/cli.md is stale: run `make docs`"
    for ff in flat_fields(tuple(target_names())).values():
        if ff.key != "model":
            assert f"| `{ff.key}` |" in text, ff.key

"""CompressConfig: flat keywords, recipes, the generated CLI, usage errors before any loading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autoglm_compress.cli import main
from autoglm_compress.config import CompressConfig, Int8Config
from autoglm_compress.config_build import check_combinations, from_flat, to_dict
from autoglm_compress.errors import ConfigError
from autoglm_compress.recipe import dump_recipe, key_line, load_recipe

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "digits_cnn.pt"
CALIB = ROOT / "examples" / "digits_calib.npz"


def test_flat_keywords_fill_sections():
    cfg = from_flat("m.onnx", int8=True, calib="c.npz", calib_samples=32, min_cosine=0.99,
                    keep_fp32=["Gemm"], reduce_range=False, image_mean="0.5,0.5,0.5")
    assert cfg.precision == "int8"
    assert cfg.calibration.data == "c.npz" and cfg.calibration.samples == 32
    assert cfg.gates.min_cosine == 0.99 and cfg.int8.keep_fp32 == ("Gemm",)
    assert cfg.target_options["x86"].reduce_range is False
    assert cfg.calibration.image.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("value", "want"), [("x86", ("x86",)), ("x86,cuda", ("x86", "cuda")), (["cuda"], ("cuda",))]
)
def test_string_for_tuple_is_never_split_into_letters(value, want):
    assert from_flat("m.onnx", targets=value).targets == want


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"min_cosine": 2}, ["min_cosine", "out of range"]),
        ({"calib_samples": "many"}, ["calib_samples", "integer"]),
        ({"calib_method": "magic"}, ["calib_method", "minmax"]),
        ({"colour": True}, ["colour", "unknown"]),
        ({"fp16": True, "int8": True}, ["exclusive"]),
        ({"image_size": "big"}, ["image_size"]),
    ],
)
def test_bad_values_name_the_key(kw, words):
    with pytest.raises(ConfigError) as e:
        from_flat("m.onnx", **kw)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_sections_and_overrides_of_a_config():
    base = CompressConfig(model="m.onnx", precision="int8", int8=Int8Config(per_tensor=True))
    cfg = from_flat(None, base=base, calib="c.npz")
    assert cfg.int8.per_tensor and cfg.calibration.data == "c.npz" and cfg.model == "m.onnx"


def test_recipe_round_trip_and_line_numbers(tmp_path):
    cfg = from_flat(str(DEMO), int8=True, calib=str(CALIB), qat_steps=5, min_cosine=0.9,
                    targets="x86,cuda", build_engine=False, reduce_range=False)
    text = dump_recipe(cfg)
    (tmp_path / "r.toml").write_text(text)
    back = load_recipe(tmp_path / "r.toml")
    assert back == cfg
    assert "[qat]" in text and "steps = 5" in text and "[target_options.x86]" in text
    bad = text.replace("steps = 5", "steps = -3")
    (tmp_path / "bad.toml").write_text(bad)
    with pytest.raises(ConfigError) as e:
        load_recipe(tmp_path / "bad.toml")
    line = bad.splitlines().index("steps = -3") + 1
    assert f"bad.toml:{line}: qat.steps" in str(e.value) and "out of range" in str(e.value)
    (tmp_path / "typo.toml").write_text(text.replace("min_cosine = 0.9", "min_cosin = 0.9"))
    with pytest.raises(ConfigError, match=r"typo.toml:\d+: gates.min_cosin: unknown key"):
        load_recipe(tmp_path / "typo.toml")


def test_key_line_finds_dotted_and_table_keys():
    text = 'model = "m"\n[int8]\nper_tensor = true\n[calibration.image]\nmean = [0.5]\n'
    assert key_line(text, ("int8", "per_tensor")) == 3
    assert key_line(text, ("calibration", "image", "mean")) == 5
    assert key_line(text, ("model",)) == 1


def test_recipe_paths_are_relative_to_cwd_or_base_dir(tmp_path):
    sub = tmp_path / "recipes"
    sub.mkdir()
    (sub / "r.toml").write_text('model = "m.onnx"\n[calibration]\ndata = "pkg.mod:fn"\n')
    assert load_recipe(sub / "r.toml").model == "m.onnx"  # as typed: the current folder's
    (sub / "b.toml").write_text('base_dir = ".."\nmodel = "m.onnx"\n[calibration]\ndata = "pkg.mod:fn"\n')
    cfg = load_recipe(sub / "b.toml")
    assert Path(cfg.model) == tmp_path / "m.onnx"
    assert cfg.calibration.data == "pkg.mod:fn"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--min-cosine", "2"], ["--min-cosine", "out of range"]),
        (["--fp16", "--latency-guard"], ["--latency-guard", "--int8"]),
        (["--int8"], ["calibration data"]),
        (["--max-drop", "0.1"], ["--eval"]),
        (["--target", "arm9"], ["unknown target 'arm9'"]),
        (["--qat-steps", "10"], ["--int8"]),
    ],
)
def test_cli_usage_errors_exit_2_before_loading(args, words, capsys, monkeypatch):
    import autoglm_compress.frontend as fe

    monkeypatch.setattr(fe, "load", lambda *a, **k: pytest.fail("model loaded before the check"))
    rc = main([str(DEMO), *args, "-o", "/tmp/never-used-out"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and all(w in err for w in words), err


def test_missing_model_is_one_line(capsys, tmp_path):
    assert main([str(tmp_path / "nope.pt"), "-o", str(tmp_path)]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_help_is_grouped_and_fast_to_import():
    code = (
        "import sys; from autoglm_compress.cli import main\n"
        "rc = main(['--help']); rc2 = main(['compress', '--help'])\n"
        "bad = [m for m in ('torch', 'onnx_ir', 'onnxruntime') if m in sys.modules]\n"
        "print('HEAVY', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout
    for heading in ("Calibration:", "Image preprocessing", "INT8:", "Quality gates (exit 3):",
                    "Target x86:", "Target cuda:", "Examples:", "--image-mean", "--reduce-range"):
        assert heading in out.stdout, heading


def test_print_recipe_prints_only_what_was_typed(capsys):
    assert main([str(DEMO), "--int8", "--calib", str(CALIB), "--full-range", "--print-recipe"]) == 0
    text = capsys.readouterr().out
    assert 'precision = "int8"' in text and "reduce_range = false" in text
    assert "calib_method" not in text and "method" not in text


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    import autoglm_compress.api as api

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "compress", interrupted)
    assert main([str(DEMO), "-o", "/tmp/x-ctrlc"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err


def test_ignored_options_are_warned(caplog):
    cfg = from_flat(str(DEMO), fp16=True, per_tensor=True, calib_method="mse")
    warnings = check_combinations(cfg)
    assert any("--per-tensor" in w and "--calib-method" in w for w in warnings)


@pytest.mark.slow
def test_recipe_reproduces_cli_run_byte_identically(tmp_path, capsys):
    args = [str(DEMO), "--int8", "--calib", str(CALIB), "--calib-samples", "64", "--samples", "32",
            "--target", "x86", "--target", "cuda", "--latency-repeats", "3"]
    assert main([*args, "-o", str(tmp_path / "cli"), "--json"]) == 0
    cli_report = json.loads(capsys.readouterr().out)
    assert main([*args, "-o", str(tmp_path / "cli"), "--print-recipe"]) == 0
    (tmp_path / "r.toml").write_text(capsys.readouterr().out)
    assert main(["run", str(tmp_path / "r.toml"), "-o", str(tmp_path / "rec"), "--json"]) == 0
    rec_report = json.loads(capsys.readouterr().out)
    sha = [[a["sha256"] for a in r["artifacts"]] for r in (cli_report, rec_report)]
    assert sha[0] == sha[1] and len(sha[0]) == 2
    assert rec_report["run"]["recipe"]["precision"] == "int8"
    assert cli_report["run"]["command"][:1] == [str(DEMO)]


def test_image_preprocessing_flags_reach_calibration(tmp_path):
    from PIL import Image

    from autoglm_compress.api import image_preprocess
    from autoglm_compress.calibration.data import open_calibration_source

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = from_flat("m.onnx", calib=str(folder), image_mean="0.5,0.5,0.5", image_std="0.5,0.5,0.5")
    model = _rgb_model()
    arrays = [f["x"] for f in open_calibration_source(
        cfg.calibration.data, model, preprocess=image_preprocess(cfg.calibration)).take(3)]
    lo, hi = min(a.min() for a in arrays), max(a.max() for a in arrays)
    assert lo < -0.9 and hi > 0.9 and lo >= -1.0 and hi <= 1.0
    plain = [f["x"] for f in open_calibration_source(cfg.calibration.data, model).take(3)]
    assert min(a.min() for a in plain) >= 0.0


def _rgb_model():
    from onnx import TensorProto, helper

    from autoglm_compress.ir_utils import from_proto

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    return from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_to_dict_defaults_is_complete():
    tree = to_dict(CompressConfig(model="m"), defaults=True)
    assert tree["calibration"]["image"]["channel_order"] == "RGB" and tree["qat"]["steps"] == 0


def test_demo_recipe_is_what_its_command_line_means(capsys):
    """examples/demo-int8.toml (run by `make demo`) stays the recipe of the documented command."""
    args = ["examples/digits_cnn.pt", "--int8", "--target", "x86", "--target", "cuda", "--calib",
            "examples/digits_calib.npz", "--eval", "examples/digits_eval.npz", "--samples", "500",
            "--qat-steps", "200", "-o", "out/demo-int8", "--print-recipe"]
    import os

    here = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(args) == 0
    finally:
        os.chdir(here)
    assert capsys.readouterr().out == (ROOT / "examples" / "demo-int8.toml").read_text()

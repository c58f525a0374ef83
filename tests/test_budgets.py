"""CI budgets on the bundled digits example: --max-size (bytes or a share of the source),
--max-latency-ratio, --min-cosine; exit 3 with one line per failed budget and the artifacts still
written; every budget in the report's ``gates``; bad values exit 2 before anything is loaded;
``--json`` puts only the JSON summary on stdout."""

from __future__ import annotations

import json

import pytest
from conftest import CALIB, DEMO, run_cli

from autoglm_compress.errors import EXIT_BAD_INPUT, EXIT_QUALITY, ConfigError
from autoglm_compress.gates import Budgets, evaluate, parse_size
from autoglm_compress.report import validate_report

INT8 = ["--int8", "--calib", CALIB, "--calib-samples", "32", "--samples", "16",
        "--latency-repeats", "3", "--target", "x86"]
ART = "digits_cnn.x86.int8.onnx"


def _report(out):
    return json.loads((out / "report.json").read_text())


def _lines(r):
    return [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]


@pytest.fixture(scope="module")
def passing(tmp_path_factory):
    """Every budget met, with --json: (CompletedProcess, out folder)."""
    out = tmp_path_factory.mktemp("pass") / "o"
    r = run_cli(DEMO, *INT8, "--max-size", "1MB", "--max-latency-ratio", "1000",
                "--min-cosine", "0.9", "--json", "-o", out)
    return r, out


@pytest.fixture(scope="module")
def over_size(tmp_path_factory):
    out = tmp_path_factory.mktemp("size") / "o"
    return run_cli(DEMO, *INT8, "--max-size", "2KB", "--min-cosine", "0.9", "-o", out), out


@pytest.fixture(scope="module")
def two_failures(tmp_path_factory):
    """A ratio of the source's size and an impossible latency ratio, both failing."""
    out = tmp_path_factory.mktemp("two") / "o"
    r = run_cli(DEMO, *INT8, "--max-size", "0.05", "--max-latency-ratio", "0.0001", "-o", out)
    return r, out


def test_passing_budgets_exit_0_and_every_gate_listed(passing):
    r, out = passing
    assert r.returncode == 0, r.stderr
    rep = _report(out)
    validate_report(rep)
    assert sorted(g["name"] for g in rep["gates"]) == ["max_latency_ratio", "max_size", "min_cosine"]
    assert all(g["passed"] and g["artifact"] == ART for g in rep["gates"])
    size = next(g for g in rep["gates"] if g["name"] == "max_size")
    assert size["value"] == rep["artifacts"][0]["size_bytes"] and size["limit"] == 1_000_000
    assert rep["quality_gate"]["passed"] is True


def test_json_stdout_is_only_the_summary(passing):
    r, out = passing
    summary = json.loads(r.stdout)  # nothing else on stdout
    assert summary["exit_code"] == 0 and summary["passed"] and summary["errors"] == []
    a = summary["artifacts"][0]
    src = summary["source"]["size_bytes"]
    assert a["size_bytes"] == (out / ART).stat().st_size and src == DEMO.stat().st_size
    assert a["size_ratio_vs_source"] == pytest.approx(a["size_bytes"] / src, abs=1e-4)
    assert 0.9 < a["cosine_min"] <= 1.0 and a["latency_ratio_vs_fp32"] > 0
    assert len(summary["gates"]) == 3 and summary["report"].endswith("report.json")
    assert "cosine" in r.stderr and "vs fp32" in r.stderr  # the table went to stderr


def test_size_budget_fails_with_one_line_and_artifacts_written(over_size):
    r, out = over_size
    assert r.returncode == EXIT_QUALITY, r.stderr
    lines = _lines(r)
    assert len(lines) == 1, r.stderr
    assert "--max-size" in lines[0] and ART in lines[0]
    size = (out / ART).stat().st_size  # still written: a CI step inspects it
    assert str(size) in lines[0] and "2KB" in lines[0] and "2000 bytes" in lines[0]
    rep = _report(out)
    validate_report(rep)
    gates = {g["name"]: g for g in rep["gates"]}
    assert gates["max_size"]["passed"] is False and gates["max_size"]["value"] == size
    assert gates["min_cosine"]["passed"] is True  # every budget given is listed
    assert "vs fp32" in r.stdout  # the table still printed


def test_ratio_budget_is_against_the_source_size(two_failures):
    r, out = two_failures
    assert r.returncode == EXIT_QUALITY, r.stderr
    rep = _report(out)
    g = next(g for g in rep["gates"] if g["name"] == "max_size")
    size, src = rep["artifacts"][0]["size_bytes"], rep["model"]["size_bytes"]
    assert g["limit"] == 0.05 and g["value"] == pytest.approx(size / src, abs=1e-6) and not g["passed"]
    assert g["source_bytes"] == DEMO.stat().st_size
    # the same report against a looser share passes
    assert all(e["passed"] for e in evaluate(rep["artifacts"], Budgets(max_size="0.9"), src))


def test_impossible_latency_ratio_fails_one_line_per_budget(two_failures):
    r, out = two_failures
    lines = _lines(r)
    assert len(lines) == 2, r.stderr  # one per failed budget
    lat = next(ln for ln in lines if "--max-latency-ratio" in ln)
    assert ART in lat and "0.0001" in lat
    g = next(g for g in _report(out)["gates"] if g["name"] == "max_latency_ratio")
    assert not g["passed"] and g["value"] > 0.0001 and g["limit"] == 0.0001
    assert (out / ART).is_file()


@pytest.mark.parametrize("args", [["--max-size", "2XB"], ["--max-size", "-1"],
                                  ["--max-size", "nan"], ["--max-latency-ratio", "-0.5"],
                                  ["--max-latency-ratio", "nan"]])
def test_bad_values_exit_2_before_anything(tmp_path, args):
    out = tmp_path / "never"
    r = run_cli(DEMO, "--int8", "--calib", CALIB, *args, "-o", out)
    assert r.returncode == EXIT_BAD_INPUT, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and args[0] in r.stderr
    assert not out.exists()


def test_bad_value_with_json_still_prints_json(tmp_path):
    r = run_cli(DEMO, "--max-size", "2XB", "--json", "-o", tmp_path / "never")
    summary = json.loads(r.stdout)
    assert r.returncode == summary["exit_code"] == EXIT_BAD_INPUT
    assert "--max-size" in summary["errors"][0] and summary["artifacts"] == []


def test_parse_size():
    assert parse_size("2MB") == ("bytes", 2e6) and parse_size("1.5MiB") == ("bytes", 1.5 * 2**20)
    assert parse_size("2000000") == ("bytes", 2e6) and parse_size("512 kb") == ("bytes", 512e3)
    assert parse_size("0.3") == ("ratio", 0.3) and parse_size("1.2x") == ("ratio", 1.2)
    for bad in ("2XB", "-1", "0", "nan", "inf", "", "1.5", "0.1B"):
        with pytest.raises(ConfigError, match="--max-size"):
            parse_size(bad)


def _ms(x):
    return {"median_ms": x, "p90_ms": x, "repeats": 3}


def _art(name, files, precision="int8", insns=None, side=None):
    lat = {"fp32": _ms(2.0), precision: _ms(1.0), "speedup_vs_fp32": 2.0, "measured_on": "LiteRT"}
    if side:
        lat["litert"] = {k: _ms(v) for k, v in side.items()} | {"threads": 2}
    if insns:
        lat["arm_insns"] = {**insns, "unit": "guest instructions", "runtime": "LiteRT"}
    return {"path": f"/o/{name}", "precision": precision, "size_bytes": files[0],
            "files": {f"f{i}": {"path": f"/o/{name}.{i}", "size_bytes": n, "sha256": "0" * 64}
                      for i, n in enumerate(files)},
            "fidelity": {"cosine_min": 0.999, "outputs": {}}, "latency": lat}


def test_multi_file_size_is_the_sum_and_arm_insns_are_a_budget_too():
    ncnn = _art("m.ncnn.param", [1000, 9000])  # .param + .bin
    (g,) = evaluate([ncnn], Budgets(max_size="5KB"))
    assert g["value"] == 10_000 and not g["passed"] and "m.ncnn.param" in g["message"]
    tfl = _art("m.tflite", [4000], insns={"cortex-a76": {"fp32": 1000, "int8": 600}})
    gates = evaluate([tfl], Budgets(max_latency_ratio=0.55))
    assert [g["value"] for g in gates] == [0.5, 0.6]  # onnx/LiteRT time, then ARM instructions
    assert [g["passed"] for g in gates] == [True, False] and "cortex-a76" in gates[1]["message"]
    assert gates[1]["cpu"] == "cortex-a76"
    assert len(evaluate([_art("m.tflite", [1])], Budgets(max_latency_ratio=1.0))) == 1  # no insns


def test_latency_ratio_is_the_runtime_s_own_side_by_side_figure_in_the_table_too():
    """LiteRT / ncnn time FP32 and INT8 side by side in their own runtime: the budget, the table's
    "vs fp32" and its latency column read that one measurement (not onnxruntime's FP32)."""
    from autoglm_compress.report import summary_table

    a = _art("m.tflite", [4000], side={"fp32": 10.0, "int8": 8.0}) | {
        "target": "arm", "io": {}, "layers": None, "notes": []}
    (g,) = evaluate([a], Budgets(max_latency_ratio=0.7))
    assert g["value"] == 0.8 and not g["passed"] and "LiteRT side by side" in g["message"]
    rep = {"artifacts": [a], "passes": [], "verification": {"samples": 1, "source": "eval"},
           "model": {"path": "m.onnx", "format": "onnx", "stats": {"params": 1}}}
    row = next(ln for ln in summary_table(rep).splitlines() if ln.startswith("m.tflite"))
    assert "8.000 ms" in row and "1.25× faster" in row


def test_after_a_prune_the_table_says_what_each_vs_fp32_is_against():
    """A pruned run's "1.86× faster" must say against what: onnxruntime rows are timed against the
    model as loaded, LiteRT / ncnn rows against this run's (pruned) FP32 graph side by side."""
    from autoglm_compress.report import summary_table

    extra = {"io": {}, "layers": None, "notes": []}
    onnx = _art("m.x86.int8.onnx", [4000]) | extra | {"target": "x86"}
    onnx["latency"]["measured_on"] = "onnxruntime CPU, 2 threads"
    tfl = _art("m.arm.int8.tflite", [4000], side={"fp32": 10.0, "int8": 8.0}) | extra | {"target": "arm"}
    rep = {"artifacts": [onnx, tfl], "verification": {"samples": 1, "source": "eval"},
           "model": {"path": "m.onnx", "format": "onnx", "stats": {"params": 1}},
           "passes": [{"name": "prune"}, {"name": "distill"}, {"name": "quantize[x86]"}]}
    (legend,) = [ln for ln in summary_table(rep).splitlines() if ln.startswith("vs fp32:")]
    assert ("m.x86.int8.onnx against the FP32 model as loaded, in onnxruntime CPU, 2 threads; "
            "m.arm.int8.tflite against this run's FP32 graph (after distill, prune) in LiteRT side "
            "by side, 2 threads") in legend
    rep["passes"] = [{"name": "quantize[x86]"}]  # nothing reshaped the graph: one FP32, no legend
    assert "vs fp32:" not in summary_table(rep)


def test_source_size_counts_onnx_external_data(tmp_path):
    """An ONNX model whose weights sit in a file beside it: 'vs source' is against both files
    (the .onnx alone would make every artifact look many times larger than its source)."""
    import onnx
    import onnx_ir as ir

    from autoglm_compress import load
    from autoglm_compress.artifact_info import source_info

    proto = ir.to_proto(load(DEMO))
    onnx.save(proto, str(tmp_path / "m.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.weights", size_threshold=0)
    info = source_info(tmp_path / "m.onnx")
    onnx_bytes, weights = (tmp_path / "m.onnx").stat().st_size, (tmp_path / "m.weights").stat().st_size
    assert weights > 10 * onnx_bytes
    assert info["size_bytes"] == onnx_bytes + weights
    assert info["external_data"] == [{"path": str((tmp_path / "m.weights").resolve()), "size_bytes": weights}]
    assert "external_data" not in source_info(DEMO)  # a single-file source is the file

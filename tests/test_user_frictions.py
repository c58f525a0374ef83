"""What a new user tripped over when compressing a model, each checked on the bundled digits
example as the user ran it: the summary table's latency, size and source-ratio columns against the
runtime's own figures and the files on disk, an .npz whose array has another name, bad inputs
that must fail early in one line without leaving an empty output folder, a distillation that
gives no duration estimate or is verified on the very samples it trained on, and a README a
newcomer can start from. One arm INT8 run (both formats) and one prune + distill run are shared."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import CALIB, DEMO, EVAL, run_cli

from autoglm_compress.cli import main


def _calib_x():
    with np.load(CALIB) as z:
        return z["x"][:48]


@pytest.fixture(scope="module")
def arm_run(tmp_path_factory):
    """digits → arm INT8, .tflite and ncnn, calibrated from an .npz whose only array is named
    'inputs' (the model's input is 'x'): (CompletedProcess, out folder, report)."""
    d = tmp_path_factory.mktemp("arm")
    np.savez(d / "photos.npz", inputs=_calib_x())
    out = d / "out"
    r = run_cli(DEMO, "--int8", "--target", "arm", "--format", "all", "--calib", d / "photos.npz",
                "--calib-samples", "32", "--eval", EVAL, "--samples", "16", "--latency-repeats", "3",
                "-o", out)
    assert r.returncode == 0, r.stderr
    return r, out, json.loads((out / "report.json").read_text())


def _rows(stdout: str) -> dict[str, dict[str, str]]:
    """The summary table's rows by artifact file name: {column header: cell}."""
    lines = stdout.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("artifact "))
    dashes = lines[i + 1]
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", dashes)]
    heads = [lines[i][a:b].strip() for a, b in spans]
    rows = {}
    for ln in lines[i + 2:]:
        if not ln.strip() or ln.startswith(("note:", "WARNING", "report:")):
            break
        cells = [ln[a:b].strip() for a, b in spans[:-1]] + [ln[spans[-1][0]:].strip()]
        rows[cells[0].split(" ")[0]] = dict(zip(heads, cells))
    return rows


def test_latency_in_the_table_agrees_with_the_runtime_notes(arm_run):
    """"The table says INT8 is 1.29× faster while its note says LiteRT ran FP32 in 13 ms and INT8 in
    13.4 ms": the table's latency and its 'vs fp32' are the note's side-by-side measurement."""
    r, _, _ = arm_run
    rows = _rows(r.stdout)
    notes = {m[1]: (float(m[2]), float(m[3])) for m in re.finditer(
        r"note: (\S+): \w+ side by side \(\d+ threads\): fp32 ([\d.]+) ms, .*?int8 ([\d.]+) ms", r.stdout)}
    assert set(notes) == {"digits_cnn.arm.int8.tflite", "digits_cnn.arm.int8.ncnn.param"}, r.stdout
    for name, (fp32, int8) in notes.items():
        row = rows[name]
        assert float(row["latency"].split()[0]) == pytest.approx(int8, rel=0.006, abs=6e-4), (name, row)
        shown = float(row["vs fp32"].split("×")[0])
        assert shown == pytest.approx(fp32 / int8, rel=0.02, abs=0.011), (name, row, fp32, int8)
        assert ("faster" in row["vs fp32"]) == (fp32 > int8) or abs(shown - 1) < 0.011


def test_ncnn_row_size_is_the_param_and_bin_together(arm_run):
    """"The ncnn row shows the .bin's size under the .param's name": the row says +.bin and its size
    is both files on disk."""
    r, out, rep = arm_run
    param, bin_ = out / "digits_cnn.arm.int8.ncnn.param", out / "digits_cnn.arm.int8.ncnn.bin"
    total = param.stat().st_size + bin_.stat().st_size
    art = next(a for a in rep["artifacts"] if a["path"].endswith(".param"))
    assert art["size_bytes"] == total and bin_.stat().st_size > 5 * param.stat().st_size
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(param.name))
    assert line.startswith(f"{param.name} (+.bin)"), line
    assert _rows(r.stdout)[param.name]["size"] == f"{total / 1e3:.1f} KB"


def test_table_shows_each_artifact_against_the_original_size(arm_run):
    """"The table has no original size or reduction ratio": every row's 'vs source' is its bytes
    over the model file the user gave, and the report keeps that source size."""
    r, out, rep = arm_run
    src = DEMO.stat().st_size
    assert rep["model"]["size_bytes"] == src
    rows = _rows(r.stdout)
    assert len(rows) == 2
    for a in rep["artifacts"]:
        name = a["path"].rsplit("/", 1)[-1]
        assert rows[name]["vs source"] == f"{a['size_bytes'] / src:.2f}×"
        assert a["size_bytes"] < 0.5 * src  # INT8 of a float model: well under half


def test_an_npz_array_with_another_name_is_never_taken_silently(arm_run, tmp_path, capsys):
    """"My .npz's array is called 'inputs', the model's input 'x', and nothing said so": a single
    array for a single input is taken with a note naming both; arrays that match no input are
    refused in one line naming the input and the arrays, with no output folder left behind."""
    r, _, rep = arm_run
    assert "array 'inputs' taken for the model's only input 'x'" in r.stderr, r.stderr
    assert rep["calibration"]["samples"] == 32
    np.savez(tmp_path / "two.npz", inputs=_calib_x(), extra=_calib_x())
    out = tmp_path / "out"
    rc = main([str(DEMO), "--int8", "--target", "x86", "--calib", str(tmp_path / "two.npz"),
               "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert all(w in err for w in ("'x'", "'inputs'", "'extra'")), err
    assert not out.exists()


@pytest.mark.parametrize("case", ["wrong npz shape", "state_dict", "-o is a file"])
def test_bad_input_is_one_line_and_leaves_no_empty_output_folder(case, tmp_path, capsys,
                                                                 monkeypatch):
    """"A wrong npz shape, a state_dict instead of a model, or -o pointing at a file were each
    said after the whole load and left an empty output folder": one exit-2 line saying what to
    do, before the model's simplification (the shape: after the torch export that gives the
    inputs; the others: before it), and no folder made."""
    import autoglm_compress.frontend as fe
    import autoglm_compress.torch_import as ti

    monkeypatch.setattr(fe, "_finish", lambda *a: pytest.fail("the whole model loaded first"))
    if case != "wrong npz shape":
        monkeypatch.setattr(ti, "to_onnx", lambda *a, **k: pytest.fail("the model was exported first"))
    model, calib, out = str(DEMO), str(CALIB), tmp_path / "new" / "out"
    if case == "wrong npz shape":
        np.savez(tmp_path / "c.npz", x=_calib_x()[:, :, :4])
        calib, want = str(tmp_path / "c.npz"), "expects an array (N, 1x1x8x8)"
    elif case == "state_dict":
        import torch

        torch.save(torch.jit.load(str(DEMO)).state_dict(), tmp_path / "w.pt")
        model, want = str(tmp_path / "w.pt"), "torch.jit.save"
    else:
        out = tmp_path / "a_file"
        out.write_bytes(b"keep")
        want = "choose another with -o"
    rc = main([model, "--int8", "--target", "x86", "--calib", calib, "--samples", "8", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and want in err, err
    if case == "-o is a file":
        assert out.read_bytes() == b"keep"
    else:
        assert not (tmp_path / "new").exists()


def test_wrong_data_is_refused_before_the_model_s_long_load(tmp_path, capsys, monkeypatch):
    """"A wrong npz shape or array name was reported only after half a minute of loading": the
    arrays are checked against the model's inputs as soon as the file is read, before the
    simplification and checks that take the load's time (here: made to fail if reached)."""
    import onnx_ir as ir

    import autoglm_compress.frontend as fe
    from autoglm_compress import load

    (tmp_path / "m.onnx").write_bytes(ir.to_proto(load(DEMO)).SerializeToString())
    monkeypatch.setattr(fe, "_finish", lambda *a: pytest.fail("the whole model loaded first"))
    np.savez(tmp_path / "shape.npz", x=_calib_x()[:, :, :4])
    np.savez(tmp_path / "names.npz", a=_calib_x(), b=_calib_x())
    for data, want in [("shape.npz", "expects an array"), ("names.npz", "lacks arrays for inputs ['x']")]:
        for flag in ("--calib", "--eval"):
            out = tmp_path / f"out-{data}{flag}"
            args = [str(tmp_path / "m.onnx"), "--int8", "--target", "x86", "-o", str(out)]
            args += [flag, str(tmp_path / data)] + (["--calib", str(CALIB)] if flag == "--eval" else [])
            assert main(args) == 2, flag
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and want in err and data in err, err
            assert not out.exists()


def test_readme_is_a_short_page_a_newcomer_can_start_from():
    """"The README is 353 lines, half reference and half changelog, with a 2 474-character table
    cell, no install section and results that cite issue numbers": a short page with install,
    demo and test commands whose links resolve, and no issue numbers in the user docs."""
    root = DEMO.parents[1]
    text = (root / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "## Install" in text and "pip install -e" in text
    assert "make demo" in text and "make test" in text and "docs/cli.md" in text
    cells = [c for ln in text.splitlines() if ln.startswith("|") for c in ln.split("|")]
    assert max(map(len, cells), default=0) <= 200
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        assert link.startswith("http") or (root / link).exists(), link
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if doc.name == "decisions.md":  # the index of design records, kept by issue
            continue
        hits = re.findall(r".{0,30}\bissues? ?#?\d+.{0,30}", doc.read_text(), re.I)
        assert not hits, (doc.name, hits)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """--prune 0.5 --distill-steps 8 on 32 calibration samples, no --eval, progress lines on as in
    a CI log, the estimate's one-minute floor lowered so the demo's seconds count:
    (result, stderr lines)."""
    import contextlib
    import io

    from autoglm_compress import compress
    from autoglm_compress import progress_lines as pl

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(pl, "ESTIMATE_SECONDS", 0.0)
        res = compress(DEMO, prune=0.5, distill_steps=8, calib=CALIB, calib_samples=32,
                       targets="x86", samples=16, latency_repeats=1,
                       out_dir=tmp_path_factory.mktemp("distill"), progress_lines="all")
    return res, err.getvalue().splitlines()


def test_distillation_says_how_long_it_will_take_before_it_goes_on(distilled):
    """"--prune 0.5 --distill ran an hour with no estimate up front": after its first steps the
    run prints the whole training's expected duration and how to shorten it, in a log too,
    before the training ends."""
    _, err = distilled
    at = next(i for i, ln in enumerate(err) if "training: ~" in ln)
    assert re.search(r"training: ~\d+ s for 8 steps \([\d.]+ s a step on this machine\); batch 16; "
                     r"--distill-steps N", err[at]), err[at]
    assert at < next(i for i, ln in enumerate(err) if "] pass distill" in ln), err


def test_distillation_verified_on_its_own_training_samples_is_warned(distilled, tmp_path):
    """"Prune + distill trained on my photos, then 'verified' on the same photos, with 2 held out,
    and nothing warned": the table and the report say both; with --eval data, nothing is said
    about the training overlap."""
    from autoglm_compress import compress
    from autoglm_compress.report import summary_table

    res, _ = distilled
    warn = res.report["verification"]["warning"]
    assert "verified on the samples distillation trained on" in warn
    assert "distillation held out only 4 samples" in warn
    assert f"WARNING: {warn}" in summary_table(res.report)
    res = compress(DEMO, prune=0.5, distill_steps=1, calib=CALIB, calib_samples=32, targets="x86",
                   eval_data=EVAL, samples=16, latency_repeats=1, out_dir=tmp_path)
    warn = res.report["verification"]["warning"]
    assert "trained on" not in warn and "held out only 4" in warn

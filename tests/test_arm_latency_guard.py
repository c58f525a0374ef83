"""``--latency-guard`` with ``--target arm`` (issue 28 item 4): the op types of the TFLite INT8
artifact stay int8 only where aarch64 LiteRT runs them in fewer guest instructions under
qemu-aarch64. The emulated run skips, with the runner's one-line reason, where qemu-user cannot be
used; the decision plumbing (counts → QDQ model → .tflite) and the no-emulation note run
everywhere, with the count replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("torch")

from autoglm_compress import compress  # noqa: E402
from autoglm_compress.cli import main  # noqa: E402
from autoglm_compress.config_build import check_combinations, from_flat  # noqa: E402
from autoglm_compress.errors import ConfigError  # noqa: E402
from autoglm_compress.report import summary_table  # noqa: E402
from autoglm_compress.targets.arm_emulation import available, environment  # noqa: E402
from autoglm_compress.targets.tflite import latency_guard as latency_guard_arm  # noqa: E402
from autoglm_compress.targets.tflite.census import census  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits_cnn.pt"
EVAL = ROOT / "examples" / "digits_eval.npz"
CALIB = ROOT / "examples" / "digits_calib.npz"


def _guarded(out: Path, cpu: str = "cortex-a76"):
    """The digits CNN to arm TFLite INT8 with --latency-guard: (artifact, the guard's record); the
    CLI summary is kept on the artifact as ``summary``."""
    res = compress(DIGITS, targets="arm", int8=True, calib=CALIB, eval_data=EVAL, samples=4,
                   calib_samples=32, latency_repeats=2, verify_arm="off", latency_guard=True,
                   arm_cpu=cpu, out_dir=out)
    (art,) = res.artifacts
    rec = next(p for p in res.report["passes"] if p["name"] == "quantize[arm/tflite]")
    art.summary = summary_table(res.report)
    return art, rec["stats"]["latency_guard"]


def _assert_artifact_follows(art, guard: dict) -> None:
    """The written .tflite is the file the guard chose: its float ops (read back from the file)
    are those the guard recorded for its decision, and each candidate op type's nodes run float
    exactly when the guard kept that op type (node names: the lowering's census of the file)."""
    ops = census(Path(art.files["model"]).read_bytes())
    got = [f["op"] for f in ops["float_ops"]]
    assert {op: got.count(op) for op in set(got)} == guard["float_ops_after"]
    assert [f["op"] for f in art.extra["tflite_ops"]["float_ops"]] == got
    floats = {f["node"] for f in art.extra["tflite_ops"]["float_ops"]}
    kept = set(guard["kept_float_for_speed"])
    for row in guard["candidates"]:
        in_float = set(row["nodes"]) & floats
        if row["op"] in kept:
            assert in_float == set(row["nodes"]), (row["op"], floats)
        elif not any(r["op"] in kept for r in guard["candidates"]):
            assert not in_float, (row["op"], in_float)
    if len(kept) == 1:
        (row,) = [r for r in guard["candidates"] if r["op"] in kept]
        assert row["float_ops"] == guard["float_ops_after"]
    elif kept:
        assert guard["combined"]["float_ops"] == guard["float_ops_after"]
    else:
        assert guard["float_ops_after"] == guard["float_ops_before"]


def test_arm_guard_counts_each_candidate_on_aarch64(tmp_path):
    ok, why = available()
    if not ok:
        pytest.skip(why)
    art, guard = _guarded(tmp_path)
    assert guard["mode"] == "arm" and guard["cpu"] == "cortex-a76"
    assert "qemu-aarch64 -cpu cortex-a76" in guard["measured_on"]
    # digits on cortex-a76: INT8 LiteRT costs ~0.42x the FP32 instructions (bench/RESULTS.md)
    assert 0 < guard["int8_insns_before"] < 0.7 * guard["fp32_insns"]
    ops = {r["op"] for r in guard["candidates"]}
    assert {"Conv", "Gemm", "MaxPool"} <= ops
    bar = guard["int8_insns_before"] * (1 - max(latency_guard_arm.MIN_GAIN,
                                                2 * guard["int8_insns_spread"]))
    for row in guard["candidates"]:
        assert row["nodes"] and row["int8_insns"] == guard["int8_insns_before"]
        if row["float_insns"] is None:  # its float .tflite is the INT8 file (a fused Relu)
            assert not row["float"] and row["unchanged"]
        else:
            assert row["float_insns"] > 0
            assert row["float"] == (row["float_insns"] < bar), row
    # the convolutions carry the work: float convs cost well over the INT8 file
    conv = next(r for r in guard["candidates"] if r["op"] == "Conv")
    assert conv["float_insns"] > 1.5 * guard["int8_insns_before"] and not conv["float"]
    assert set(guard["kept_float_for_speed"]) <= {r["op"] for r in guard["candidates"]
                                                  if r["float"]}
    assert guard["int8_insns_after"] <= guard["int8_insns_before"]
    _assert_artifact_follows(art, guard)
    (note,) = [n for n in art.notes if n.startswith("--latency-guard (arm): ")]
    assert "cortex-a76" in note and "a count, not a time" in note and note in art.summary


def _fake_count(cheaper_float: dict[str, int]):
    """A count that reads each .tflite: 10 k instructions, minus ``cheaper_float[op]`` per float
    op of that TFLite type, plus 5 k per other float op; the FP32 file 60 k."""

    def count(files, feed, cpu, env):
        out = []
        for data in files:
            ops = census(data)
            n = 10_000 + (50_000 if ops["int8"] == 0 else 0)
            for f in ops["float_ops"]:
                n += -cheaper_float[f["op"]] if f["op"] in cheaper_float else 5_000
            out.append(float(n))
        return out

    return count


# digits: leaving MaxPool float also runs the conv before it float (its output is quantized only
# after the pool); leaving Gemm float adds a float RESHAPE
@pytest.mark.parametrize(("cheaper", "kept"), [
    ({"MAX_POOL_2D": 300, "CONV_2D": 100}, ["MaxPool"]),
    ({"MAX_POOL_2D": 300, "CONV_2D": 100, "FULLY_CONNECTED": 6_000}, ["Gemm", "MaxPool"]),
])
def test_arm_guard_decisions_reach_the_tflite(tmp_path, monkeypatch, cheaper, kept):
    monkeypatch.setattr(environment, "setup", lambda *a, **k: None)
    count = _fake_count(cheaper)
    monkeypatch.setattr(latency_guard_arm, "_count", count)
    art, guard = _guarded(tmp_path)
    assert sorted(guard["kept_float_for_speed"]) == kept
    assert guard["int8_insns_before"] == 10_000 and guard["int8_insns_spread"] == 0
    (written,) = count([Path(art.files["model"]).read_bytes()], None, None, None)
    assert guard["int8_insns_after"] == written < 10_000
    assert ("combined" in guard) == (len(kept) > 1)
    for row in guard["candidates"]:  # every other candidate's trial cost more: left int8
        assert row["float"] == (row["float_insns"] is not None and row["float_insns"] < 10_000)
    _assert_artifact_follows(art, guard)
    assert guard["int8_vs_fp32_after"] < guard["int8_vs_fp32_before"]


def test_arm_guard_without_emulation_is_a_note(tmp_path, monkeypatch):
    def missing(*a, **k):
        raise environment.Unavailable("qemu-aarch64 not found: apt-get install qemu-user")

    monkeypatch.setattr(environment, "setup", missing)
    art, guard = _guarded(tmp_path)
    assert guard["kept_float_for_speed"] == [] and "qemu-user" in guard["skipped"]
    notes = [n for n in art.notes if n.startswith("--latency-guard (arm)")]
    assert len(notes) == 1 and "\n" not in notes[0] and "unchanged" in notes[0]
    assert f"note: {Path(art.files['model']).name}: {notes[0]}" in art.summary  # CLI summary
    assert census(Path(art.files["model"]).read_bytes())["float"] == 0  # the plain INT8 file


@pytest.mark.parametrize(("flags", "ok"), [
    ({"targets": "arm"}, True),
    ({"targets": "arm", "arm_format": "all"}, True),
    ({"targets": "x86"}, True),
    ({"targets": "arm", "arm_format": "ncnn"}, False),
    ({"targets": "cuda"}, False),
])
def test_latency_guard_targets(flags, ok):
    cfg = from_flat(DIGITS, int8=True, calib_random=True, latency_guard=True, **flags)
    if ok:
        check_combinations(cfg)
        return
    with pytest.raises(ConfigError) as e:
        check_combinations(cfg)
    msg = str(e.value)
    assert "--target arm" in msg and "--ncnn-int8-layers measured-arm" in msg
    assert "\n" not in msg


def test_latency_guard_refusal_on_the_cli(capsys, tmp_path):
    rc = main([str(DIGITS), "--int8", "--calib-random", "--target", "arm", "--format", "ncnn",
               "--latency-guard", "-o", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "--latency-guard" in err and "aarch64" in err and "measured-arm" in err

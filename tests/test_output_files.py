"""The files in -o, as a user meets them: a run commits every target's files and its report
together (report last), an interrupted run (Ctrl-C, SIGTERM, at any point) leaves the previous
complete set or nothing new and no temporary file, a killed run's leftovers go with the next run,
and only files this tool wrote (its manifest, name pattern, bytes) are ever deleted — never what a
crafted report.json or manifest names."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoglm_compress.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "digits_cnn.pt"
CALIB = ROOT / "examples" / "digits_calib.npz"
FAST = ["--samples", "4", "--latency-repeats", "2"]
# three targets, four files: LiteRT .tflite, the ncnn .param + .bin pair, the x86 .onnx
ALL = ["--int8", "--calib", str(CALIB), "--target", "arm", "--format", "all", "--target", "x86",
       "--samples", "16", "--latency-repeats", "3"]
# the run before and the interrupted one: the same file names, other bytes (other int8 scales)
BEFORE, AGAIN = ["--calib-samples", "32"], ["--calib-samples", "64"]
MANIFEST = ".autoglm-manifest.json"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _complete_set(out: Path) -> str:
    """Assert ``out`` holds one run's complete set — every file its report names, with the
    report's sha256, and the manifest of the same run — and return that run's id."""
    rep = json.loads((out / "report.json").read_text())
    man = json.loads((out / MANIFEST).read_text())
    files = {Path(f["path"]).name: f["sha256"] for a in rep["artifacts"]
             for f in a["files"].values()}
    assert files and all(_sha(out / n) == s for n, s in files.items())
    assert man["files"] == files and man["complete"] is True
    assert man["run_id"] == rep["run"]["id"] and man["report_sha256"] == _sha(out / "report.json")
    return rep["run"]["id"]


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()
                  if p.name.endswith(".tmp") or p.name.startswith(".autoglm-staging-"))


def _snapshot(out: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in out.iterdir() if p.is_file()}


def _fast(out: Path, *args) -> int:
    return main([str(DEMO), "--fp16", "--target", "x86", *FAST, "-o", str(out), *args])


# --- cleanup deletes only what this tool wrote ----------------------------------------------

def test_crafted_report_and_manifest_delete_no_user_file(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside.txt"
    victim = tmp_path / "victim.x86.fp16.onnx"  # an artifact-like name outside -o
    for p, text in ((out / "notes.txt", "mine"), (outside, "outside"), (victim, "victim"),
                    (out / "mine.x86.fp16.onnx", "my own model")):
        p.write_text(text)
    (out / "digits_cnn.cuda.fp16.onnx").symlink_to(victim)  # a symlink with our name, to outside
    (out / "link.x86.fp16.onnx").symlink_to(outside)
    (out / "dir.x86.fp16.onnx").mkdir()
    (out / "sub").mkdir()
    deep = out / "sub" / "deep.x86.fp16.onnx"
    deep.write_text("deep")
    user = {p: p.read_bytes()
            for p in (out / "notes.txt", outside, victim, out / "mine.x86.fp16.onnx", deep)}
    listed = {"notes.txt": _sha(out / "notes.txt"), "../outside.txt": _sha(outside),
              str(outside): _sha(outside), str(victim): _sha(victim),
              "digits_cnn.cuda.fp16.onnx": _sha(victim), "link.x86.fp16.onnx": _sha(outside),
              "dir.x86.fp16.onnx": "0" * 64, "sub/deep.x86.fp16.onnx": _sha(deep),
              "mine.x86.fp16.onnx": "0" * 64,  # the name fits, the bytes are not ours
              "../out/notes.txt": _sha(out / "notes.txt")}
    (out / MANIFEST).write_text(json.dumps({"tool": "autoglm-compress", "complete": True,
                                            "files": listed}))
    (out / "report.json").write_text(json.dumps({"artifacts": [
        {"path": n, "files": {"model": {"path": n}}} for n in [*listed, str(out / "notes.txt")]]}))

    assert _fast(out) == 0
    assert all(p.read_bytes() == data for p, data in user.items())
    assert (out / "digits_cnn.cuda.fp16.onnx").is_symlink()
    assert (out / "link.x86.fp16.onnx").is_symlink()
    assert (out / "dir.x86.fp16.onnx").is_dir()
    assert _complete_set(out) and json.loads((out / MANIFEST).read_text())["files"].keys() == {
        "digits_cnn.x86.fp16.onnx"}
    assert _leftovers(out) == []


def test_stale_artifact_removed_only_while_its_bytes_are_ours(tmp_path, capsys):
    out = tmp_path / "out"
    both = ["--target", "cuda"]
    assert _fast(out, *both) == 0
    assert _fast(out) == 0  # x86 only: the cuda file of the run before is stale, ours: removed
    assert not (out / "digits_cnn.cuda.fp16.onnx").exists()
    assert _fast(out, *both) == 0
    with open(out / "digits_cnn.cuda.fp16.onnx", "ab") as f:  # the user edits it: now theirs
        f.write(b"\0")
    assert _fast(out) == 0
    assert (out / "digits_cnn.cuda.fp16.onnx").is_file()
    _complete_set(out)


# --- interrupts: the previous complete set or nothing new -----------------------------------

@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    """-o after one complete int8 run (tflite, ncnn param+bin, onnx)."""
    pytest.importorskip("ncnn")
    pytest.importorskip("ai_edge_litert")
    out = tmp_path_factory.mktemp("prev") / "out"
    assert main([str(DEMO), *ALL, *BEFORE, "-o", str(out)]) == 0
    return out


# the CLI as `python -m autoglm_compress.cli` runs it, with Ctrl-C's default handler even where
# this test's shell (no job control) made the child ignore SIGINT
_CLI = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('autoglm_compress.cli', run_name='__main__')")


def _spawn(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CLI, str(DEMO), *ALL, *AGAIN, "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _wait_staged(proc: subprocess.Popen, out: Path, ready) -> list[str]:
    """Poll the run's staging folder until ``ready(names)``; the names staged then."""
    deadline = time.time() + 300
    while time.time() < deadline:
        names = sorted(p.name for p in out.glob(".autoglm-staging-*/*")
                       if not p.name.startswith("."))
        if ready(names):
            return names
        assert proc.poll() is None, f"the run ended before the kill point: {proc.communicate()}"
        time.sleep(0.01)
    raise AssertionError("kill point never reached")


POINTS = {
    "first-artifact": lambda names: len(names) >= 1,  # tflite staged, ncnn and x86 to come
    "ncnn-pair": lambda names: any(n.endswith(".param") for n in names),  # bin and param staged
    "last-target": lambda names: any(n.endswith(".x86.int8.onnx") for n in names),
}


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                           (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
@pytest.mark.parametrize("point", list(POINTS))
def test_signal_mid_run_leaves_the_previous_set(previous, tmp_path, sig, code, word, point):
    out = tmp_path / "out"
    shutil.copytree(previous, out)
    before = _snapshot(out)
    run_id = _complete_set(out)
    proc = _spawn(out)
    staged = _wait_staged(proc, out, POINTS[point])
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    print(f"{point}: staged {staged}; exit {proc.returncode}; {last}")
    assert proc.returncode == code, err
    assert last == (f"{word}: stopped; no new file left in {out}; "
                    "the previous run's files are untouched"), err
    assert _snapshot(out) == before and _complete_set(out) == run_id
    assert _leftovers(out) == []


def test_sigkill_leftovers_cleaned_by_the_next_run(previous, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(previous, out)
    proc = _spawn(out)
    _wait_staged(proc, out, POINTS["first-artifact"])
    proc.kill()  # SIGKILL: no handler runs, the staging folder stays
    proc.wait()
    dead = proc.pid
    assert [n for n in _leftovers(out) if n.startswith(".autoglm-staging-")]
    (out / f".digits_cnn.x86.int8.onnx.autoglm-{dead}-abcd1234.tmp").write_bytes(b"half")
    (out / ".report.json.k2j4h_9x.tmp").write_bytes(b"{")  # an older version's temporary
    (out / f".notes.txt.autoglm-{os.getpid()}-zzzz.tmp").write_text("a live writer's")
    (out / ".mine.tmp").write_text("the user's")
    live = out / f".autoglm-staging-{os.getpid()}-abc123"  # a run still going (lock held)
    live.mkdir()
    fd = os.open(live / ".lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert _fast(out) == 0
    finally:
        os.close(fd)
    assert _leftovers(out) == sorted(
        [live.name, ".mine.tmp", f".notes.txt.autoglm-{os.getpid()}-zzzz.tmp"])
    assert (out / ".mine.tmp").read_text() == "the user's"
    _complete_set(out)
    # the int8 files of the run before are stale now (this run wrote fp16 x86 only): removed
    assert sorted(p.name for p in out.glob("digits_cnn.*")) == ["digits_cnn.x86.fp16.onnx"]


# --- a signal at an exact point, in-process (main() installs the SIGTERM handler) ------------

def test_sigterm_between_ncnn_bin_and_param(previous, tmp_path, monkeypatch, capsys):
    """The old emitter wrote .bin then .param straight into -o: a kill between them left a new
    .bin beside the old .param and report. Now both go to the staging folder first."""
    import autoglm_compress.targets.ncnn.target as ncnn_target

    out = tmp_path / "out"
    shutil.copytree(previous, out)
    before = _snapshot(out)
    real = ncnn_target.write_bytes_atomic

    def write_then_term(path, data):
        real(path, data)
        if str(path).endswith(".bin"):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ncnn_target, "write_bytes_atomic", write_then_term)
    assert main([str(DEMO), *ALL, *AGAIN, "-o", str(out)]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"terminated (SIGTERM): stopped; no new file left in {out}; "
                       "the previous run's files are untouched")
    assert _snapshot(out) == before and _leftovers(out) == []


@pytest.fixture
def default_sigint():
    """SIGINT as a fresh CLI process has it (Python's KeyboardInterrupt handler): these tests run
    the CLI in this process, where an earlier test may have left another handler."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_commit_completes_the_new_set(tmp_path, monkeypatch, capsys, sig, code,
                                                    default_sigint):
    """A signal while the files are renamed into -o is acted on after the last rename: the new
    set is complete (report last), the exit code still says the run was stopped."""
    out = tmp_path / "out"
    assert _fast(out) == 0
    old = _complete_set(out)
    real = os.replace
    sent = []

    def replace(src, dst):
        if Path(dst).parent == out and not sent:
            sent.append(dst)
            os.kill(os.getpid(), sig)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert _fast(out, "--target", "cuda") == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"stopped; this run's files were already complete in {out} "
                            "(report.json written last)")
    assert _complete_set(out) != old and (out / "digits_cnn.cuda.fp16.onnx").is_file()
    assert _leftovers(out) == []


def test_failed_run_leaves_nothing_new(tmp_path, monkeypatch, capsys):
    """A run that fails after its first target's file is emitted and verified (the second
    target's runtime refuses its file) leaves neither file nor a temporary one."""
    from autoglm_compress.errors import VerificationError
    from autoglm_compress.targets.cuda.target import CudaTarget

    out = tmp_path / "out"
    assert _fast(out) == 0
    before = _snapshot(out)

    def refuse(self, artifact, ctx):
        assert artifact.path.parent.name.startswith(".autoglm-staging-")  # verified where staged
        raise VerificationError(f"{artifact.path}: cannot run")

    monkeypatch.setattr(CudaTarget, "verify", refuse)
    assert _fast(out, "--target", "cuda") == 1
    assert capsys.readouterr().err == f"error: {out / 'digits_cnn.cuda.fp16.onnx'}: cannot run\n"
    assert _snapshot(out) == before and _leftovers(out) == []


def test_a_failed_run_leaves_no_output_folder_it_created(tmp_path):
    """-o (and its missing parents) made by a run that then fails are removed again; an -o that
    was there before stays."""
    from autoglm_compress import compress
    from autoglm_compress.errors import CompressError

    empty = tmp_path / "photos"
    empty.mkdir()
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(CompressError, match="empty calibration set"):
        compress(str(ROOT / "examples" / "digits_cnn.pt"), int8=True, calib=str(empty),
                 targets="x86", out_dir=str(out))
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(CompressError):
        compress(str(ROOT / "examples" / "digits_cnn.pt"), int8=True, calib=str(empty),
                 targets="x86", out_dir=str(kept))
    assert kept.is_dir()

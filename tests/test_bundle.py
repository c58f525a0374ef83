"""Deployable bundles (``--bundle``, ``verify-bundle``): the digits CNN through x86 + arm (TFLite
and ncnn) INT8 into a .tar.gz, its manifest checked against the schema and its checksums
recomputed; verify-bundle runs every artifact in its runtime (exit 0), and refuses a tampered
artifact (exit 2), a stored output that the artifact no longer computes (exit 3), and hostile
archives (paths leaving the folder, links, devices, oversized members: exit 2, nothing written
outside). The folder form, --preprocess and image-folder preprocessing, gates failing (no
bundle)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jsonschema")
pytest.importorskip("ncnn")
pytest.importorskip("ai_edge_litert")

from autoglm_compress import compress  # noqa: E402
from autoglm_compress.bundle import archive  # noqa: E402
from autoglm_compress.bundle.preprocess import parse_preprocess  # noqa: E402
from autoglm_compress.bundle.verify import validate_manifest  # noqa: E402
from autoglm_compress.cli import main  # noqa: E402
from autoglm_compress.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "digits_cnn.pt"
CALIB = ROOT / "examples" / "digits_calib.npz"
EVAL = ROOT / "examples" / "digits_eval.npz"
FAST = ["--samples", "8", "--latency-repeats", "2", "--verify-arm", "off"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isreg()}


def _repack(members: dict[str, bytes], path: Path, extra=()) -> Path:
    """A .tar.gz of ``members`` (name → bytes) plus ``extra`` raw TarInfo entries."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for ti, data in extra:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    """The digits CNN, INT8, x86 + arm --format all, bundled as a .tar.gz with labels."""
    tmp = tmp_path_factory.mktemp("bundle")
    labels = tmp / "labels.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    b = tmp / "digits.tar.gz"
    code = main([str(DEMO), "--int8", "--calib", str(CALIB), "--eval", str(EVAL), "--target",
                 "x86", "--target", "arm", "--format", "all", "-o", str(tmp / "out"),
                 "--bundle", str(b), "--bundle-labels", str(labels), *FAST])
    assert code == 0
    return b


def test_archive_manifest_schema_checksums_and_outputs(int8_bundle):
    files = _members(int8_bundle)
    m = json.loads(files["manifest.json"])
    validate_manifest(m)
    assert set(files) - {"manifest.json"} == set(m["files"])  # every member listed, no other
    for name, info in m["files"].items():
        assert _sha(files[name]) == info["sha256"] and len(files[name]) == info["size_bytes"]
    arts = {a["format"]: a for a in m["artifacts"]}
    assert set(arts) == {"onnx", "tflite", "ncnn"}
    assert {a["precision"] for a in arts.values()} == {"int8"}
    assert set(arts["ncnn"]["files"]) == {"param", "bin"}
    assert arts["ncnn"]["ncnn"]["input_shapes"] == {"x": [1, 8, 8]}  # blobs: no batch dim
    assert arts["ncnn"]["ncnn"]["output_shapes"] == {"output": [1, 10]}
    for a in arts.values():
        assert a["runtime_version"]  # onnxruntime, ai-edge-litert, ncnn versions
        main_file = next(iter(a["files"].values()))
        assert a["sha256"] == main_file["sha256"] == _sha(files[main_file["path"]])
        assert a["inputs"][0]["name"] == "x" and a["inputs"][0]["shape"] == [1, 1, 8, 8]
        assert a["outputs"][0]["dtype"] == "float32"
        assert len(a["reference_outputs"]) == 4
        # the bundle's runner agrees with the run's verification on the same samples
        assert a["stored_cosine_min_vs_fp32"] >= a["cosine_min_vs_fp32"] - 1e-3 > 0.99
    # x86 INT8 takes a float input and quantizes it inside: the scale is recorded, not required
    q = arts["onnx"]["inputs"][0]
    assert q["quant"]["scale"] > 0 and q["quantized"] is False
    assert m["samples"]["count"] == 4 and m["samples"]["source"] == "eval"
    assert m["labels"] == {"path": "labels.txt", "count": 10}
    assert files["labels.txt"].decode().splitlines()[3] == "digit 3"
    assert m["preprocess"] is None and "--preprocess" in m["preprocess_note"]
    assert json.loads(files["report.json"])["run"]["id"] == m["run_id"]
    assert m["report_html"] == "report.html" and b"<html" in files["report.html"][:400].lower()
    # the stored outputs: each artifact close to the stored FP32 reference on the same samples
    for a in arts.values():
        for rel, ref in zip(a["reference_outputs"], m["samples"]["reference"]["outputs"]):
            got = np.load(io.BytesIO(files[rel]))["output"]
            want = np.load(io.BytesIO(files[ref]))["output"]
            cos = float(got.ravel() @ want.ravel()
                        / (np.linalg.norm(got) * np.linalg.norm(want)))
            assert got.shape == want.shape == (1, 10) and cos > 0.999


def test_verify_bundle_ok(int8_bundle, capsys):
    assert main(["verify-bundle", str(int8_bundle)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("checksums ok: ")
    ok = [ln for ln in out if ln.startswith("ok ")]
    assert len(ok) == 3 and all("max rel err 0 " in ln for ln in ok)  # same machine: exact


def test_verify_bundle_loads_neither_torch_nor_onnx(int8_bundle):
    """verify-bundle needs only the runtimes, numpy and jsonschema: it runs where the artifacts
    deploy, and starts in about a second."""
    code = ("import sys; from autoglm_compress.cli import main; "
            f"rc = main(['verify-bundle', {str(int8_bundle)!r}]); "
            "heavy = sorted(m for m in ('torch', 'onnx', 'onnx_ir') if m in sys.modules); "
            "print('RESULT', rc, heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert "RESULT 0 []" in r.stdout, r.stdout + r.stderr


def test_missing_runtime_is_said_not_failed(int8_bundle, monkeypatch, capsys):
    from autoglm_compress.bundle import runners

    monkeypatch.setitem(runners.FORMAT_RUNTIME, "ncnn", ("no_such_ncnn_module", "ncnn"))
    assert main(["verify-bundle", str(int8_bundle)]) == 0
    out = capsys.readouterr().out
    assert "digits_cnn.arm.int8.ncnn.param: checksums ok; not run (no_such_ncnn_module is not " \
           "installed)" in out and out.count("\nok ") == 2


def test_tampered_artifact_byte_is_exit_2(int8_bundle, tmp_path, capsys):
    files = _members(int8_bundle)
    name = "artifacts/digits_cnn.arm.int8.tflite"
    data = bytearray(files[name])
    data[len(data) // 2] ^= 0x01
    files[name] = bytes(data)
    bad = _repack(files, tmp_path / "bad.tar.gz")
    assert main(["verify-bundle", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0] and "checksum mismatch" in err[0]


def test_extra_member_is_exit_2(int8_bundle, tmp_path, capsys):
    files = _members(int8_bundle)
    files["artifacts/extra.onnx"] = b"x"
    assert main(["verify-bundle", str(_repack(files, tmp_path / "x.tar.gz"))]) == 2
    assert "not in the manifest" in capsys.readouterr().err


def test_altered_stored_output_is_exit_3(int8_bundle, tmp_path, capsys):
    """A consistent bundle (checksums updated) whose stored ncnn outputs were changed: the
    artifact no longer computes them → exit 3, one line naming it."""
    files = _members(int8_bundle)
    m = json.loads(files["manifest.json"])
    a = next(a for a in m["artifacts"] if a["format"] == "ncnn")
    rel = a["reference_outputs"][1]
    arr = np.load(io.BytesIO(files[rel]))["output"]
    arr = arr.copy()
    arr[0, 3] += 0.2 * float(np.abs(arr).max())  # 20 % of the output's range: over 3e-2
    buf = io.BytesIO()
    np.savez(buf, output=arr)
    files[rel] = buf.getvalue()
    m["files"][rel] = {"sha256": _sha(files[rel]), "size_bytes": len(files[rel])}
    files["manifest.json"] = json.dumps(m).encode()
    assert main(["verify-bundle", str(_repack(files, tmp_path / "alt.tar.gz"))]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and a["name"] in err[0] and "sample 1" in err[0]


def test_consistent_bundle_with_a_broken_artifact_is_exit_3(int8_bundle, tmp_path, capsys):
    """Checksums rewritten to match a .tflite that is not one: the runtime refuses it → exit 3
    (the bundle is intact as stated, the artifact does not compute its outputs)."""
    files = _members(int8_bundle)
    m = json.loads(files["manifest.json"])
    a = next(a for a in m["artifacts"] if a["format"] == "tflite")
    rel = a["files"]["model"]["path"]
    files[rel] = b"not a flatbuffer" * 8
    sha = _sha(files[rel])
    m["files"][rel] = {"sha256": sha, "size_bytes": len(files[rel])}
    a["files"]["model"].update(sha256=sha, size_bytes=len(files[rel]))
    a["sha256"] = sha
    files["manifest.json"] = json.dumps(m).encode()
    assert main(["verify-bundle", str(_repack(files, tmp_path / "broken.tar.gz"))]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "digits_cnn.arm.int8.tflite: LiteRT" in err[0]
    assert "cannot load it" in err[0]


def _hostile(tmp_path: Path, int8_bundle: Path, ti: tarfile.TarInfo, data: bytes | None):
    return _repack(_members(int8_bundle), tmp_path / "hostile.tar.gz", [(ti, data)])


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device",
                                  "fifo"])
def test_hostile_members_are_exit_2_and_write_nothing_outside(int8_bundle, tmp_path, kind,
                                                              monkeypatch, capsys):
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(work))  # where verify-bundle extracts
    ti = tarfile.TarInfo({"dotdot": "../evil", "absolute": str(tmp_path / "evil")}.get(
        kind, "samples/evil"))
    data = b"evil"
    if kind in ("dotdot", "absolute"):
        ti.size = len(data)
    else:
        ti.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                   "device": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
        ti.linkname = "../../evil" if "link" in kind else ""
        data = None
    bad = _hostile(tmp_path, int8_bundle, ti, data)
    assert main(["verify-bundle", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused" in err[0]
    assert not (tmp_path / "evil").exists() and not (work / "evil").exists()
    assert list(work.iterdir()) == []  # the extraction folder is gone too


def test_oversized_member_is_refused_from_its_header(int8_bundle, tmp_path, monkeypatch,
                                                     capsys):
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 1 << 20)
    files = _members(int8_bundle)
    files["samples/big.bin"] = bytes(2 << 20)  # 2 MiB of zeros: a few KB compressed
    bad = _repack(files, tmp_path / "bomb.tar.gz")
    # the 2 MiB member adds a few KB to the archive (the bundle's own size varies with the CPU
    # that trained and compressed its models)
    plain = _repack(_members(int8_bundle), tmp_path / "plain.tar.gz")
    assert bad.stat().st_size < plain.stat().st_size + (16 << 10)
    assert main(["verify-bundle", str(bad)]) == 2
    assert "a member of 2097152 bytes" in capsys.readouterr().err


def test_metadata_header_bomb_and_duplicates_are_refused(int8_bundle, tmp_path, capsys):
    """A pax header declaring 1 GiB (a few bytes of gzip) is refused at its header, before
    tarfile would read it into memory; a member named twice is refused while extracting."""
    ti = tarfile.TarInfo("././@PaxHeader")
    ti.type, ti.size = tarfile.XHDTYPE, 1 << 30
    bomb = tmp_path / "pax.tar.gz"
    with gzip.open(bomb, "wb") as f:
        f.write(ti.tobuf(format=tarfile.USTAR_FORMAT) + bytes(4096))
    assert main(["verify-bundle", str(bomb)]) == 2
    assert "a tar metadata header of 1073741824 bytes" in capsys.readouterr().err
    files = _members(int8_bundle)
    ti = tarfile.TarInfo("report.json")
    ti.size = 2
    dup = _repack(files, tmp_path / "dup.tar.gz", [(ti, b"{}")])
    assert main(["verify-bundle", str(dup)]) == 2
    assert "'report.json' appears twice" in capsys.readouterr().err


def test_not_a_bundle_is_exit_2(tmp_path, capsys):
    p = tmp_path / "x.tar.gz"
    p.write_bytes(b"not gzip at all")
    assert main(["verify-bundle", str(p)]) == 2
    assert "not a readable .tar.gz" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["verify-bundle", str(empty)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_folder_form_with_preprocess(tmp_path, capsys):
    """--bundle DIR: the same contents as a folder; --preprocess recorded, checked against the
    model input; a link planted in the folder, or a replaced bundle folder, handled."""
    dest = tmp_path / "bundle"
    pre = "resize=10,crop=8,scale=1/16,mean=0.5,std=0.25,layout=NCHW,order=GRAY"
    res = compress(DEMO, targets="x86", out_dir=tmp_path / "out", samples=6, latency_repeats=2,
                   eval_data=EVAL, bundle=str(dest), preprocess=pre)
    assert res.bundle_path == dest and (dest / "manifest.json").is_file()
    m = json.loads((dest / "manifest.json").read_text())
    validate_manifest(m)
    assert m["preprocess"] == {
        "source": "--preprocess", "input": "x", "resize": {"shorter_side": 10},
        "interpolation": None, "crop": {"height": 8, "width": 8}, "scale": 0.0625,
        "mean": [0.5], "std": [0.25], "channel_order": "GRAY", "layout": "NCHW",
        "dtype": "float32", "formula": "x[c] = (pixel[c] * scale - mean[c]) / std[c]"}
    assert [a["precision"] for a in m["artifacts"]] == ["fp32"]
    assert main(["verify-bundle", str(dest)]) == 0
    assert "tolerance 0.0001" in capsys.readouterr().out
    # a second run replaces the folder (no file of the first left)
    (dest / "samples" / "000.npz").unlink()
    compress(DEMO, targets="x86", out_dir=tmp_path / "out", samples=2, latency_repeats=2,
             bundle=str(dest))
    assert sorted(p.name for p in (dest / "samples").iterdir()) == ["000.npz", "001.npz"]
    assert not list(tmp_path.glob(".bundle.autoglm-*"))  # no staging folder left
    (dest / "samples" / "link.npz").symlink_to(dest / "samples" / "000.npz")
    assert main(["verify-bundle", str(dest)]) == 2
    assert "link" in capsys.readouterr().err


def test_image_folder_preprocessing_recorded(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (12, 10), dtype=np.uint8)).save(folder / f"{i}.png")
    dest = tmp_path / "b.tgz"
    compress(DEMO, int8=True, calib=str(folder), calib_samples=6, targets="x86",
             out_dir=tmp_path / "out", samples=4, latency_repeats=2, bundle=str(dest),
             image_scale=1 / 16)
    m = json.loads(_members(dest)["manifest.json"])
    p = m["preprocess"]
    assert p["source"].startswith("image folder") and p["input"] == "x"
    assert (p["layout"], p["channel_order"], p["interpolation"]) == ("NCHW", "GRAY", "bilinear")
    assert p["crop"] == {"height": 8, "width": 8} and p["resize"] == {"shorter_side": 8}
    assert p["scale"] == 0.0625 and p["mean"] == [0.0] and p["std"] == [1.0]
    assert m["samples"]["source"] == "calibration"


@pytest.mark.parametrize(("text", "words"), [
    ("scale=1/0", "scale='1/0' is not a number"),
    ("mean=0.5,0.5", "mean has 2 values; give 1 or 3"),
    ("std=0.2,0,0.2", "std values must be positive"),
    ("layout=CHW", "use NCHW or NHWC"),
    ("order=RGBA", "use RGB, BGR or GRAY"),
    ("crop=0", "expected a positive N or HxW"),
    ("resize=256,resize=224", "resize given twice"),
    ("size=256", "unknown key 'size'"),
    ("scale=1,2", "'2' is not key=value"),
    ("", "empty"),
])
def test_preprocess_errors_are_one_line(text, words):
    with pytest.raises(ConfigError) as e:
        parse_preprocess(text)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_preprocess_syntax():
    p = parse_preprocess("resize=256x320, crop=224,scale=1/255,mean=0.485,0.456,0.406,"
                         "std=0.229,0.224,0.225,layout=nhwc,order=BGR,input=images")
    assert p == {"resize": (256, 320), "crop": 224, "scale": 1 / 255,
                 "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                 "layout": "NHWC", "order": "BGR", "input": "images"}


@pytest.mark.parametrize(("args", "words"), [
    (["--preprocess", "scale=x"], "--preprocess 'scale=x': scale='x' is not a number"),
    (["--preprocess", "scale=1"], "add --bundle"),
    (["--bundle-labels", "l.txt"], "add --bundle"),
    (["--bundle", "B", "--preprocess", "mean=0.1,0.2,0.3"], "has 3 values; input 'x' has 1"),
])
def test_usage_errors_exit_2(tmp_path, capsys, args, words):
    args = [a.replace("B", str(tmp_path / "b")) if a == "B" else a for a in args]
    code = main([str(DEMO), "--calib", str(CALIB), "-o", str(tmp_path / "o"), *args, *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "b").exists()


def test_preprocess_with_image_folder_is_refused(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    code = main([str(DEMO), "--calib", str(tmp_path / "imgs"), "--bundle", str(tmp_path / "b"),
                 "--preprocess", "scale=1"])
    assert code == 2 and "--image-* options" in capsys.readouterr().err


def test_failed_gate_writes_no_bundle(tmp_path, capsys):
    b = tmp_path / "b.tar.gz"
    code = main([str(DEMO), "--target", "x86", "-o", str(tmp_path / "o"), "--bundle", str(b),
                 "--max-size", "100", "--json", *FAST])
    cap = capsys.readouterr()
    assert code == 3 and not b.exists()
    assert f"--bundle {b}: not written (a gate failed" in cap.err
    summary = json.loads(cap.out)
    assert summary["bundle"] is None and any("not written" in e for e in summary["errors"])
    assert (tmp_path / "o" / "report.json").is_file()  # the run's own files are written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.tar.gz")]


def test_interrupted_write_leaves_no_bundle(tmp_path, monkeypatch):
    from autoglm_compress.bundle import writer

    def boom(staging, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_tar", boom)
    b = tmp_path / "b.tar.gz"
    with pytest.raises(KeyboardInterrupt):
        compress(DEMO, targets="x86", out_dir=tmp_path / "o", samples=2, latency_repeats=2,
                 bundle=str(b))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no bundle, no temporary
    shutil.rmtree(tmp_path / "o")

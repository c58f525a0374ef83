"""Hostile inputs (issue 26, items 4-5): nothing unpickles code without --trust-pickle, and sizes
that a small file declares (inputs, npz members, zip members) are checked before any allocation.

The hostile files are built here, in tmp_path; the memory cases run the CLI in a subprocess
under an address-space limit and check exit 2, one line on stderr, and no artifact left."""

from __future__ import annotations

import contextlib
import io
import json
import resource
import subprocess
import sys
import time
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from autoglm_compress.errors import ModelLoadError
from autoglm_compress.frontend import PICKLE_SCAN_LIMIT, detect_format, load

AS_LIMIT = 3 << 30  # the hostile cases must finish inside 3 GiB of address space


# ---------------------------------------------------------------- fixtures (hostile files)


class _WritesMarker:
    """Unpickling this runs ``exec``: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _torch_save_bytes(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def good_pt2(tmp_path_factory):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.relu(self.c(x))

    path = tmp_path_factory.mktemp("pt2") / "good.pt2"
    torch.export.save(torch.export.export(Net().eval(), (torch.randn(1, 3, 8, 8),)), path)
    return path


def _rewrite_pt2(src, dst, marker, where: str):
    """A copy of ``src`` whose sample inputs (or one weight, marked use_pickle) unpickle code."""
    zin = zipfile.ZipFile(src)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            name = info.filename
            if where == "sample" and name.endswith("data/sample_inputs/model.pt"):
                data = _torch_save_bytes(((_WritesMarker(marker),), {}))
            elif where == "weight" and name.endswith("model_weights_config.json"):
                cfg = json.loads(data)
                cfg["config"]["c.bias"]["use_pickle"] = True
                data = json.dumps(cfg).encode()
            elif where == "weight" and name.endswith("data/weights/weight_1"):
                data = _torch_save_bytes(_WritesMarker(marker))
            zout.writestr(info, data)
    return dst


def _stream_zeros(zf: zipfile.ZipFile, name: str, header: bytes, total: int) -> None:
    """A deflated member of ``header`` + ``total`` zero bytes, written in 1 MiB chunks."""
    chunk = bytes(1 << 20)
    with zf.open(name, "w", force_zip64=True) as f:
        f.write(header)
        while total > 0:
            f.write(chunk[: min(total, len(chunk))])
            total -= len(chunk)


_BUILT: dict[tuple, bytes] = {}  # a bomb takes seconds to deflate: each one is built once a session


def _zeros_zip(path, name: str, header: bytes, total: int, extra: tuple[tuple[str, str], ...] = ()):
    """Write a zip of one deflated ``header`` + ``total`` zeros member (plus small ``extra`` ones)."""
    key = (name, header, total, extra)
    if key not in _BUILT:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            _stream_zeros(zf, name, header, total)
            for member, text in extra:
                zf.writestr(member, text)
        _BUILT[key] = buf.getvalue()
    path.write_bytes(_BUILT[key])
    return path


def _zip_bomb_pt(path, size=1 << 30):
    """A 'torch.save' zip whose data.pkl inflates to ``size`` bytes (about 1 MB on disk)."""
    return _zeros_zip(path, "archive/data.pkl", b"", size, (("archive/version", "3\n"),))


def _cli(args, cwd, limit=AS_LIMIT, timeout=300):
    """Run the CLI in a child under an address-space limit: (exit code, stderr lines, seconds)."""

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    code = "import sys; from autoglm_compress.cli import main; sys.exit(main(sys.argv[1:]))"
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=cwd, capture_output=True, text=True, preexec_fn=cap, timeout=timeout, check=False,
    )
    return p.returncode, p.stderr.strip().splitlines(), time.monotonic() - t0


# ---------------------------------------------------------------- item 1: .pt2 never unpickles


@pytest.mark.parametrize("where", ["sample", "weight"])
def test_pt2_pickle_member_refused_without_trust(good_pt2, tmp_path, where):
    marker = tmp_path / "MARKER"
    evil = _rewrite_pt2(good_pt2, tmp_path / f"evil_{where}.pt2", marker, where)
    assert detect_format(evil) == "export"
    with pytest.raises(ModelLoadError, match="--trust-pickle") as e:
        load(evil)
    assert "\n" not in str(e.value) and "evil_" in str(e.value)
    assert not marker.exists()


@pytest.mark.slow  # make test-all (its case is in make test too)
def test_pt2_pickle_refused_through_cli_compress_and_inspect(good_pt2, tmp_path):
    marker = tmp_path / "MARKER"
    evil = _rewrite_pt2(good_pt2, tmp_path / "evil.pt2", marker, "sample")
    out = tmp_path / "out"
    rc, err, _ = _cli([evil, "--fp16", "--target", "x86", "-o", out], tmp_path)
    assert rc == 2 and len(err) == 1 and "--trust-pickle" in err[0], err
    assert not marker.exists() and not (out.exists() and any(out.iterdir()))
    rc, err, _ = _cli(["inspect", evil], tmp_path)
    assert rc == 2 and len(err) == 1 and "--trust-pickle" in err[0], err
    assert not marker.exists()


def test_pt2_trusted_pickle_still_loads_the_old_way(good_pt2, tmp_path):
    """--trust-pickle is the user's word: torch.export.load runs unrestricted (the marker is
    written), so the opt-in is what stands between a file and code execution."""
    marker = tmp_path / "MARKER"
    evil = _rewrite_pt2(good_pt2, tmp_path / "evil.pt2", marker, "sample")
    with contextlib.suppress(ModelLoadError):  # the marker's sample inputs are not tensors
        load(evil, trust_pickle=True)
    assert marker.exists()


def test_good_pt2_loads_without_flag(good_pt2):
    model = load(good_pt2)
    assert [v.name for v in model.graph.inputs] and len(model.graph.outputs) == 1


# ---------------------------------------------------------------- item 4: format detection


def test_zip_bomb_pt_refused_without_inflating(tmp_path):
    bomb = _zip_bomb_pt(tmp_path / "bomb.pt")
    assert bomb.stat().st_size < 4 << 20
    with pytest.raises(ModelLoadError, match="data.pkl inflates to 1,073,741,824 bytes"):
        detect_format(bomb)
    out = tmp_path / "out"
    for args in ([bomb, "--fp16", "--target", "x86", "-o", out], ["inspect", bomb]):
        rc, err, secs = _cli(args, tmp_path)
        assert rc == 2 and len(err) == 1 and "bomb.pt" in err[0] and "limit" in err[0], err
        assert secs < 60
    assert not (out.exists() and any(out.iterdir()))


def test_bare_pickle_scanned_as_a_bounded_stream(tmp_path):
    """A bare pickle whose one string runs past the scan limit is refused, not read whole."""
    path = tmp_path / "long.pkl"
    n = PICKLE_SCAN_LIMIT + 16
    with open(path, "wb") as f:  # PROTO 4, BINUNICODE8 of n bytes (never reached: refused first)
        f.write(b"\x80\x04\x8d" + n.to_bytes(8, "little"))
        f.truncate(11 + n)
    with pytest.raises(ModelLoadError, match="limit for a model's pickle"):
        detect_format(path)


def test_detect_format_reads_only_the_head(tmp_path, monkeypatch):
    from pathlib import Path

    def no_read_bytes(self):
        raise AssertionError("read_bytes reads the whole file")

    path = tmp_path / "m.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g), path)
    monkeypatch.setattr(Path, "read_bytes", no_read_bytes)
    assert detect_format(path) == "onnx"
    assert np.dtype("float32")  # numpy imported for the data cases below


# ---------------------------------------------------------------- item 2: generated inputs


def _onnx(path, dims, fold=False):
    """Relu of one float input of ``dims`` (about 100 bytes); ``fold`` adds x + ConstantOfShape(
    Shape(x)), which a constant folder would materialise at the declared size."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(dims))
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    if fold:
        one = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
        nodes = [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("ConstantOfShape", ["s"], ["z"], value=one),
            helper.make_node("Add", ["x", "z"], ["y"]),
        ]
    g = helper.make_graph(nodes, "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.slow  # make test-all (its case is in make test too)
@pytest.mark.parametrize("how", [["--fp16"], ["--int8", "--calib-random"]])
@pytest.mark.parametrize("side", [100000, 3000])  # 224 GiB asked for; 8.8 GB used before
def test_huge_declared_input_refused_before_allocating(tmp_path, how, side):
    model = _onnx(tmp_path / "huge.onnx", (1, 3, side, side))
    assert model.stat().st_size < 200
    out = tmp_path / "out"
    rc, err, _ = _cli([model, *how, "--target", "x86", "-o", out], tmp_path)
    assert rc == 2 and len(err) == 1, err
    for part in ("'x'", f"1x3x{side}x{side}", "16,777,216", "--input-shape x="):
        assert part in err[0], err
    assert not (out.exists() and any(out.iterdir()))


def test_generated_size_limits():
    from autoglm_compress.errors import ConfigError
    from autoglm_compress.inputs import InputSpec, check_generated_size

    big = InputSpec("x", (1, 3, 8000, 8000))  # 192 M elements: over the declared-shape limit
    with pytest.raises(ConfigError, match="declares shape 1x3x8000x8000"):
        check_generated_size([big])
    check_generated_size([big], {"x"})  # the user's --input-shape: allowed up to the ceiling
    with pytest.raises(ConfigError, match="--input-shape x=1x3x20000x20000: .* hard ceiling"):
        check_generated_size([InputSpec("x", (1, 3, 20000, 20000))], {"x"})
    many = [InputSpec(f"x{i}", (1, 15_000_000)) for i in range(20)]  # each under, 300 M in all
    with pytest.raises(ConfigError, match="together"):
        check_generated_size(many)


def test_random_calibration_source_is_lazy_and_checked_when_opened(tmp_path):
    from autoglm_compress.calibration.data import open_calibration_source
    from autoglm_compress.errors import ConfigError
    from autoglm_compress.inputs import random_feeds

    with pytest.raises(ConfigError, match="16,777,216"):
        open_calibration_source(None, load(_onnx(tmp_path / "h.onnx", (1, 3, 9000, 9000))),
                                random=True)
    model = load(_onnx(tmp_path / "s.onnx", (1, 3, 8, 8)))
    feeds = open_calibration_source(None, model, random=True, seed=3).take(4)
    assert not isinstance(feeds, list)
    got = [f["x"] for f in feeds]
    want = [f["x"] for f in random_feeds(model, 4, seed=3)]
    assert all(np.array_equal(a, b) for a, b in zip(got, want)) and len(got) == 4


def test_load_does_not_fold_a_declared_size_tensor(tmp_path):
    """onnx-simplifier would fold ConstantOfShape(Shape(x)) of a 1x3x10000x10000 input into a
    1.2 GB constant (6 GB peak); under a 3 GiB limit the load stays quiet and leaves it unfolded."""
    model = _onnx(tmp_path / "fold.onnx", (1, 3, 10000, 10000), fold=True)
    code = (
        "import sys; from autoglm_compress.frontend import load; "
        "m = load(sys.argv[1]); print(sorted(n.op_type for n in m.graph))"
    )

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True,
                       preexec_fn=cap, timeout=300, check=False)
    assert p.returncode == 0 and "ConstantOfShape" in p.stdout, p.stderr[-2000:]
    assert "Failed to allocate" not in p.stderr and time.monotonic() - t0 < 60


# ---------------------------------------------------------------- item 3: .npz read lazily


def _bomb_npz(path, key, shape, dtype="float32"):
    """An .npz whose one member declares ``shape`` of zeros: deflated, ~1000x smaller."""
    from numpy.lib import format as npformat

    hdr = io.BytesIO()
    npformat.write_array_header_1_0(
        hdr, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": tuple(shape)}
    )
    return _zeros_zip(path, key + ".npy", hdr.getvalue(), int(np.prod(shape)) * np.dtype(dtype).itemsize)


def test_npz_bomb_reads_only_the_samples_asked(tmp_path):
    from autoglm_compress.errors import CalibrationError
    from autoglm_compress.inputs import load_npz_feeds

    bomb = _bomb_npz(tmp_path / "bomb.npz", "x", (512, 1024, 1024))  # 2 GiB inflated
    assert bomb.stat().st_size < 4 << 20
    model = load(_onnx(tmp_path / "m.onnx", (1, 1024, 1024)))
    ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    feeds, _ = load_npz_feeds(bomb, model, limit=8)
    assert len(feeds) == 8 and feeds[0]["x"].shape == (1, 1024, 1024)
    with pytest.raises(CalibrationError, match="over the 1,073,741,824-byte limit"):
        load_npz_feeds(bomb, model)  # all 512 samples: refused before reading
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - ru0  # KiB
    assert grown < 512 << 10


@pytest.mark.slow  # make test-all (its case is in make test too)
def test_npz_one_huge_sample_refused_through_cli(tmp_path):
    bomb = _bomb_npz(tmp_path / "bomb.npz", "x", (1, 3, 16384, 16384))  # one 3 GiB sample
    model = _onnx(tmp_path / "m.onnx", ("N", 3, "H", "W"))
    out = tmp_path / "out"
    rc, err, secs = _cli([model, "--fp16", "--target", "x86", "--eval", bomb, "-o", out], tmp_path)
    assert rc == 2 and len(err) == 1 and "bomb.npz" in err[0] and "'x'" in err[0], err
    assert "268,435,456" in err[0] and secs < 60
    assert not (out.exists() and any(out.iterdir()))


def test_npz_object_arrays_and_lying_headers_refused(tmp_path):
    from autoglm_compress.errors import CalibrationError
    from autoglm_compress.inputs import load_npz_feeds

    model = load(_onnx(tmp_path / "m.onnx", (1, 4)))
    obj = tmp_path / "obj.npz"
    with zipfile.ZipFile(obj, "w") as zf, zf.open("x.npy", "w") as f:
        np.lib.format.write_array(f, np.array([[_WritesMarker(tmp_path / "M")]] * 2, object),
                                  allow_pickle=True)
    with pytest.raises(CalibrationError, match="Python objects"):
        load_npz_feeds(obj, model)
    assert not (tmp_path / "M").exists()
    liar = tmp_path / "liar.npz"
    with zipfile.ZipFile(liar, "w") as zf, zf.open("x.npy", "w") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (1 << 30, 4)})
        f.write(bytes(64))
    with pytest.raises(CalibrationError, match="truncated or corrupt"):
        load_npz_feeds(liar, model)


def test_npy_and_npz_read_the_same_rows(tmp_path):
    from autoglm_compress.inputs import load_npz_feeds

    model = load(_onnx(tmp_path / "m.onnx", (1, 4)))
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "d.npy", x)
    np.savez_compressed(tmp_path / "d.npz", x=x, labels=np.arange(10))
    np.savez(tmp_path / "f.npz", x=np.asfortranarray(x))
    a, _ = load_npz_feeds(tmp_path / "d.npy", model, limit=3)
    b, labels = load_npz_feeds(tmp_path / "d.npz", model, limit=3)
    c, _ = load_npz_feeds(tmp_path / "f.npz", model, limit=3)
    for feeds in (a, b, c):
        assert [f["x"].tolist() for f in feeds] == [[row] for row in x[:3].tolist()]
    assert labels.tolist() == [0, 1, 2]

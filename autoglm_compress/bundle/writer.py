"""Writing a deployable bundle (``--bundle``) after a run's files are committed into ``-o``.

Layout (docs/bundle.md)::

    manifest.json                 what is inside (schema: autoglm_compress/bundle_schema.json)
    report.json                   the run's report, as written into -o (report.html too)
    labels.txt                    --bundle-labels, when given
    artifacts/<file>              every artifact file (ncnn: .param and .bin)
    samples/<i>.npz               up to MAX_SAMPLES verification inputs, keyed by input name
    outputs/fp32/<i>.npz          the FP32 reference outputs on them, keyed by output name
    outputs/<artifact>/<i>.npz    each artifact's outputs on them, in its runtime

The bundle is assembled in a temporary sibling (``.NAME.autoglm-<pid>-XXXX.tmp``) and renamed into
place (an archive: the finished ``.tar.gz``); an interrupted run leaves none.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from autoglm_compress.bundle.archive import is_archive
from autoglm_compress.bundle.runners import artifact_format, make_runner, runtime_version
from autoglm_compress.errors import ConfigError

__all__ = ["BUNDLE_VERSION", "MANIFEST", "MAX_SAMPLES", "TOLERANCE", "write_bundle"]

logger = logging.getLogger(__name__)

BUNDLE_VERSION = "1.0"
MANIFEST = "manifest.json"
MAX_SAMPLES = 4
MAX_LABELS_BYTES = 16 << 20
# verify-bundle: max |now − stored| / max |stored| per output, by the artifact's precision — the
# stored outputs were made by the same runner, so on the writer's machine the error is 0; the
# bounds leave room for another CPU's kernels (FP16 arithmetic, int8 rounding of a requantize).
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 3e-2}
_INT_DTYPES = {"int8", "uint8", "int16", "uint16"}


def _sha(p: Path) -> str:
    from autoglm_compress.bundle.verify import sha256_of

    return sha256_of(p)


def _blob_shape(shape) -> list[int]:
    """The ncnn blob shape of an input sample: the target's rule (its batch axis dropped)."""
    try:
        from autoglm_compress.targets.ncnn.blobs import blob_shape
    except ImportError:
        return list(shape[1:])
    return list(blob_shape(list(shape)))


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed npz (its members' sizes are the file's: verify-bundle bounds them), one
    ``NAME.npy`` per array — any tensor name, even one np.savez reserves (``file``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for k, v in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(v), allow_pickle=False)
            z.writestr(f"{k}.npy", buf.getvalue())


def _io(entries) -> list[dict]:
    out = []
    for e in entries or ():
        quant = e.get("quant")
        out.append({"name": e["name"], "shape": e.get("shape"), "dtype": e.get("dtype"),
                    "quant": quant,
                    "quantized": bool(quant) and e.get("dtype") in _INT_DTYPES})
    return out


def _labels(path: str, out_shapes: list) -> tuple[str, int]:
    p = Path(path)
    try:
        raw = p.read_bytes() if p.stat().st_size <= MAX_LABELS_BYTES else None
    except OSError as e:
        raise ConfigError(f"--bundle-labels {path!r}: {e.strerror}; check the path") from None
    if raw is None:
        raise ConfigError(f"--bundle-labels {path!r}: over {MAX_LABELS_BYTES} bytes; a labels "
                          "file is one class name per line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"--bundle-labels {path!r}: not UTF-8 text (one class name per "
                          "line)") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ConfigError(f"--bundle-labels {path!r}: empty; one class name per line")
    classes = {s[-1] for s in out_shapes if len(s) >= 2}
    if classes and len(lines) not in classes:
        logger.warning("--bundle-labels %s has %d lines but the model's outputs have %s classes",
                       path, len(lines), "/".join(map(str, sorted(classes))))
    return "\n".join(lines) + "\n", len(lines)


def _artifact_entry(d: dict, art, staging: Path, feeds, output_names) -> dict:
    """One artifact: its files copied under artifacts/, its manifest entry, its outputs on the
    stored samples (in its runtime) under outputs/<name>/."""
    fmt = artifact_format(d)
    name = Path(d["path"]).name
    files = {}
    for role, p in art.files.items():
        rel = f"artifacts/{Path(p).name}"
        shutil.copyfile(p, staging / rel)
        info = (d.get("files") or {}).get(role) or {}
        sha = _sha(staging / rel)
        if info.get("sha256") and info["sha256"] != sha:
            raise ConfigError(f"{p}: changed since the run verified it (sha256 differs); "
                              "run again")
        files[role] = {"path": rel, "sha256": sha, "size_bytes": (staging / rel).stat().st_size}
    entry = {
        "name": name, "target": d["target"], "format": fmt, "precision": d["precision"],
        "runtime": d.get("runtime") or "", "runtime_version": runtime_version(fmt),
        "files": files, "sha256": next(iter(files.values()))["sha256"],
        "size_bytes": sum(f["size_bytes"] for f in files.values()),
        "inputs": _io((d.get("io") or {}).get("inputs")),
        "outputs": _io((d.get("io") or {}).get("outputs")),
        "cosine_min_vs_fp32": (d.get("fidelity") or {}).get("cosine_min"),
        "tolerance": {"max_rel_err": TOLERANCE.get(d["precision"], TOLERANCE["fp32"])},
        "reference_outputs": None, "not_run": None,
    }
    blobs = (d.get("extra") or {}).get("blobs")
    if fmt == "ncnn":  # blob names; the runner reshapes each output to the reference's shape
        shapes = {n: list(np.shape(o)) for n, o in zip(output_names, feeds["reference"][0])}
        entry["ncnn"] = {"blobs": blobs or {"inputs": {}, "outputs": {}},
                         "input_shapes": {n: _blob_shape(np.shape(x))
                                          for n, x in feeds["inputs"][0].items()},
                         "output_shapes": shapes}
    run, why = make_runner(staging, entry) if fmt != "ncnn" or blobs else (None, "no blob map")
    if run is None:
        entry["not_run"] = why
        return entry
    from autoglm_compress.bundle.verify import _cosine

    paths, cos = [], 1.0
    for i, feed in enumerate(feeds["inputs"]):
        got = run(feed)
        rel = f"outputs/{name}/{i:03d}.npz"
        _save_npz(staging / rel, dict(zip(output_names, got)))
        paths.append(rel)
        for g, ref in zip(got, feeds["reference"][i]):
            c = _cosine(g, ref)
            cos = min(cos, c if c is not None else -1.0)
    entry["reference_outputs"] = paths
    entry["stored_cosine_min_vs_fp32"] = cos
    verified = entry["cosine_min_vs_fp32"]
    if verified is not None and cos < verified - 1e-3:  # the same samples, another runner
        logger.warning("bundle: %s computes cosine %.5f vs FP32 on the stored samples in the "
                       "bundle's runner, below the run's %.5f", name, cos, verified)
    return entry


def _manifest(staging: Path, *, report: dict, entries, samples, fp32, output_names, inputs,
              preprocess, labels, source: str, ref_runtime: str) -> dict:
    files = {}
    for p in sorted(staging.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(staging).as_posix()] = {"sha256": _sha(p),
                                                        "size_bytes": p.stat().st_size}
    model = report.get("model") or {}
    note = None
    if preprocess is None:
        note = ("not recorded: the data was arrays (or random); give --preprocess to state how "
                "images become the input tensor")
    return {
        "bundle_version": BUNDLE_VERSION,
        "tool": dict(report.get("tool") or {"name": "autoglm-compress"}),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run_id": (report.get("run") or {}).get("id"),
        "model": {"name": Path(str(model.get("path", ""))).name, "format": model.get("format"),
                  "sha256": model.get("sha256"), "size_bytes": model.get("size_bytes")},
        "report": "report.json",
        "report_html": "report.html" if (staging / "report.html").is_file() else None,
        "inputs": inputs,
        "output_names": list(output_names),
        "preprocess": preprocess,
        "preprocess_note": note,
        "labels": labels,
        "samples": {"count": len(samples), "source": source, "inputs": samples,
                    "reference": {"runtime": ref_runtime, "outputs": fp32}},
        "artifacts": entries,
        "files": files,
    }


def _staging_path(dest: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.autoglm-{os.getpid()}-", suffix=".tmp",
                                 dir=dest.parent))


def _tar(staging: Path, out: Path) -> None:
    def clean(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mode = 0o755 if ti.isdir() else 0o644
        return ti

    with tarfile.open(out, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tf:
        for p in sorted(staging.rglob("*")):
            if p.is_file():
                tf.add(p, arcname=p.relative_to(staging).as_posix(), recursive=False,
                       filter=clean)


def _place(staging: Path, dest: Path) -> None:
    """Rename the finished bundle into ``dest`` (Ctrl-C held off for the renames): an archive
    replaces the file; a folder replaces an earlier bundle folder (checked up front)."""
    from autoglm_compress.output_set import signals_held

    if is_archive(dest):
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.autoglm-{os.getpid()}-", suffix=".tmp",
                                   dir=dest.parent)
        os.close(fd)
        try:
            _tar(staging, Path(tmp))
            os.chmod(tmp, 0o644)
            with signals_held():
                os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
    old = None
    with signals_held():
        if dest.exists():
            old = _staging_path(dest)
            os.replace(dest, old / "previous")
        os.replace(staging, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_bundle(dest, *, report: dict, artifacts, report_dicts, report_path: Path, feeds,
                 reference, output_names, inputs, preprocess, labels_path, source: str,
                 ref_runtime: str) -> Path:
    """Write the bundle for a finished run at ``dest`` (``.tar.gz``/``.tgz``: an archive; else a
    folder); returns its path. ``feeds``/``reference``: the verification samples and their FP32
    outputs (the first :data:`MAX_SAMPLES` are stored)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_path(dest)
    try:
        (staging / "artifacts").mkdir()
        n = min(MAX_SAMPLES, len(feeds))
        samples, fp32 = [], []
        for i in range(n):
            samples.append(f"samples/{i:03d}.npz")
            _save_npz(staging / samples[-1], feeds[i])
            fp32.append(f"outputs/fp32/{i:03d}.npz")
            _save_npz(staging / fp32[-1], dict(zip(output_names, reference[i])))
        stored = {"inputs": feeds[:n], "reference": reference[:n]}
        entries = [_artifact_entry(d, a, staging, stored, output_names)
                   for d, a in zip(report_dicts, artifacts)]
        shutil.copyfile(report_path, staging / "report.json")
        html = Path(report_path).with_name("report.html")  # the same report, for people
        if html.is_file():
            shutil.copyfile(html, staging / "report.html")
        labels = None
        if labels_path:
            shapes = [list(np.shape(o)) for o in reference[0]] if reference else []
            text, count = _labels(labels_path, shapes)
            (staging / "labels.txt").write_text(text, encoding="utf-8")
            labels = {"path": "labels.txt", "count": count}
        manifest = _manifest(staging, report=report, entries=entries, samples=samples, fp32=fp32,
                             output_names=output_names, inputs=inputs, preprocess=preprocess,
                             labels=labels, source=source, ref_runtime=ref_runtime)
        from autoglm_compress.bundle.verify import validate_manifest

        validate_manifest(manifest)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _place(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest

"""``autoglm-compress verify-bundle FILE``: recheck a bundle.

1. Open it safely (archive.py: no path leaves the folder, no links or devices, bounded sizes).
2. ``manifest.json``: bounded, JSON, valid against ``bundle_schema.json``; every path it names is a
   safe relative path; every file in the bundle is listed and every listed file is there with its
   size and sha256 (also the artifact entries' own sha256s). Any failure: exit 2, one line.
3. Each artifact whose runtime is installed here (onnxruntime, ai_edge_litert, ncnn) runs on the
   stored samples; its outputs are compared with the outputs stored for it: max |now − stored| /
   max |stored| per output within the precision's tolerance (``TOLERANCE``: fp32 1e-4, fp16 1e-2,
   int8 3e-2) and the same shapes. A mismatch: exit 3, one line per artifact. An artifact whose
   runtime is missing is said (``not run``) and does not fail the check.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from autoglm_compress.bundle.archive import (
    BundleError,
    check_member_name,
    member_files,
    open_bundle,
)
from autoglm_compress.errors import QualityGateError

__all__ = ["SCHEMA_PATH", "schema", "validate_manifest", "verify_bundle"]

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "bundle_schema.json"
MAX_MANIFEST_BYTES = 16 << 20


def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_manifest(manifest: dict) -> None:
    """Raise BundleError (one line: where and what) when ``manifest`` breaks the schema."""
    import jsonschema

    try:
        jsonschema.validate(manifest, schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise BundleError(f"manifest.json: {where}: {e.message[:200]}") from None


def _load_manifest(root: Path, label: str) -> dict:
    p = root / "manifest.json"
    if not p.is_file():
        raise BundleError(f"{label}: no manifest.json; not a bundle")
    if p.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{label}: manifest.json is over {MAX_MANIFEST_BYTES} bytes; refused")
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{label}: manifest.json is not JSON ({e}); the bundle is "
                          "malformed") from None
    validate_manifest(m)
    return m


def sha256_of(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_files(root: Path, m: dict, label: str) -> None:
    listed = m["files"]
    for name in listed:
        check_member_name(name, f"{label}: manifest.json files")
    present = {n for n in member_files(root) if n != "manifest.json"}
    extra = sorted(present - set(listed))
    if extra:
        raise BundleError(f"{label}: {extra[0]} is not in the manifest; the bundle was altered")
    for name, info in listed.items():
        p = root / name
        if name not in present:
            raise BundleError(f"{label}: {name} is listed in the manifest but missing")
        if p.stat().st_size != info["size_bytes"] or sha256_of(p) != info["sha256"]:
            raise BundleError(f"{label}: {name}: checksum mismatch (sha256 or size differs from "
                              "the manifest); the bundle was altered or damaged")
    named = [*m["samples"]["inputs"], *m["samples"]["reference"]["outputs"], m["report"]]
    if m.get("report_html"):
        named.append(m["report_html"])
    if m.get("labels"):
        named.append(m["labels"]["path"])
    for a in m["artifacts"]:
        for f in a["files"].values():
            if listed.get(f["path"], {}).get("sha256") != f["sha256"]:
                raise BundleError(f"{label}: artifact {a['name']}: {f['path']} does not match "
                                  "its checksum in the manifest's files")
        named += a.get("reference_outputs") or []
    for n in named:
        if n not in listed:
            raise BundleError(f"{label}: the manifest names {n}, which its files list lacks")
    counts = {len(m["samples"]["reference"]["outputs"])} | {
        len(a["reference_outputs"]) for a in m["artifacts"] if a.get("reference_outputs")}
    if counts - {len(m["samples"]["inputs"])}:
        raise BundleError(f"{label}: the manifest's stored outputs do not match its "
                          f"{len(m['samples']['inputs'])} samples")


def _load_npz(p: Path, label: str) -> dict[str, np.ndarray]:
    """An npz the bundle stores: uncompressed members (so bounded by the file's size), no
    pickles."""
    try:
        with zipfile.ZipFile(p) as z:
            if any(i.compress_type != zipfile.ZIP_STORED for i in z.infolist()):
                raise BundleError(f"{label}: {p.name} has compressed members; bundle .npz files "
                                  "are stored uncompressed; refused")
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise BundleError(f"{label}: {p.name}: not a readable .npz ({e})") from None


def _rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    if not np.array_equal(np.isfinite(got), np.isfinite(want)):
        return float("inf")
    fin = np.isfinite(want)
    if not fin.any():
        return 0.0
    scale = max(float(np.abs(want[fin]).max()), 1e-12)
    return float(np.abs(got[fin] - want[fin]).max()) / scale


def _cosine(a, b) -> float | None:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 1.0 if na == nb == 0 else float(a @ b / (na * nb)) if na and nb else 0.0


def _check_artifact(root: Path, a: dict, feeds, fp32, names, label: str) -> tuple[str, bool]:
    """One line for the artifact and whether it matched its stored outputs."""
    from autoglm_compress.bundle.runners import make_runner

    if not a.get("reference_outputs"):
        return f"{a['name']}: not run ({a.get('not_run') or 'no stored outputs'})", True
    try:
        run, why = make_runner(root, a)
    except Exception as e:  # noqa: BLE001 - a runtime refusing the file: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"{a['name']}: {a['runtime'] or a['format']} cannot load it: {first}", False
    if run is None:
        return f"{a['name']}: checksums ok; not run ({why})", True
    tol = a["tolerance"]["max_rel_err"]
    worst, worst_at, cos = 0.0, "", 1.0
    for i, (feed, rel) in enumerate(zip(feeds, a["reference_outputs"])):
        want = _load_npz(root / rel, label)
        if set(want) != set(names):
            raise BundleError(f"{label}: {rel} holds {sorted(want)[:5]}, not the outputs "
                              f"{names[:5]}")
        try:
            got = run(feed)
        except Exception as e:  # noqa: BLE001 - whatever the runtime says, one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return f"{a['name']}: {a['runtime'] or a['format']} cannot run it: {first}", False
        for n, g, ref in zip(names, got, (fp32[i][k] for k in names)):
            err = _rel_err(g, want[n])
            if err > worst or not np.isfinite(err):
                worst, worst_at = err, f"output {n!r}, sample {i}"
            c = _cosine(g, ref)
            cos = min(cos, c if c is not None else -1.0)
    ok = worst <= tol
    head = f"{a['name']} ({a['format']}, {a['precision']}, {len(feeds)} samples)"
    detail = (f"max rel err {worst:.3g} vs its stored outputs (tolerance {tol:g}); cosine vs "
              f"FP32 {cos:.5f}")
    if ok:
        return f"ok {head}: {detail}", True
    return (f"{head}: outputs differ from the stored ones at {worst_at}: {detail}"), False


def verify_bundle(path, echo=None) -> list[str]:
    """Check the bundle at ``path``; the lines said (one per artifact, each handed to ``echo``
    as it is known). Raises BundleError (exit 2) for a bad or tampered bundle, QualityGateError
    (exit 3, one line per artifact) when an artifact no longer computes its stored outputs."""
    label, said = str(path), []

    def say(line: str) -> None:
        said.append(line)
        if echo is not None:
            echo(line)

    with open_bundle(path) as root:
        m = _load_manifest(root, label)
        _check_files(root, m, label)
        feeds = [_load_npz(root / p, label) for p in m["samples"]["inputs"]]
        fp32 = [_load_npz(root / p, label) for p in m["samples"]["reference"]["outputs"]]
        names = m["output_names"]
        for p, f in zip(m["samples"]["reference"]["outputs"], fp32):
            if set(f) != set(names):
                raise BundleError(f"{label}: {p} holds {sorted(f)[:5]}, not the outputs "
                                  f"{names[:5]}")
        say(f"checksums ok: {len(m['files'])} files")
        bad = []
        for a in m["artifacts"]:
            line, ok = _check_artifact(root, a, feeds, fp32, names, label)
            if ok:
                say(line)
            else:
                bad.append(line)
    if bad:
        raise QualityGateError("\n".join(bad))
    return said

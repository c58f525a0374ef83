"""The files one run writes into ``-o``, committed together.

Every artifact file of every target is written into a staging folder inside ``-o``
(``.autoglm-staging-<pid>-<run id>/``) and verified there; at the end the report (report.json, and
report.html drawn from it) and the manifest are written beside them, and all are renamed into
place — report.json last — with Ctrl-C and SIGTERM held off for those few renames. An interrupted run leaves the previous complete set (or
nothing new) and removes its staging folder; one left by a killed process (its lock free) and the
temporary files of one (``.NAME.autoglm-<pid>-XXXX.tmp``, that pid gone) are removed by the next
run into the same ``-o``.

``.autoglm-manifest.json`` records the files this tool wrote (name → sha256). A file is deleted as
stale only when the manifest lists it, its name is a plain file name of the tool's artifact
pattern (``<stem>.<target>.<precision>[.<format>].<ext>``), it is a regular file (no symlink)
directly inside ``-o`` and its bytes hash to what the manifest recorded: a crafted report.json or
manifest cannot get a user's file deleted. report.json itself is never read for cleanup.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import threading
import uuid
from pathlib import Path

from autoglm_compress.errors import ConfigError

__all__ = ["MANIFEST", "REPORT", "OutputSet", "clean_leftovers", "is_artifact_name", "signals_held"]

logger = logging.getLogger(__name__)

MANIFEST = ".autoglm-manifest.json"
REPORT = "report.json"
STAGING_PREFIX = ".autoglm-staging-"
_LOCK = ".lock"
_ARTIFACT = re.compile(
    r"^[^/\\\x00]+\.[A-Za-z0-9_-]+\.(?:fp32|fp16|int8)(?:\.[A-Za-z0-9_-]+)?"
    r"\.(?:onnx|tflite|param|bin|json|plan|engine)$"
)
_STAGING = re.compile(rf"^{re.escape(STAGING_PREFIX)}(\d+)-[0-9a-f]+$")
_TMP = re.compile(r"^\..+\.autoglm-(\d+)-[^./]+\.tmp$")  # ir_utils.write_bytes_atomic's
_LEGACY_TMP = re.compile(r"^\.(.+)\.[a-z0-9_]{8}\.tmp$")  # the same, before they named their pid


def is_artifact_name(name) -> bool:
    """A plain file name (no folder, not absolute) of the tool's artifact pattern."""
    return (isinstance(name, str) and name not in (".", "..") and os.path.basename(name) == name
            and not os.path.isabs(name) and bool(_ARTIFACT.match(name)))


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # nt: os.kill(pid, 0) would send CTRL_C_EVENT
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's live process
        return True
    return True


def _lock(folder: Path):
    """Hold ``folder/.lock`` for the life of this process (released by the OS when it dies, even
    by SIGKILL): the next run sees a free lock and removes the folder. None without fcntl."""
    try:
        import fcntl
    except ImportError:
        return None
    fd = os.open(folder / _LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _abandoned(folder: Path, pid: int) -> bool:
    """A staging folder whose run is gone: its lock is free (or, without one, its pid is dead)."""
    try:
        import fcntl
    except ImportError:
        return not _alive(pid)
    try:
        fd = os.open(folder / _LOCK, os.O_RDWR)
    except FileNotFoundError:  # killed between mkdir and lock
        return not _alive(pid)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def clean_leftovers(out_dir: Path) -> list[str]:
    """Remove what a killed run left in ``out_dir``: staging folders whose lock is free and
    temporary files whose writer's pid is gone. Returns the names removed."""
    removed = []
    try:
        entries = list(os.scandir(out_dir))
    except OSError:
        return removed
    for e in entries:
        m = _STAGING.match(e.name)
        if m and e.is_dir(follow_symlinks=False):
            if _abandoned(Path(e.path), int(m.group(1))):
                shutil.rmtree(e.path, ignore_errors=True)
                removed.append(e.name)
            continue
        if not e.is_file(follow_symlinks=False):
            continue
        m = _TMP.match(e.name)
        legacy = None if m else _LEGACY_TMP.match(e.name)
        ours = legacy and (legacy.group(1) == REPORT or is_artifact_name(legacy.group(1)))
        if (m and not _alive(int(m.group(1)))) or ours:
            with contextlib.suppress(OSError):
                os.unlink(e.path)
                removed.append(e.name)
    if removed:
        logger.info("removed a killed run's leftovers in %s: %s", out_dir, ", ".join(removed))
    return removed


@contextlib.contextmanager
def signals_held(act: bool = True):
    """Ctrl-C and SIGTERM held off inside (a few renames), then acted on as they would have been
    (their handler runs at the end; ``act=False``: dropped, for a cleanup that runs because the
    run is stopping anyway). Only in the main thread, where Python runs handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        h = signal.getsignal(s)
        if h is not None and h != signal.SIG_IGN:  # None: installed outside Python, left alone
            old[s] = h
            signal.signal(s, lambda n, _f: got.append(n))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got and act:
            signal.raise_signal(got[0])


def _manifest_files(out_dir: Path) -> dict[str, set[str]]:
    """name → the sha256s the manifest in ``out_dir`` says this tool wrote (nothing when it is
    missing or malformed)."""
    try:
        m = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(m, dict) or m.get("tool") != "autoglm-compress":
        return {}
    files = m.get("files")
    out: dict[str, set[str]] = {}
    for name, shas in (files.items() if isinstance(files, dict) else ()):
        shas = [shas] if isinstance(shas, str) else shas if isinstance(shas, list) else []
        out.setdefault(name, set()).update(s for s in shas if isinstance(s, str))
    return out


def _written_by_us(out_dir: Path, name: str, shas: set[str]) -> Path | None:
    """``out_dir/name`` when it is a file this tool wrote (see the module doc), else None."""
    from autoglm_compress.targets.base import sha256_of

    if not is_artifact_name(name):
        return None
    p = out_dir / name
    try:
        st = os.lstat(p)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode) or p.resolve().parent != out_dir.resolve():
        return None
    return p if sha256_of(p) in shas else None


def _listing(folder: Path) -> dict[str, tuple]:
    try:
        return {e.name: (e.inode(), e.stat(follow_symlinks=False).st_mtime_ns,
                         e.stat(follow_symlinks=False).st_size) for e in os.scandir(folder)}
    except OSError:
        return {}


class OutputSet:
    """One run's files in ``out_dir``: ``open()`` the staging folder the targets write into,
    ``commit()`` them all at the end, ``abort()`` on failure; ``describe()`` says what is on
    disk now (the interrupt message)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.run_id = uuid.uuid4().hex[:16]
        self.staging: Path | None = None
        self.state = "none"  # none → staged → committing → committed
        self._lock_fd = None
        self._before = _listing(self.out_dir)  # what -o held when the run began
        self._had_report = REPORT in self._before

    def open(self) -> Path:
        """Remove a killed run's leftovers, then make this run's staging folder."""
        removed = clean_leftovers(self.out_dir)
        for name in removed:
            self._before.pop(name, None)
        staging = self.out_dir / f"{STAGING_PREFIX}{os.getpid()}-{self.run_id}"
        staging.mkdir()
        self.staging = staging
        self._lock_fd = _lock(staging)
        self.state = "staged"
        return staging

    def commit(self, artifacts, report: dict) -> Path:
        """Check the staged files, name their final paths in ``artifacts`` and ``report``, write
        the report (report.json, and report.html from it) and manifest, rename everything into
        ``out_dir`` (report.json last), then remove
        the files of the previous run this one did not write again."""
        from autoglm_compress.report import write_report
        from autoglm_compress.report_html import REPORT_HTML, write_html
        from autoglm_compress.targets.base import sha256_of

        out, staging = self.out_dir, self.staging
        if (out / REPORT_HTML).is_dir() and not (out / REPORT_HTML).is_symlink():
            raise ConfigError(f"{out / REPORT_HTML} is a folder; remove it or choose another -o")
        names: dict[str, str] = {}
        for a in artifacts:
            for role, p in a.files.items():
                info = a.file_info.get(role) or {}
                if p.parent != staging or not p.is_file() or (
                        info and p.stat().st_size != info["size_bytes"]):
                    raise ConfigError(f"{p}: target {a.target} did not write this file as "
                                      "verified into the run's staging folder")
                if (out / p.name).is_dir() and not (out / p.name).is_symlink():
                    raise ConfigError(f"{out / p.name} is a folder; remove it or choose another -o")
                names[p.name] = info.get("sha256") or sha256_of(p)
            a.relocate(staging, out)
        report["artifacts"] = relocate_strings(report["artifacts"], staging, out)
        report_path = write_report(report, staging / REPORT)
        html_path = write_html(report, staging / REPORT_HTML)  # the same report, for people
        previous = _manifest_files(out)
        stale = [p for n, shas in previous.items() if n not in names
                 if (p := _written_by_us(out, n, shas)) is not None]
        head = {"tool": "autoglm-compress", "manifest_version": 1, "run_id": self.run_id}
        pending = {n: sorted(previous.get(n, set()) | {s}) for n, s in names.items()}
        pending.update({n: sorted(s) for n, s in previous.items()  # kill mid-commit: kept
                        if n not in names and is_artifact_name(n)})
        self._write(staging / "manifest.pending", {**head, "complete": False, "files": pending})
        self._write(staging / "manifest.final", {**head, "complete": True, "files": names,
                                                 "report_sha256": sha256_of(report_path)})
        with signals_held():
            self.state = "committing"
            os.replace(staging / "manifest.pending", out / MANIFEST)
            for n in names:
                os.replace(staging / n, out / n)
            os.replace(staging / "manifest.final", out / MANIFEST)
            os.replace(html_path, out / REPORT_HTML)
            os.replace(report_path, out / REPORT)
            self.state = "committed"
            for p in stale:
                p.unlink(missing_ok=True)
            self._remove_staging()
        if stale:
            logger.info("removed the previous run's %s", ", ".join(p.name for p in stale))
        return out / REPORT

    @staticmethod
    def _write(path: Path, data: dict) -> None:
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")

    def abort(self) -> None:
        """Remove the staging folder (a failed or interrupted run leaves nothing new)."""
        if self.state in ("staged", "committing"):
            with signals_held(act=False):
                self._remove_staging()

    def _remove_staging(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def describe(self) -> str:
        """What ``out_dir`` holds now compared with when the run began, in words."""
        out = str(self.out_dir)
        if self.state == "committed":
            return f"this run's files were already complete in {out} (report.json written last)"
        now = _listing(self.out_dir)
        new = sorted(n for n, v in now.items() if self._before.get(n) != v)
        if not new:
            return (f"no new file left in {out}; the previous run's files are untouched"
                    if self._had_report else f"no new file left in {out}")
        more = f" and {len(new) - 5} more" if len(new) > 5 else ""
        changed = [n for n in new if n in self._before]
        tail = ("this run's and the previous run's files are mixed" if self.state == "committing"
                else f"changed: {', '.join(changed)}" if changed
                else "the previous run's files are untouched")
        return f"left in {out}: {', '.join(new[:5])}{more}; {tail}"

def relocate_strings(obj, old: Path, new: Path):
    """``obj`` (dicts, lists, strings) with every path under the folder ``old`` moved to ``new``."""
    src, dst = str(old / "_")[:-1], str(new / "_")[:-1]
    if isinstance(obj, str):
        return obj.replace(src, dst)
    if isinstance(obj, dict):
        return {k: relocate_strings(v, old, new) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(relocate_strings(v, old, new) for v in obj)
    if isinstance(obj, Path):
        return Path(relocate_strings(str(obj), old, new))
    return obj

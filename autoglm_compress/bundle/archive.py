"""Reading a bundle someone handed us: a ``.tar.gz`` is checked header by header before anything
is written, then extracted into a fresh temporary folder; a folder is read in place.

Refused (one line, exit 2): a member whose name is absolute, has a ``..`` or empty component, a
backslash or a control character; links (symbolic or hard), devices, FIFOs, anything but regular
files and folders; more than :data:`MAX_MEMBERS` members; a member over :data:`MAX_MEMBER_BYTES`
or a total over :data:`MAX_TOTAL_BYTES` (the sizes the tar headers declare, checked before the
member's bytes are read — a gzip bomb is stopped at its header); a tar metadata header (pax, GNU
long name) over 64 KiB; a duplicated name. The limits are module attributes (tests lower them).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

from autoglm_compress.errors import CompressError

__all__ = ["BundleError", "MAX_MEMBERS", "MAX_MEMBER_BYTES", "MAX_TOTAL_BYTES", "is_archive",
           "check_member_name", "open_bundle", "scan_tar"]

MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 4 << 30  # 4 GiB: a large model's weights
MAX_TOTAL_BYTES = 8 << 30
MAX_META_BYTES = 64 << 10  # pax / GNU long-name headers
_BLOCK = 512
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


class BundleError(CompressError):
    """A bundle that cannot be trusted or read: malformed, unsafe, tampered (exit 2)."""


def is_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` names the archive form (``.tar.gz`` / ``.tgz``) rather than a folder."""
    name = str(path).lower()
    return name.endswith((".tar.gz", ".tgz"))


def check_member_name(name: str, where: str) -> str:
    """``name`` as a safe relative POSIX path inside the bundle, else BundleError."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"{where}: an empty member name; the bundle is malformed")
    clean = name[2:] if name.startswith("./") else name
    clean = clean.rstrip("/")
    parts = clean.split("/")
    if (name.startswith("/") or _BAD_CHARS.search(name) or not clean
            or any(p in ("", ".", "..") for p in parts) or re.match(r"^[A-Za-z]:", clean)):
        raise BundleError(f"{where}: member {name!r} would leave the bundle's folder; refused")
    return clean


def _octal(field: bytes, where: str) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # base-256 (GNU): sizes over 8 GiB
        if field[:1] == b"\xff":
            raise BundleError(f"{where}: a negative size in a tar header; refused")
        n = 0
        for b in field[1:]:
            n = (n << 8) | b
        return n
    text = field.split(b"\x00", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise BundleError(f"{where}: a malformed tar header (size {text!r}); refused") from None


def scan_tar(path: Path) -> None:
    """Walk the decompressed tar stream header by header (member data skipped, never stored):
    counts, declared sizes, metadata-header sizes and member types within bounds. Raises
    BundleError naming the first problem."""
    where = str(path)
    total = members = 0
    try:
        with gzip.open(path, "rb") as f:
            while True:
                head = f.read(_BLOCK)
                if len(head) < _BLOCK:
                    raise BundleError(f"{where}: the tar stream ends inside a header; the file "
                                      "is truncated")
                if head == b"\x00" * _BLOCK:
                    return
                kind = head[156:157]
                size = _octal(head[124:136], where)
                members += 1
                if members > MAX_MEMBERS * 3:  # data members, plus pax / long-name headers
                    raise BundleError(f"{where}: more than {MAX_MEMBERS} members; refused")
                if kind in (b"x", b"g", b"L", b"K"):
                    if size > MAX_META_BYTES:
                        raise BundleError(f"{where}: a tar metadata header of {size} bytes "
                                          f"(over {MAX_META_BYTES}); refused")
                elif kind in (b"0", b"\x00", b"7"):
                    if size > MAX_MEMBER_BYTES:
                        raise BundleError(f"{where}: a member of {size} bytes (over "
                                          f"{MAX_MEMBER_BYTES}); refused")
                    total += size
                    if total > MAX_TOTAL_BYTES:
                        raise BundleError(f"{where}: members total over {MAX_TOTAL_BYTES} "
                                          "bytes; refused")
                elif kind != b"5":  # a directory entry carries no data: nothing to bound
                    what = {b"1": "a hard link", b"2": "a symbolic link", b"3": "a device",
                            b"4": "a device", b"6": "a FIFO"}.get(kind, f"type {kind!r}")
                    raise BundleError(f"{where}: a member is {what}; bundles hold only files "
                                      "and folders; refused")
                skip = -(-size // _BLOCK) * _BLOCK
                while skip:
                    got = len(f.read(min(skip, 1 << 20)))
                    if not got:
                        raise BundleError(f"{where}: the tar stream ends inside a member; the "
                                          "file is truncated")
                    skip -= got
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise BundleError(f"{where}: not a readable .tar.gz ({e}); refused") from None


def _extract(path: Path, dest: Path) -> None:
    """Extract the scanned ``path`` into the empty folder ``dest``, checking every member again
    as tarfile reads it (names, types, sizes); files are created new, never through a link."""
    seen: set[str] = set()
    where = str(path)
    try:
        with tarfile.open(path, "r:gz") as tf:
            for m in tf:
                name = check_member_name(m.name, where)
                if name in seen:
                    raise BundleError(f"{where}: member {name!r} appears twice; refused")
                seen.add(name)
                target = dest.joinpath(*name.split("/"))
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not m.isreg():
                    raise BundleError(f"{where}: member {name!r} is not a regular file "
                                      "(a link or a device); refused")
                if m.size > MAX_MEMBER_BYTES:
                    raise BundleError(f"{where}: member {name!r} is {m.size} bytes; refused")
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                             | getattr(os, "O_NOFOLLOW", 0), 0o644)
                left = m.size
                with os.fdopen(fd, "wb") as out:
                    while left:
                        chunk = src.read(min(left, 1 << 20))
                        if not chunk:
                            raise BundleError(f"{where}: member {name!r} is truncated")
                        out.write(chunk)
                        left -= len(chunk)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BundleError(f"{where}: cannot extract ({e}); refused") from None


def _check_folder(root: Path) -> None:
    """A bundle folder holds only regular files and folders (no links, devices)."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            count += 1
            if count > MAX_MEMBERS:
                raise BundleError(f"{root}: more than {MAX_MEMBERS} entries; refused")
            mode = os.lstat(p).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise BundleError(f"{p}: not a regular file or folder (a link or a device); "
                                  "bundles hold only files and folders; refused")


class open_bundle:  # noqa: N801 - used as a context manager, like open()
    """``with open_bundle(path) as root:`` — the bundle's folder: the given folder, or a
    temporary one the checked archive was extracted into (removed on exit)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._tmp: str | None = None

    def __enter__(self) -> Path:
        p = self.path
        if p.is_symlink() and not p.exists():
            raise BundleError(f"{p}: a dangling link; give the bundle itself")
        if p.is_dir():
            _check_folder(p)
            return p
        if not p.is_file():
            raise BundleError(f"{p}: no such bundle (a .tar.gz / .tgz file or a folder)")
        scan_tar(p)
        self._tmp = tempfile.mkdtemp(prefix="autoglm-bundle-")
        try:
            _extract(p, Path(self._tmp))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return Path(self._tmp)

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def member_files(root: Path) -> dict[str, Path]:
    """Every regular file under ``root`` by its POSIX path relative to it."""
    out = {}
    for dirpath, _, filenames in os.walk(root, followlinks=False):
        for n in filenames:
            p = Path(dirpath) / n
            out[p.relative_to(root).as_posix()] = p
    return out

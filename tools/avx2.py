"""Run a command natively as on an x86 CPU with AVX2 but without AVX-512 or VNNI.

    python tools/avx2.py COMMAND [ARGS...]        e.g. python tools/avx2.py .venv/bin/python -m pytest tests

onnxruntime's MLAS, PyTorch and oneDNN choose their kernels from CPUID. ``tools/cpuid_mask.c``,
preloaded into the command (and everything it starts), makes CPUID report no AVX-512 and no VNNI
through Linux CPUID faulting, so the command runs the AVX2 kernels (VPMADDUBSW u8·s8 with its int16
saturation, the U8U8 path, FP32 FMA) at this machine's native speed — what ``qemu-x86_64 -cpu
Haswell`` shows at emulation speed, and bit for bit the same onnxruntime outputs
(``tests/test_cpuid_mask.py``). Timings are those of the AVX2 code on *this* core, not of an
AVX2-only CPU's ports and caches.

Needs Linux on x86-64 with ``cpuid_fault`` in /proc/cpuinfo (Intel since Ivy Bridge, also under
KVM) and gcc; else one line saying so and exit 2. The library is built once into
``$XDG_CACHE_HOME/autoglm-compress/cpuid_mask/<hash of the source>.so``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "cpuid_mask.c"


class Unavailable(RuntimeError):
    """CPUID masking cannot run here (one line: why, and what to use instead)."""


def available() -> tuple[bool, str]:
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False, "CPUID masking needs Linux on x86-64"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False, "/proc/cpuinfo is not readable"
    if " cpuid_fault" not in flags:
        return False, ("this CPU or hypervisor offers no CPUID faulting (no cpuid_fault in "
                       "/proc/cpuinfo): use qemu-x86_64 -cpu Haswell instead")
    if shutil.which("gcc") is None:
        return False, "gcc not found: apt-get install -y gcc"
    return True, ""


def library() -> Path:
    """The built mask library (built on first use; a cache entry is whole or absent)."""
    ok, why = available()
    if not ok:
        raise Unavailable(why)
    text = SOURCE.read_bytes()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    out = base / "autoglm-compress" / "cpuid_mask" / f"{hashlib.sha256(text).hexdigest()[:16]}.so"
    if out.exists():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            so = Path(tmp) / "mask.so"
            p = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(so), str(SOURCE),
                                "-ldl"], capture_output=True, text=True, check=False)
            if p.returncode != 0:
                last = (p.stderr.strip().splitlines() or ["?"])[-1]
                raise Unavailable(f"gcc could not build {SOURCE.name}: {last}")
            os.replace(so, out)
    except OSError as e:
        raise Unavailable(f"cannot build the mask library in {out.parent}: {e.strerror} "
                          "(set XDG_CACHE_HOME to a writable folder)") from None
    return out


def environ(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the mask preloaded."""
    env = dict(os.environ if base is None else base)
    lib = str(library())
    env["LD_PRELOAD"] = " ".join(x for x in (lib, env.get("LD_PRELOAD", "")) if x)
    env["AGC_CPUID_MASK"] = "avx2"
    return env


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0] + "\n\nusage: python tools/avx2.py COMMAND [ARGS...]")
        return 0 if argv else 2
    try:
        env = environ()
    except Unavailable as e:
        print(f"avx2: {e}", file=sys.stderr)
        return 2
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        print(f"avx2: cannot run {argv[0]}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

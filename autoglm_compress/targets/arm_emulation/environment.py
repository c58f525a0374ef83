"""The aarch64 environment the ARM runner needs, built once and cached.

What it is: a Debian arm64 root (python3.11 and the libraries it and the wheels load, each .deb
unpacked with ``dpkg -x``), the aarch64 wheels of numpy, LiteRT and ncnn at the versions this
(x86) environment has, unzipped into one folder for ``PYTHONPATH``, and a TCG plugin (C, built with
``gcc -shared -fPIC``) that counts guest instructions. Everything runs under ``qemu-aarch64``
(Debian's ``qemu-user``).

The .debs come from the system's own apt sources through a private apt state (``-o Dir::State=…``,
``APT::Architecture=arm64``): no ``dpkg --add-architecture``, no root. The wheels come from pip's
configured index (``pip download --platform …aarch64``).

Cached under ``$XDG_CACHE_HOME/autoglm-compress/aarch64/<key>`` (default ``~/.cache/…``), ``key``
a hash of everything that decides the contents (package list, wheel pins, plugin source, qemu
version). Built in a temporary folder beside it and renamed into place: a cache folder is either
absent or complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["Environment", "Unavailable", "cache_root", "setup"]

# what the aarch64 python3.11, numpy, LiteRT and ncnn load (Debian 12 package names)
DEBS = (
    "libc6", "libgcc-s1", "gcc-12-base", "libstdc++6", "libgomp1",
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libsqlite3-0",
    "libcrypt1", "libuuid1", "libncursesw6", "libtinfo6", "libreadline8", "libdb5.3", "libnsl2",
    "libtirpc3", "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3", "libkrb5support0",
    "libcom-err2", "libkeyutils1", "libzstd1", "media-types",
)
# the wheels the guest imports (same versions as here; their own Python deps are not imported
# by ``ai_edge_litert.interpreter`` / ``ncnn``)
WHEELS = ("numpy", "ai-edge-litert", "ncnn")
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64",
             "manylinux_2_28_aarch64")
GUEST_PYTHON = "3.11"

# Instruction counter: every translated block adds its instruction count to one counter when it
# executes (inline, no callback); a marker syscall (getppid — number ``marker=``, 173 on aarch64,
# 110 on x86_64 — with a magic first argument, made by the guest script) records the counter; at
# exit the marks and the total go to the file named by ``out=``. One counter, unsynchronised: run
# the guest with one thread.
PLUGIN_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t,
        void (*)(qemu_plugin_id_t, struct qemu_plugin_tb *));
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, enum qemu_plugin_op,
        void *, uint64_t);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t,
        void (*)(qemu_plugin_id_t, unsigned int, int64_t, uint64_t, uint64_t, uint64_t,
                 uint64_t, uint64_t, uint64_t, uint64_t, uint64_t));
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, void *), void *);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;
static uint64_t insns;
static uint64_t marks[64];
static int n_marks;
static char out[4096];
static int64_t marker_nr = 173;

static void trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns,
                                             qemu_plugin_tb_n_insns(tb));
}
static void sys(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8) {
    if (num == marker_nr && a1 == 0x41474c4dULL && n_marks < 64) marks[n_marks++] = insns;
}
static void done(qemu_plugin_id_t id, void *p) {
    FILE *f = out[0] ? fopen(out, "w") : stderr;
    if (!f) return;
    fprintf(f, "total %llu\n", (unsigned long long)insns);
    for (int i = 0; i < n_marks; i++) fprintf(f, "mark %llu\n", (unsigned long long)marks[i]);
    if (f != stderr) fclose(f);
}
__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strncmp(argv[i], "out=", 4)) snprintf(out, sizeof out, "%s", argv[i] + 4);
        else if (!strncmp(argv[i], "marker=", 7)) marker_nr = atoll(argv[i] + 7);
    qemu_plugin_register_vcpu_tb_trans_cb(id, trans);
    qemu_plugin_register_vcpu_syscall_cb(id, sys);
    qemu_plugin_register_atexit_cb(id, done, 0);
    return 0;
}
"""
MARKER = {"aarch64": 173, "x86_64": 110}, 0x41474C4D  # getppid per arch, magic first argument


class Unavailable(RuntimeError):
    """The ARM runner cannot be set up here; the message is one line saying what to install."""


@dataclasses.dataclass(frozen=True)
class Environment:
    """A built aarch64 environment: the root (``qemu-aarch64 -L``), the wheels folder
    (``PYTHONPATH``), the plugin, and ``qemu-aarch64`` itself."""

    path: Path
    qemu: str

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def site(self) -> Path:
        return self.path / "site"

    @property
    def plugin(self) -> Path:
        return self.path / "insns.so"

    @property
    def python(self) -> Path:
        return self.root / "usr" / "bin" / f"python{GUEST_PYTHON}"

    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autoglm-compress" / "aarch64"


def _pins() -> dict[str, str]:
    out = {}
    for name in WHEELS:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            raise Unavailable(f"the ARM runner mirrors this environment's {name}, which is not "
                              "installed: pip install 'autoglm-compress[runtimes]'") from None
    return out


def _tools() -> str:
    """``qemu-aarch64``'s path; each missing tool is one line saying what to install."""
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise Unavailable("qemu-aarch64 not found: install Debian's qemu-user "
                          "(apt-get install -y qemu-user)")
    for tool, pkg in (("gcc", "gcc"), ("dpkg", "dpkg"), ("apt-get", "apt")):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} not found (the ARM runner builds its aarch64 root with "
                              f"it): apt-get install -y {pkg}")
    return qemu


def _qemu_version(qemu: str) -> str:
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout.splitlines() or ["?"])[0]


def _key(pins: dict, qemu_version: str) -> str:
    text = json.dumps({"debs": DEBS, "pins": pins, "plugin": PLUGIN_C, "qemu": qemu_version,
                       "platforms": PLATFORMS})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    """Run a set-up step; a failure is :class:`Unavailable` with the step and its last line."""
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False,
                           timeout=900)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"the ARM runner's set-up timed out while {what}") from None
    if p.returncode != 0:
        last = ([ln for ln in (p.stderr + p.stdout).splitlines() if ln.strip()] or ["?"])[-1]
        raise Unavailable(f"the ARM runner's set-up failed while {what} (network or apt "
                          f"sources?): {last.strip()}")
    return p.stdout


def _apt_options(state: Path) -> list[str]:
    """A private apt state for arm64: the system's sources, nothing of the system's changed."""
    for d in ("lists/partial", "archives/partial"):
        (state / d).mkdir(parents=True, exist_ok=True)
    return ["-o", f"Dir::State={state}", "-o", f"Dir::State::Lists={state / 'lists'}",
            "-o", f"Dir::Cache={state}", "-o", f"Dir::Cache::Archives={state / 'archives'}",
            "-o", "Dir::State::status=/dev/null", "-o", "APT::Architecture=arm64",
            "-o", "APT::Architectures::=arm64", "-o", "Debug::NoLocking=1", "-q"]


def _build_root(tmp: Path, root: Path) -> dict[str, str]:
    opts = _apt_options(tmp / "apt")
    _run(["apt-get", *opts, "update"], "reading the arm64 package lists (apt-get update)")
    debs = tmp / "debs"
    debs.mkdir()
    _run(["apt-get", *opts, "download", *(f"{d}:arm64" for d in DEBS)],
         "downloading the arm64 .debs (apt-get download)", cwd=debs)
    got = {}
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(root)], f"unpacking {deb.name}")
        name, ver = deb.name.split("_")[:2]
        got[name] = ver.replace("%3a", ":")
    return got


def _fetch_wheels(tmp: Path, site: Path, pins: dict[str, str]) -> list[str]:
    wheels = tmp / "wheels"
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
          *plat, "--python-version", GUEST_PYTHON, "--implementation", "cp",
          "--abi", "cp" + GUEST_PYTHON.replace(".", ""), "-d", str(wheels),
          *(f"{n}=={v}" for n, v in pins.items())],
         "downloading the aarch64 wheels (pip download)")
    names = []
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            z.extractall(site)
        names.append(whl.name)
    return names


def _build_plugin(tmp: Path, out: Path) -> None:
    src = tmp / "insns.c"
    src.write_text(PLUGIN_C)
    _run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(out), str(src)],
         "compiling the instruction-count plugin (gcc)")


RETRY_AFTER_S = 3600  # a failed set-up (offline machine) is not retried by every run for this long


def setup(rebuild: bool = False, retry_failed: bool = True) -> Environment:
    """The cached aarch64 environment, built on first use (about a minute: ~80 MB of .debs and
    wheels). Raises :class:`Unavailable` (one line: what to install, or which step failed).
    ``retry_failed=False`` (``--verify-arm auto``): a set-up that failed within the last hour
    is not tried again (its message is raised at once)."""
    qemu = _tools()
    pins = _pins()
    qv = _qemu_version(qemu)
    final = cache_root() / _key(pins, qv)
    if (final / "manifest.json").exists() and not rebuild:
        return Environment(final, qemu)
    failed = final.with_name(final.name + ".failed")
    if not retry_failed and failed.exists() and \
            time.time() - failed.stat().st_mtime < RETRY_AFTER_S:
        raise Unavailable(f"{failed.read_text().strip()} (retry: python -m "
                          "autoglm_compress.targets.arm_emulation)")
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        _build(final, qemu, qv, pins, rebuild)
    except Unavailable as e:
        failed.write_text(str(e))
        raise
    failed.unlink(missing_ok=True)
    return Environment(final, qemu)


def _build(final: Path, qemu: str, qv: str, pins: dict, rebuild: bool) -> None:
    """Build into a temporary folder beside ``final``, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    try:
        build = tmp / "env"
        (build / "root").mkdir(parents=True)
        debs = _build_root(tmp, build / "root")
        wheels = _fetch_wheels(tmp, build / "site", pins)
        _build_plugin(tmp, build / "insns.so")
        (build / "manifest.json").write_text(json.dumps(
            {"qemu": qv, "debs": debs, "wheels": wheels, "pins": pins}, indent=1))
        _smoke(Environment(build, qemu))
        if rebuild and final.exists():
            shutil.rmtree(final)
        try:
            os.rename(build, final)
        except OSError:  # another process finished first: theirs is as good
            if not (final / "manifest.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _smoke(env: Environment) -> None:
    """The guest imports numpy, LiteRT's interpreter and ncnn (else the set-up failed)."""
    code = "import numpy, ncnn; from ai_edge_litert.interpreter import Interpreter; print('ok')"
    p = subprocess.run(guest_command(env, "-c", code), capture_output=True, text=True,
                       check=False, timeout=600)
    if p.returncode != 0 or "ok" not in p.stdout:
        last = ([ln for ln in p.stderr.splitlines() if ln.strip()] or ["?"])[-1]
        raise Unavailable(f"the aarch64 Python built for the ARM runner does not start: {last}")


# MIDR part numbers (Arm Ltd, implementer 0x41) for the guest's /proc/cpuinfo
CPU_PARTS = {"cortex-a35": 0xD04, "cortex-a53": 0xD03, "cortex-a55": 0xD05, "cortex-a57": 0xD07,
             "cortex-a72": 0xD08, "cortex-a76": 0xD0B, "cortex-a710": 0xD47,
             "neoverse-n1": 0xD0C, "neoverse-n2": 0xD49, "neoverse-v1": 0xD40, "max": 0xD0C}
_V80 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
_V82 = _V80 + " atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"


def cpu_view(env: Environment, cpu: str) -> Path:
    """The ``-L`` root for ``cpu``: the shared root's folders (links) plus a one-CPU
    ``/proc/cpuinfo`` and ``/sys/devices/system/cpu`` describing that core. qemu-user 7.2 shows the
    guest the host's (x86) files there, on which LiteRT's cpuinfo crashes (null read while
    matching caches to cores); ncnn and XNNPACK also pick kernels by the core named here."""
    if cpu not in CPU_PARTS:
        raise ValueError(f"--arm-cpu {cpu!r}: one of {', '.join(CPU_PARTS)}")
    view = env.path / "views" / cpu
    if view.exists():
        return view
    view.parent.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cpu}-", dir=view.parent))
    for top in env.root.iterdir():
        (tmp / top.name).symlink_to(Path("..", "..", "root", top.name))  # relative: renamable
    old = cpu in ("cortex-a35", "cortex-a53", "cortex-a57", "cortex-a72")
    (tmp / "proc").mkdir()
    (tmp / "proc" / "cpuinfo").write_text(
        f"processor\t: 0\nBogoMIPS\t: 48.00\nFeatures\t: {_V80 if old else _V82}\n"
        f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
        f"CPU part\t: 0x{CPU_PARTS[cpu]:03x}\nCPU revision\t: 0\n\n")
    sysc = tmp / "sys" / "devices" / "system" / "cpu"
    (sysc / "cpu0" / "topology").mkdir(parents=True)
    for f in ("possible", "present", "online", "kernel_max"):
        (sysc / f).write_text("0\n")
    for f in ("physical_package_id", "cluster_cpus_list", "core_siblings_list",
              "thread_siblings_list", "package_cpus_list", "core_cpus_list"):
        (sysc / "cpu0" / "topology" / f).write_text("0\n")
    try:
        os.rename(tmp, view)
    except OSError:  # made by another process meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return view


def guest_command(env: Environment, *args: str, cpu: str = "cortex-a72",
                  plugin_out: Path | None = None) -> list[str]:
    """``qemu-aarch64 -cpu cpu … python3.11 args`` (isolated from the host's Python settings;
    the guest writes its bytecode caches into the environment, so later starts are quicker)."""
    cmd = [env.qemu, "-L", str(cpu_view(env, cpu)), "-cpu", cpu,
           "-E", f"PYTHONPATH={env.site}", "-E", "PYTHONNOUSERSITE=1",
           "-E", "OMP_NUM_THREADS=1",
           "-U", "PYTHONHOME", "-U", "VIRTUAL_ENV", "-U", "PYTHONDONTWRITEBYTECODE",
           "-U", "PYTHONSTARTUP", "-U", "PYTHONPYCACHEPREFIX"]
    if plugin_out is not None:
        cmd += ["-plugin", f"{env.plugin},out={plugin_out}"]
    return [*cmd, str(env.python), *args]


def host_command(env: Environment, *args: str, cpu: str = "max",
                 plugin_out: Path | None = None) -> list[str]:
    """This machine's own Python (x86_64) under ``qemu-x86_64`` with the same instruction-count
    plugin: x86 instruction counts of the x86 runtimes, to check the count against measured
    x86 latency (is an instruction count a fair proxy for time?)."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise Unavailable("qemu-x86_64 not found: apt-get install -y qemu-user")
    cmd = [qemu, "-cpu", cpu, "-E", "OMP_NUM_THREADS=1"]
    if plugin_out is not None:
        cmd += ["-plugin", f"{env.plugin},out={plugin_out},marker={MARKER[0]['x86_64']}"]
    return [*cmd, sys.executable, *args]

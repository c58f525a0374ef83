"""``tools/avx2.py``: a command run natively with CPUID masked to AVX2 (no AVX-512, no VNNI) runs
the libraries' AVX2 kernels — onnxruntime's saturating VPMADDUBSW included — and nothing else
about the process changes (a real crash is still a crash, Python's faulthandler still reports it).

On a host without CPUID faulting (or without gcc) these skip with the one-line reason; the same
checks then run only under ``qemu-x86_64 -cpu Haswell`` (bench/RESULTS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import avx2  # noqa: E402 - tools/ is not a package

OK, WHY = avx2.available()
if OK:
    try:
        avx2.library()  # built once here, so every test below runs or all skip with one reason
    except avx2.Unavailable as e:
        OK, WHY = False, str(e)
pytestmark = pytest.mark.skipif(not OK, reason=WHY)


def _child(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env or avx2.environ(), timeout=300, check=False)


def test_masked_process_sees_avx2_only():
    p = _child("import torch\n"
               "from autoglm_compress.quantization.saturation import host_cpu\n"
               "print(host_cpu(), torch.backends.cpu.get_cpu_capability())")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["avx2", "AVX2"]


def test_onnxruntime_saturates_like_the_kernel_model_when_masked():
    """tests/test_saturation.py's kernel check in a masked process: onnxruntime's output must be
    the *saturated* simulation there (host_cpu() says avx2), on whatever CPU runs the suite."""
    test = f"{ROOT / 'tests' / 'test_saturation.py'}::test_kernel_model_matches_onnxruntime"
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                       capture_output=True, text=True, env=avx2.environ(), timeout=600,
                       check=False, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:]
    assert "4 passed" in p.stdout


def test_real_crash_still_crashes_with_faulthandler_report():
    p = _child("import faulthandler, ctypes\nfaulthandler.enable()\nctypes.string_at(0)")
    assert p.returncode == -11
    assert "Fatal Python error: Segmentation fault" in p.stderr


def test_unknown_mask_is_refused_in_one_line():
    env = avx2.environ()
    env["AGC_CPUID_MASK"] = "sse2"
    p = _child("print('ran')", env)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == ["cpuid_mask: AGC_CPUID_MASK=sse2 is not known (avx2)"]


def test_launcher_runs_the_command_masked():
    code = "from autoglm_compress.quantization.saturation import host_cpu; print(host_cpu())"
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "avx2.py"), sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=300, check=False)
    assert (p.returncode, p.stdout.strip()) == (0, "avx2")
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "avx2.py"), "no-such-command-here"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2
    assert p.stderr.strip() == "avx2: cannot run no-such-command-here: No such file or directory"

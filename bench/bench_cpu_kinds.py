"""Default INT8 x86 on both CPU kinds (AVX2 without VNNI, AVX-512 VNNI) vs onnxruntime MinMax.

    .venv/bin/python bench/bench_cpu_kinds.py [--models lite1,lite2] [--samples 128] [--eval 256]
        [--work /tmp/bench_cpu256] [--no-count]

Per model (EfficientNet-Lite1 240², -Lite2 260², ImageNet weights, natural-image crops made by
``tests/real/zoo.py``):

1. **compress cost**, each job a fresh process on this machine, wall time and its own peak RSS:
   ours with default flags for ``--cpu vnni`` and for ``--cpu avx2`` (the AVX2 scheme's extra work
   is ours: numpy/onnxruntime-FP32 work that costs the same on either CPU), and onnxruntime's
   ``quant_pre_process`` + ``quantize_static`` MinMax (QDQ, per-channel, u8/s8) beside them.
2. **fidelity and latency** of each INT8 artifact vs FP32 on the eval crops (top-1 agreement,
   logit cosine, interleaved median latency), in the kernels of each CPU kind: natively here, and
   in a child process whose CPUID is masked to AVX2 without AVX-512/VNNI (``tools/avx2.py``:
   onnxruntime's MLAS then runs its AVX2 kernels — VPMADDUBSW, U8U8, FP32 FMA — at native speed;
   real seconds of the AVX2 code on this core, not of an AVX2-only CPU's ports).
3. **checks of the AVX2 figures**: the masked child's outputs on the first 4 crops against
   onnxruntime's under ``qemu-x86_64 -cpu Haswell`` (bit for bit equal = the same kernels), and
   the guest instructions per inference under ``qemu-x86_64 -cpu Haswell`` counted between two
   marker syscalls by the instruction-count plugin of ``targets/arm_emulation`` (one thread,
   deterministic: repeats agree to 0.1 %) — a second, CPU-independent cost figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "real"), str(ROOT / "bench"), str(ROOT / "tools")]

HEADING = "## Default INT8 x86 on AVX2 without VNNI and on VNNI, vs onnxruntime MinMax"
QEMU = ("qemu-x86_64", "-cpu", "Haswell")


def build(variant: int, work: Path, n_calib: int, n_eval: int) -> dict:
    import zoo

    from autoglm_compress import load
    from autoglm_compress.ir_utils import save_atomic

    rm = zoo.efficientnet_lite(work, variant, n_calib=n_calib, n_eval=n_eval)
    fp32 = work / f"lite{variant}.fp32.onnx"
    if not fp32.exists():
        save_atomic(load(rm.model), fp32)
    return {"src": str(rm.model), "fp32": str(fp32), "calib": str(rm.calib), "eval": str(rm.eval)}


def child_ours(m: dict, out: Path, samples: int, cpu: str) -> dict:
    from autoglm_compress import compress

    t0 = time.perf_counter()
    res = compress(m["src"], int8=True, targets=("x86",), calib=m["calib"], calib_samples=samples,
                   eval_data=m["eval"], x86_cpu=cpu, out_dir=out)
    q = next(p for p in res.report["passes"] if p["name"].startswith("quantize"))
    return {"wall_s": time.perf_counter() - t0, "artifact": str(res.artifacts[0].path),
            "weight_widths": q["stats"].get("weight_widths")}


def child_run(model: str, eval_npz: str, n: int) -> dict:
    """One warm-up inference, a marker syscall, ``n`` inferences, a marker (the instruction-count
    plugin records its counter at each marker)."""
    import ctypes

    from autoglm_compress.ir_utils import ort_session
    from autoglm_compress.targets.arm_emulation.environment import MARKER

    s = ort_session(model, threads=1)
    data = dict(np.load(eval_npz))
    feed = {k: v[:1] for k, v in data.items()}
    s.run(None, feed)
    libc = ctypes.CDLL(None)
    libc.syscall(MARKER[0]["x86_64"], ctypes.c_uint64(MARKER[1]))
    for _ in range(n):
        s.run(None, feed)
    libc.syscall(MARKER[0]["x86_64"], ctypes.c_uint64(MARKER[1]))
    return {}


def child_outs(m: dict, arts: dict, n: int, out: str) -> dict:
    """Each artifact's outputs on the first ``n`` eval crops, saved to ``out`` (.npz)."""
    from autoglm_compress.ir_utils import ort_session

    data = dict(np.load(m["eval"]))
    feeds = [{k: v[i:i + 1] for k, v in data.items()} for i in range(n)]
    got = {}
    for k, p in arts.items():
        s = ort_session(p, threads=1)
        got[k] = np.concatenate([s.run(None, f)[0] for f in feeds])
    np.savez(out, **got)
    return {}


def _child(args, prefix=(), env=None) -> dict:
    cmd = [*prefix, sys.executable, str(Path(__file__).resolve()), *args]
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=7200, env=env)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def spawn(kind: str, m: dict, out: Path, samples: int) -> dict:
    """One compress job in a fresh interpreter, with its own peak RSS (VmHWM)."""
    out.mkdir(parents=True, exist_ok=True)
    return _child(["--child", kind, "--spec", json.dumps(m), "--outdir", str(out),
                   "--samples", str(samples)])


def instructions_per_run(model: str, eval_npz: str, n: int = 3) -> float | None:
    """Guest instructions of one inference under ``qemu-x86_64 -cpu Haswell`` (AVX2 dispatch),
    counted between the markers of :func:`child_run` (None: qemu or the plugin unavailable)."""
    import tempfile

    from autoglm_compress.targets.arm_emulation.environment import Unavailable, host_command, setup

    try:
        env = setup()
    except Unavailable:
        return None
    with tempfile.TemporaryDirectory(prefix="agc_insns_") as tmp:
        out = Path(tmp) / "insns.txt"
        cmd = host_command(env, str(Path(__file__).resolve()), "--child", "run", "--spec",
                           json.dumps({"model": model, "eval": eval_npz}), "--samples", str(n),
                           cpu="Haswell", plugin_out=out)
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=7200)
        if p.returncode != 0 or not out.exists():
            return None
        marks = [int(ln.split()[1]) for ln in out.read_text().splitlines() if ln.startswith("mark ")]
    return (marks[1] - marks[0]) / n if len(marks) == 2 else None


def haswell_check(m: dict, arts: dict, n: int = 4) -> dict:
    """Do the masked child's outputs equal onnxruntime's under qemu Haswell, bit for bit?"""
    import tempfile

    import avx2

    res = {}
    with tempfile.TemporaryDirectory(prefix="agc_hsw_") as tmp:
        got = {}
        for tag, prefix, env in (("masked", (), avx2.environ()), ("haswell", QEMU, None)):
            out = str(Path(tmp) / f"{tag}.npz")
            r = _child(["--child", "outs", "--spec", json.dumps({**m, "arts": arts, "out": out}),
                        "--samples", str(n)], prefix, env)
            if "error" in r:
                return {"error": f"{tag}: {r['error']}"}
            got[tag] = dict(np.load(out))
        for k in arts:
            res[k] = float(np.abs(got["masked"][k] - got["haswell"][k]).max())
    return {"max_abs_diff": res, "equal": all(v == 0.0 for v in res.values()), "crops": n}


def run_model(variant: int, work: Path, samples: int, n_eval: int, count: bool) -> dict:
    import avx2
    from common import fidelity_vs_fp32

    from autoglm_compress.quantization.saturation import host_cpu

    m = build(variant, work, samples, n_eval)
    name = f"lite{variant}"
    row: dict = {"model": f"EfficientNet-Lite{variant}", "host": host_cpu(), "eval_crops": n_eval}
    for kind in ("ours-vnni", "ours-avx2", "ort"):
        row[kind] = spawn(kind, m, work / f"{name}.{kind}", samples)
    arts = {k: row[k]["artifact"] for k in ("ours-vnni", "ours-avx2", "ort")
            if "artifact" in row[k]}
    row["native"] = fidelity_vs_fp32(m["fp32"], arts, m["eval"], n_eval)
    ok, why = avx2.available()
    if ok:
        row["avx2"] = _child(["--child", "fidelity", "--spec", json.dumps({**m, "arts": arts}),
                              "--samples", str(n_eval)], env=avx2.environ())
        if shutil.which(QEMU[0]):
            row["haswell_check"] = haswell_check(m, arts)
    else:
        row["avx2"] = {"error": why}
    if count:
        fp32 = instructions_per_run(m["fp32"], m["eval"])
        row["avx2_instructions"] = {"fp32": fp32}
        for k in ("ours-avx2", "ours-vnni", "ort"):
            if k in arts and fp32:
                ins = instructions_per_run(arts[k], m["eval"])
                row["avx2_instructions"][k] = ins
                row["avx2_instructions"][f"{k}_vs_fp32"] = ins / fp32 if ins else None
    return row


def _f(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def render(rows: list[dict], cmd: str) -> str:
    lines = [HEADING, "", f"Command: `{cmd}` ({time.strftime('%Y-%m-%d')}; this machine: "
             f"{rows[0]['host'] if rows else '?'}, 2 cores)", "",
             "| model | job | wall s | ×ORT | peak MB | top-1 VNNI | top-1 AVX2 | cosine mean AVX2 "
             "| latency vs FP32 VNNI | latency vs FP32 AVX2 | AVX2 instr. vs FP32 (Haswell) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ort_wall = r["ort"].get("wall_s")
        for k in ("ours-vnni", "ours-avx2", "ort"):
            j, nat, avx = r[k], r["native"].get(k, {}), (r.get("avx2") or {}).get(k, {})
            ins = (r.get("avx2_instructions") or {}).get(f"{k}_vs_fp32")
            ratio = j["wall_s"] / ort_wall if j.get("wall_s") and ort_wall else None
            lines.append(
                f"| {r['model']} | {k} | {_f(j.get('wall_s'), '{:.1f}')} | {_f(ratio, '{:.2f}×')} "
                f"| {_f(j.get('peak_rss_mb'), '{:.0f}')} | {_f(nat.get('top1'))} | "
                f"{_f(avx.get('top1'))} | {_f(avx.get('cosine_mean'), '{:.4f}')} | "
                f"{_f(nat.get('latency_vs_fp32'), '{:.2f}')} | "
                f"{_f(avx.get('latency_vs_fp32'), '{:.2f}')} | {_f(ins, '{:.2f}')} |")
        chk = r.get("haswell_check") or {}
        if chk:
            lines.append(f"| {r['model']} | masked AVX2 = qemu Haswell outputs ({chk.get('crops')} "
                         f"crops) | {chk.get('equal', chk.get('error'))} |||||||||")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lite1,lite2")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--work", default="/tmp/bench_cpu256")
    ap.add_argument("--out", default=str(ROOT / "bench" / "cpu_kinds_results.json"))
    ap.add_argument("--no-count", action="store_true",
                    help="skip the qemu instruction counts")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--outdir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        spec = json.loads(a.spec)
        if a.child == "fidelity":
            from common import fidelity_vs_fp32

            res = fidelity_vs_fp32(spec["fp32"], spec["arts"], spec["eval"], a.samples)
        elif a.child == "outs":
            res = child_outs(spec, spec["arts"], a.samples, spec["out"])
        elif a.child == "run":
            res = child_run(spec["model"], spec["eval"], a.samples)
        elif a.child == "ort":
            import bench_real

            res = bench_real.child_ort(spec, Path(a.outdir), a.samples)
        else:
            res = child_ours(spec, Path(a.outdir), a.samples, a.child.split("-")[1])
        from common import peak_rss_mb

        res["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(res))
        return 0
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [run_model(int(v.removeprefix("lite")), work, a.samples, a.eval, not a.no_count)
            for v in a.models.split(",")]
    Path(a.out).write_text(json.dumps(rows, indent=1, default=str))
    cmd = "python bench/bench_cpu_kinds.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(rows, cmd.strip())
    print(text)  # the table that bench/RESULTS.md holds under HEADING
    return 0


if __name__ == "__main__":
    sys.exit(main())

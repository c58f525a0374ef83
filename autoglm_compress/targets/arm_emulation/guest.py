"""Run one artifact on sample feeds — the script the aarch64 Python runs under qemu-aarch64.

Standalone (numpy and the runtime only: the guest has no onnx_ir or torch), yet it runs the
artifact through the very runner functions the x86 verification uses (``litert_runner`` in
``targets/tflite/litert_run.py``, ``ncnn_runner`` in ``targets/ncnn/ncnn_run.py``): their definitions
are read from those files and compiled here, so the IO handling (ncnn blob names, LiteRT's
full-integer IO) is the same code on both machines. Those functions import their runtime inside
and use only ``np`` at module level.

``python guest.py spec.json``; the spec lists jobs (artifact files, format, precision, kernels, how
many feeds), the feeds (.npz: ``<sample>/<input>``) and where to write the outputs (.npz:
``<job>/<sample>/<k>``). Per job: one warm-up inference, a marker syscall, the N inferences, a
marker — the instruction-count plugin records its counter at each marker.
"""

import ast
import ctypes
import json
import platform
import sys
from pathlib import Path

import numpy as np

# environment.MARKER: getppid with a magic first argument
MARKER = ({"aarch64": 173, "x86_64": 110}[platform.machine()], 0x41474C4D)


def load_function(source: str, name: str):
    """The top-level function ``name`` of the Python file ``source``, compiled with the file's
    other top-level functions (its helpers) and without its imports (the guest has numpy only)."""
    tree = ast.parse(Path(source).read_text(), source)
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    code = compile(ast.Module(body=funcs, type_ignores=[]), source, "exec",
                   flags=__import__("__future__").annotations.compiler_flag, dont_inherit=True)
    scope = {"np": np, "Path": Path, "__name__": f"guest.{name}"}
    exec(code, scope)  # noqa: S102 - our own source file, the same the host imports
    return scope[name]


def make_runner(job: dict, sources: dict):
    files = {k: Path(v) for k, v in job["files"].items()}
    if job["format"] == "tflite":
        fn = load_function(sources["tflite"], "litert_runner")
        return fn(files["model"], 1, reference_kernels=job["kernels"] == "reference")()
    fn = load_function(sources["ncnn"], "ncnn_runner")
    return fn(files["param"], files["bin"], job["io"], job["precision"], 1)()


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    with np.load(spec["feeds"]) as z:
        feeds: list[dict] = [{} for _ in range(spec["n"])]
        for key in z.files:
            i, name = key.split("/", 1)
            feeds[int(i)][name] = z[key]
    libc = ctypes.CDLL(None)
    got = {}
    for j, job in enumerate(spec["jobs"]):
        run = make_runner(job, spec["sources"])
        mine = feeds[:job["n"]]
        if mine:
            run(mine[0])  # warm-up: XNNPACK packs weights, ncnn allocates, on the first inference
        libc.syscall(MARKER[0], ctypes.c_uint64(MARKER[1]))
        outs = [run(f) for f in mine]
        libc.syscall(MARKER[0], ctypes.c_uint64(MARKER[1]))
        got.update({f"{j}/{i}/{k}": np.asarray(o) for i, out in enumerate(outs)
                    for k, o in enumerate(out)})
        del run
    np.savez(spec["out"], **got)


if __name__ == "__main__":
    main(sys.argv[1])

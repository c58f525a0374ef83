"""Second route for TorchScript that torch's exporter refuses: pnnx → Python module → ONNX.

pnnx (PyPI ``pnnx``, ships its own binary) re-reads a TorchScript archive, maps fused and
unusual aten ops back to ``nn``/``F`` calls, and writes ``<stem>_pnnx.py`` (an ``nn.Module``
whose weights load from ``<stem>.pnnx.bin``). Its ``.pnnx.onnx`` is pnnx's own IR in an ONNX
container (op types like ``nn.Linear``), not runnable ONNX, so we import the generated module and
export it with torch's exporter instead. The generated model is trusted only if it reproduces
the archive's outputs on the example inputs (max |Δ| ≤ 1e-4 + 1e-3·|ref|); pnnx is known to
mis-map some ops, and this check catches it.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

from autoglm_compress.errors import ModelLoadError
from autoglm_compress.inputs import InputSpec

__all__ = ["PNNX_TIMEOUT_S", "convert", "unsupported_ops"]

logger = logging.getLogger(__name__)
PNNX_TIMEOUT_S = 300
_PNNX_DTYPES = {
    "float32": "f32",
    "float16": "f16",
    "float64": "f64",
    "int64": "i64",
    "int32": "i32",
    "int16": "i16",
    "int8": "i8",
    "uint8": "u8",
    "bool": "bool",
}


def unsupported_ops(module, error: BaseException, opset: int) -> list[str]:
    """Ops the TorchScript exporter has no symbolic for: the one it named, plus fused ``aten::_*``."""
    named = re.findall(r"operator '([\w:.]+)'", str(error))
    try:
        from torch.onnx._internal.torchscript_exporter.registration import registry

        kinds = {n.kind() for n in _all_nodes(module.inlined_graph)}
        missing = sorted(  # private fused ops; other unregistered kinds are often lowered first
            k
            for k in kinds
            if k.startswith("aten::_")
            and not k.startswith("aten::__")
            and not registry.is_registered_op(k, opset)
        )
    except Exception:  # noqa: BLE001 - a private registry; the error text is enough without it
        missing = []
    return list(dict.fromkeys(named + missing))


def _all_nodes(graph):
    for node in graph.nodes():
        yield node
        for block in node.blocks():
            yield from _all_nodes(block)


def _binary() -> str:
    try:
        import pnnx
    except ImportError:
        raise ModelLoadError("pnnx is not installed (pip install pnnx)") from None
    exe = Path(pnnx.EXEC_PATH)
    if not exe.is_file():
        raise ModelLoadError(f"pnnx binary missing at {exe}")
    return str(exe)


def _run_pnnx(path: Path, specs: list[InputSpec], work: Path) -> Path:
    """Run pnnx in ``work`` on a copy of the archive; returns the generated Python file."""
    model = work / "model.pt"
    shutil.copyfile(path, model)
    shapes = ",".join(
        f"[{','.join(map(str, s.shape))}]{_PNNX_DTYPES.get(s.dtype, 'f32')}" for s in specs
    )
    cmd = [_binary(), str(model), f"inputshape={shapes}", "fp16=0", "device=cpu"]
    cmd += [f"{k}={work / ('ncnn.' + k)}" for k in ("ncnnparam", "ncnnbin", "ncnnpy")]
    try:
        proc = subprocess.run(
            cmd, cwd=work, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise ModelLoadError(f"pnnx timed out after {PNNX_TIMEOUT_S} s") from None
    py = work / "model_pnnx.py"
    if proc.returncode != 0 or not py.is_file():
        raise ModelLoadError(f"pnnx exited with {proc.returncode}: {_pnnx_reason(proc)}")
    return py


def _pnnx_reason(proc) -> str:
    """The C++ exception text pnnx died with, else its last line that is not a stack frame."""
    lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
    what = [ln.split("what():", 1)[1].strip() for ln in lines if "what():" in ln]
    rest = [ln for ln in lines if not ln.startswith("frame #")]
    return (what or rest[-1:] or ["no output"])[0][:120]


def _import_model(py: Path, work: Path):
    """Instantiate the generated ``Model``: weights path made absolute, numeric attrs renamed."""
    text = py.read_text().replace("'model.pnnx.bin'", repr(str(work / "model.pnnx.bin")))
    text = re.sub(r"\bself\.(\d)", r"self._m\1", text)  # Sequential children: "self.2 = ..."
    py.write_text(text)
    spec = importlib.util.spec_from_file_location(f"_pnnx_model_{abs(hash(str(work)))}", py)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
        return mod.Model().float().eval()
    except SyntaxError:
        raise ModelLoadError("pnnx left ops it cannot translate (invalid Python written)") from None
    except Exception as e:  # noqa: BLE001 - generated code: unknown names, bad arguments
        from autoglm_compress.torch_import import first_line

        raise ModelLoadError(
            f"pnnx's Python model does not run ({type(e).__name__}: {first_line(e)[:100]})"
        ) from None
    finally:
        sys.modules.pop(spec.name, None)


def _check_matches(model, args, reference) -> None:
    import torch

    from autoglm_compress.torch_import import first_line
    from autoglm_compress.torch_rewrites import _flatten

    try:
        with torch.no_grad():
            got = [t for _, t in _flatten(model(*args), "")]
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(
            f"pnnx's model fails on the example inputs ({first_line(e)})"
        ) from None
    want = [t for _, t in _flatten(reference, "")]
    if len(got) != len(want):
        raise ModelLoadError(f"pnnx's model has {len(got)} outputs, the archive {len(want)}")
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = g.float(), w.float()
        if g.shape != w.shape or not bool(((g - w).abs() <= 1e-4 + 1e-3 * w.abs()).all()):
            err = (g - w).abs().max().item() if g.shape == w.shape else "shape"
            raise ModelLoadError(f"pnnx's model differs from the archive on output {i} ({err})")


def convert(path: Path, specs: list[InputSpec], reference, opset: int) -> onnx.ModelProto:
    """TorchScript archive → ONNX through pnnx; ``reference``: the archive's example outputs."""
    from autoglm_compress import torch_import
    from autoglm_compress.torch_rewrites import output_names

    with tempfile.TemporaryDirectory(prefix="autoglm_pnnx_") as tmp:
        work = Path(tmp)
        model = _import_model(_run_pnnx(path, specs, work), work)
        args = tuple(torch_import._example(s) for s in specs)
        _check_matches(model, args, reference)
        try:
            proto = torch_import._export_module(model, specs, opset)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(
                f"exporting pnnx's model failed ({torch_import.first_line(e)[:100]})"
            ) from None
    names = output_names(reference)
    for out, name in zip(proto.graph.output, names):
        _rename_output(proto, out.name, name)
    logger.info("converted %s through pnnx", path)
    return proto


def _rename_output(proto: onnx.ModelProto, old: str, new: str) -> None:
    if old == new:
        return
    for node in proto.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    for out in proto.graph.output:
        if out.name == old:
            out.name = new

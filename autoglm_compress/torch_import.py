"""Torch model files → ONNX protobuf (the front end's torch half).

TorchScript archives go through the TorchScript exporter (a ScriptModule cannot be re-traced by
torch.export); ``nn.Module`` and ``ExportedProgram`` through the dynamo exporter, falling back to
the TorchScript exporter when dynamo fails. Input names, shapes and dtypes come from the file
(TorchScript keeps its traced inputs, ``.pt2`` its example inputs) or from ``--input-shape``.
"""

from __future__ import annotations

import inspect
import io
import logging
import warnings
from pathlib import Path

import onnx

from autoglm_compress.errors import ConfigError, ModelLoadError
from autoglm_compress.inputs import InputSpec

__all__ = ["to_onnx"]

logger = logging.getLogger(__name__)


def to_onnx(
    path: Path, fmt: str, shapes: dict[str, InputSpec], *, trust_pickle: bool, opset: int
) -> onnx.ModelProto:
    import torch

    try:
        if fmt == "torchscript":
            module = torch.jit.load(str(path), map_location="cpu", _restore_shapes=True)
            specs = _torchscript_specs(module, shapes, path)
            return _export_legacy(module.eval(), specs, opset)
        if fmt == "export":
            ep = torch.export.load(str(path))
            return _export_program(ep, opset)
        if fmt == "pickle":
            if not trust_pickle:
                raise ModelLoadError(
                    f"{path}: a pickled nn.Module; unpickling runs arbitrary code, so it is refused. "
                    "Pass --trust-pickle (trust_pickle=True) if you trust the file, or save the model "
                    "with torch.jit.save / torch.export.save"
                )
            module = torch.load(str(path), map_location="cpu", weights_only=False)
            if not isinstance(module, torch.nn.Module):
                raise ModelLoadError(
                    f"{path}: the pickle holds a {type(module).__name__}, not an nn.Module"
                )
            return _export_module(module.eval(), _module_specs(module, shapes, path), opset)
    except (ModelLoadError, ConfigError):
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many types for broken files
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{path}: cannot load {fmt} model: {msg}") from None
    raise ModelLoadError(f"{path}: unknown format {fmt}")


def _example(spec: InputSpec):
    import numpy as np
    import torch

    if not spec.static:
        raise ConfigError(
            f"input {spec.name!r}: shape unknown; pass --input-shape {spec.name}=1x..."
        )
    dt = np.dtype(spec.dtype)
    if np.issubdtype(dt, np.integer) or dt == np.bool_:
        return torch.zeros(spec.shape, dtype=getattr(torch, dt.name if dt != np.bool_ else "bool"))
    return torch.randn(spec.shape, generator=torch.Generator().manual_seed(0)).to(
        getattr(torch, dt.name)
    )


def _torchscript_specs(module, shapes: dict[str, InputSpec], path: Path) -> list[InputSpec]:
    specs = []
    for inp in list(module.graph.inputs())[1:]:
        name = inp.debugName().split(".")[0]
        t = inp.type()
        if name in shapes:
            specs.append(InputSpec(name, shapes[name].shape, shapes[name].dtype))
            continue
        sizes = t.sizes() if hasattr(t, "sizes") else None
        dtype = t.scalarType() if hasattr(t, "scalarType") else None
        if sizes is None:
            raise ConfigError(
                f"{path}: TorchScript input {name!r} carries no shape (scripted, not "
                f"traced); pass --input-shape {name}=1x...[:dtype]"
            )
        specs.append(InputSpec(name, tuple(sizes), _TS_DTYPES.get(dtype or "Float", "float32")))
    return specs


_TS_DTYPES = {
    "Float": "float32",
    "Half": "float16",
    "Long": "int64",
    "Int": "int32",
    "Bool": "bool",
    "Byte": "uint8",
    "Char": "int8",
    "Double": "float64",
}


def _module_specs(module, shapes: dict[str, InputSpec], path: Path) -> list[InputSpec]:
    params = [
        p
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    names = [p.name for p in params]
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ConfigError(
            f"{path}: a pickled module carries no input shapes; pass --input-shape for "
            f"{missing} (e.g. --input-shape {missing[0]}=1x3x224x224)"
        )
    return [shapes[n] for n in names]


def _export_legacy(module, specs: list[InputSpec], opset: int) -> onnx.ModelProto:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # PRESERVE keeps BatchNormalization in the graph: folding it is our fold_bn pass's job,
        # which reports what it changed (the exporter would fold it silently).
        torch.onnx.export(
            module,
            tuple(_example(s) for s in specs),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[s.name for s in specs],
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    return onnx.load_from_string(buf.getvalue())


def _export_module(module, specs: list[InputSpec], opset: int) -> onnx.ModelProto:
    import torch

    args = tuple(_example(s) for s in specs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=[s.name for s in specs],
                verbose=False,
                optimize=True,
            )
        return _program_proto(prog)
    except Exception as e:  # noqa: BLE001
        logger.info("dynamo export failed (%s); using the TorchScript exporter", type(e).__name__)
        return _export_legacy(module, specs, opset)


def _export_program(ep, opset: int) -> onnx.ModelProto:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(ep, dynamo=True, verbose=False, optimize=True)
    return _program_proto(prog)


def _program_proto(prog) -> onnx.ModelProto:
    import onnx_ir as ir

    return ir.serde.serialize_model(prog.model)

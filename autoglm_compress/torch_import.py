"""Torch model files → ONNX protobuf (the front end's torch half).

TorchScript archives go through the TorchScript exporter (a ScriptModule cannot be re-traced by
torch.export), after ``torch_rewrites``: fused attention ops (``_native_multi_head_attention``,
``_transformer_encoder_layer_fwd``) get decomposing symbolics, and dict/namedtuple/nested outputs
are flattened by a traced wrapper (output names from the keys). Non-tensor arguments are bound
to their defaults or refused in one line. When the exporter still fails, ``pnnx_route`` tries
pnnx; if that fails too, one line names the aten op(s) and the ways out. ``nn.Module`` and
``ExportedProgram`` go through the dynamo exporter, falling back to the TorchScript exporter
when dynamo fails. Input names, shapes and dtypes come from the file (TorchScript keeps its
traced inputs, ``.pt2`` its example inputs) or from ``--input-shape``.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import onnx

from autoglm_compress.errors import ConfigError, ModelLoadError
from autoglm_compress.inputs import InputSpec, check_generated_size

__all__ = ["first_line", "to_onnx"]

logger = logging.getLogger(__name__)


def to_onnx(
    path: Path, fmt: str, shapes: dict[str, InputSpec], *, trust_pickle: bool, opset: int
) -> onnx.ModelProto:
    import torch

    try:
        if fmt == "torchscript":
            with _quiet_stderr():  # "cannot restore shapes" for scripted archives is expected
                module = torch.jit.load(str(path), map_location="cpu", _restore_shapes=True)
            specs, bound = _torchscript_specs(module, shapes, path)
            check_generated_size(specs, frozenset(shapes))  # example inputs are made from these
            return _torchscript_to_onnx(module.eval(), specs, bound, path, opset)
        if fmt == "export":
            if trust_pickle:
                ep = torch.export.load(str(path))
            else:
                with _weights_only_unpickling():
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
            specs = _module_specs(module, shapes, path)
            check_generated_size(specs, frozenset(shapes))
            return _export_module(module.eval(), specs, opset)
    except _UnsafePickle as e:
        raise ModelLoadError(
            f"{path}: the .pt2 archive holds pickled objects beyond tensors ({e}); unpickling them "
            "could run code, so it is refused. Pass --trust-pickle (trust_pickle=True) if you trust "
            "the file, or re-save it with torch.export.save from a model holding plain tensors"
        ) from None
    except (ModelLoadError, ConfigError):
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many types for broken files
        raise ModelLoadError(f"{path}: cannot load {fmt} model: {first_line(e)}") from None
    raise ModelLoadError(f"{path}: unknown format {fmt}")


class _UnsafePickle(Exception):  # not a RuntimeError: torch.export.load swallows those
    """A pickle inside a .pt2 archive needs more than torch's weights-only unpickler."""


_UNPICKLE_LOCK = threading.Lock()


@contextlib.contextmanager
def _weights_only_unpickling():
    """While ``torch.export.load`` runs: every ``torch.load`` is weights-only and plain
    ``pickle.loads`` (opaque constants) is refused. torch 2.13 unpickles a .pt2's sample inputs
    with a ``weights_only=False`` fallback and ``use_pickle`` weights/constants with
    ``weights_only=False``; either runs whatever the pickle names."""
    import pickle

    import torch
    from torch.export.pt2_archive import _package

    real_load = torch.load

    def weights_only_load(f, *args, weights_only=None, **kwargs):
        kwargs.pop("pickle_module", None)
        try:
            return real_load(f, *args, weights_only=True, **kwargs)
        except pickle.UnpicklingError as e:
            m = re.search(r"WeightsUnpickler error: (.+?)(?: was not|\.|$)", str(e), re.MULTILINE)
            raise _UnsafePickle(m.group(1) if m else first_line(e)) from None

    def refuse_loads(*_a, **_k):
        raise _UnsafePickle("an opaque Python object constant")

    class _NoPickle:
        loads = staticmethod(refuse_loads)

        def __getattr__(self, name):
            return getattr(pickle, name)

    with _UNPICKLE_LOCK:
        saved = torch.load, _package.pickle
        torch.load, _package.pickle = weights_only_load, _NoPickle()
        try:
            yield
        finally:
            torch.load, _package.pickle = saved


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


def _torchscript_specs(
    module, shapes: dict[str, InputSpec], path: Path
) -> tuple[list[InputSpec], dict[int, object]]:
    """Tensor inputs' specs, and the non-tensor arguments bound to their defaults (by position)."""
    schema_args = module.forward.schema.arguments[1:]
    inputs = [(i.debugName().split(".")[0], i.type()) for i in list(module.graph.inputs())[1:]]
    bound = {
        pos: _non_tensor_default(schema_args[pos], name, t, path)
        for pos, (name, t) in enumerate(inputs)
        if t.kind() != "TensorType"
    }
    specs = []
    for pos, (name, t) in enumerate(inputs):
        if pos in bound:
            continue
        if name in shapes:
            specs.append(InputSpec(name, shapes[name].shape, shapes[name].dtype))
            continue
        sizes = t.sizes()
        if sizes is None:
            raise ConfigError(
                f"{path}: TorchScript input {name!r} carries no shape (scripted, not "
                f"traced); pass --input-shape {name}=1x...[:dtype]"
            )
        specs.append(InputSpec(name, tuple(sizes), _TS_DTYPES.get(t.scalarType(), "float32")))
    return specs, bound


def _non_tensor_default(arg, name: str, jit_type, path: Path):
    """An int/float/bool argument becomes a constant: its default, else a one-line refusal."""
    if arg.default_value is not None or str(jit_type).startswith("Optional"):
        logger.info(
            "TorchScript input %s (%s) fixed to its default %r", name, jit_type, arg.default_value
        )
        return arg.default_value
    raise ModelLoadError(
        f"{path}: TorchScript input {name!r} is {jit_type}, not a tensor, and has no default; "
        f"ONNX inputs are tensors: re-save the model with {name} fixed (a wrapper module whose "
        f"forward calls the model with a constant {name}, then torch.jit.trace/script + save)"
    )


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


def first_line(e: BaseException) -> str:
    """One line of an exception's message; torch's internal assertion text is not passed on."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    if "INTERNAL ASSERT" in text:
        return f"{type(e).__name__} inside torch (an internal assertion)"
    return text.splitlines()[0].split(" [Caused by")[0].strip()[:200]


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C++ stdout/stderr (the TorchScript exporter dumps the whole graph on failure)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _torchscript_to_onnx(module, specs, bound, path: Path, opset: int) -> onnx.ModelProto:
    """Legacy exporter (fused attention decomposed, outputs flattened); pnnx when that fails."""
    import torch

    from autoglm_compress import torch_rewrites

    torch_rewrites.register_symbolics()
    args = [_example(s) for s in specs]
    full, it = [], iter(args)
    for i in range(len(args) + len(bound)):
        full.append(bound[i] if i in bound else next(it))
    with torch.no_grad():
        try:
            out = module(*full)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(
                f"{path}: the TorchScript model fails on example inputs "
                f"{[(s.name, s.shape, s.dtype) for s in specs]}: {first_line(e)}; "
                "check --input-shape"
            ) from None
    flat = torch_rewrites.needs_flattening(out)
    target = torch_rewrites.flatten_outputs(module, tuple(args), bound) if flat or bound else module
    names = torch_rewrites.output_names(out) if flat else None
    try:
        return export_legacy(target, specs, opset, output_names=names)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types
        legacy_error = e
    from autoglm_compress import pnnx_route

    ops = pnnx_route.unsupported_ops(module, legacy_error, opset)
    logger.info(
        "TorchScript exporter failed on %s (%s); trying pnnx", ops, first_line(legacy_error)
    )
    try:
        return pnnx_route.convert(path, specs, out, opset)
    except ModelLoadError as e:
        pnnx_reason = str(e)
    what = f"cannot convert {', '.join(ops)}" if ops else f"failed ({first_line(legacy_error)})"
    raise ModelLoadError(
        f"{path}: torch's TorchScript→ONNX exporter {what}, and pnnx failed "
        f"({pnnx_reason}); re-export the model with torch.export.save (.pt2) or "
        "torch.onnx.export(..., dynamo=True), or replace the op(s) in the model"
    )


def export_legacy(
    module, specs: list[InputSpec], opset: int, output_names: list[str] | None = None
) -> onnx.ModelProto:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), _quiet_stderr():
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
            output_names=output_names,
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
        return export_legacy(module, specs, opset)


def _export_program(ep, opset: int) -> onnx.ModelProto:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(ep, dynamo=True, verbose=False, optimize=True)
    return _program_proto(prog)


def _program_proto(prog) -> onnx.ModelProto:
    import onnx_ir as ir

    return ir.serde.serialize_model(prog.model)

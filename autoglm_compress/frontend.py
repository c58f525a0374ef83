"""Front end: any supported model file → the IR (``onnx_ir.Model``), simplified, shape-inferred, checked.

Formats are detected from the file's content, not its extension:
  ONNX protobuf · TorchScript archive (``torch.jit.save``) · ``torch.export`` archive (``.pt2``) ·
  a pickled whole ``nn.Module`` (``torch.save(model)``), only with ``trust_pickle=True``.
Torch models go through ``torch.onnx.export``: the dynamo exporter for ``nn.Module`` and
``ExportedProgram``, the TorchScript exporter for ScriptModules.
"""

from __future__ import annotations

import io
import json
import logging
import pickletools
import zipfile
from pathlib import Path

import onnx
import onnx_ir as ir

from autoglm_compress.control_flow import fold_control_flow
from autoglm_compress.errors import ConfigError, ModelLoadError
from autoglm_compress.inputs import SHAPE_HINTS, InputSpec, model_inputs
from autoglm_compress.ir_utils import fix_input_dims, from_proto, to_proto

__all__ = ["OPSET", "detect_format", "load", "make_static", "upgrade_opset"]

logger = logging.getLogger(__name__)
OPSET = 17
_SAFE_PICKLE_GLOBALS = ("collections", "torch._utils", "torch", "builtins", "numpy", "_codecs")


# A model's pickle (``data.pkl`` in a torch.save zip, or a bare pickle) holds its structure, not
# its weights: this many bytes are plenty, and a bigger one is scanned no further (a zip bomb).
PICKLE_SCAN_LIMIT = 64 << 20


def detect_format(path: Path) -> str:
    """One of onnx / torchscript / export / pickle / state_dict, from the bytes (head bytes and
    zip listing; a pickle is scanned as a stream, at most ``PICKLE_SCAN_LIMIT`` bytes)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                return _zip_kind(zf, path)
        except zipfile.BadZipFile:
            raise ModelLoadError(
                f"{path}: truncated or corrupt archive (bad zip); re-save the model"
            ) from None
    if head[:1] == b"\x80":
        with open(path, "rb") as f:
            return _pickle_kind(f, path)
    return "onnx"


def _zip_kind(zf: zipfile.ZipFile, path: Path) -> str:
    infos = zf.infolist()
    names = [i.filename for i in infos]
    if any(n.endswith("/code/__torch__.py") or "/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith(("archive_format", "models/model.json")) for n in names):
        return "export"
    pkl = next((i for i in infos if i.filename.endswith("data.pkl")), None)
    if pkl is None:
        raise ModelLoadError(f"{path}: a zip archive but not a torch or ONNX model")
    if pkl.file_size > PICKLE_SCAN_LIMIT:
        raise ModelLoadError(
            f"{path}: its {pkl.filename} inflates to {pkl.file_size:,} bytes, over the "
            f"{PICKLE_SCAN_LIMIT:,}-byte limit for a model's pickle (weights live outside it: "
            "a zip bomb or not a torch.save file); re-save the model with torch.export.save"
        )
    with zf.open(pkl) as member:
        return _pickle_kind(member, path)


class _PickleTooLong(Exception):
    """The pickle stream ran past the scan limit (raised by :class:`_Capped`)."""


class _Capped:
    """A read-only stream that refuses to go past ``left`` bytes (pickletools reads through it)."""

    def __init__(self, f, left: int):
        self.f, self.left = f, left

    def _check(self, data: bytes) -> bytes:
        if len(data) > self.left:
            raise _PickleTooLong
        self.left -= len(data)
        return data

    def read(self, n: int | None = -1) -> bytes:
        n = self.left + 1 if n is None or n < 0 else min(n, self.left + 1)
        return self._check(self.f.read(n))

    def readline(self, n: int | None = -1) -> bytes:
        n = self.left + 1 if n is None or n < 0 else min(n, self.left + 1)
        return self._check(self.f.readline(n))


def _pickle_kind(stream, path: Path | str = "model") -> str:
    """Scan pickle opcodes (without executing them) for classes beyond tensors and dicts; the
    stream is read at most ``PICKLE_SCAN_LIMIT`` bytes, never whole into memory."""
    if isinstance(stream, (bytes, bytearray)):
        stream = io.BytesIO(stream)
    try:
        for op, arg, _ in pickletools.genops(_Capped(stream, PICKLE_SCAN_LIMIT)):
            named = op.name in ("GLOBAL", "STACK_GLOBAL") and isinstance(arg, str)
            if named and (
                arg.split(" ")[0].split(".")[0] not in _SAFE_PICKLE_GLOBALS or "nn.modules" in arg
            ):
                return "pickle"
            if op.name == "STACK_GLOBAL":
                return "pickle"
    except _PickleTooLong:
        raise ModelLoadError(
            f"{path}: its pickle runs past {PICKLE_SCAN_LIMIT:,} bytes, the limit for a model's "
            "pickle (weights live outside it); re-save the model with torch.export.save"
        ) from None
    except Exception:  # noqa: BLE001
        raise ModelLoadError(
            f"{path}: truncated or corrupt pickle; re-save the model"
        ) from None
    return "state_dict"


def load(
    path: str | Path,
    input_shapes: list[InputSpec] | None = None,
    *,
    trust_pickle: bool = False,
    simplify: bool = True,
    check_inputs=None,
) -> ir.Model:
    """Load a model file into the IR; ``input_shapes`` fill shapes the file does not carry.
    ``check_inputs(signature)``: called as soon as the inputs are known (an ONNX file: at once; a
    torch model: after its export), before simplification and checks, with an IR model holding
    only those inputs — data checks fail there instead of after the whole load."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file() or path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: not a model file (empty or a folder)")
    fmt = detect_format(path)
    shapes = {s.name: s for s in (input_shapes or [])}
    logger.info("loading %s as %s", path, fmt)
    if fmt == "onnx":
        proto = _read_onnx(path)
    elif fmt == "state_dict":
        raise ModelLoadError(
            f"{path}: holds only weights (a state_dict), not a model; save it with "
            "torch.jit.save(torch.jit.trace(model, x)) or torch.export.save"
        )
    else:
        from autoglm_compress import torch_import

        proto = torch_import.to_onnx(path, fmt, shapes, trust_pickle=trust_pickle, opset=OPSET)
    proto = _fix_input_shapes(proto, shapes, path)
    if check_inputs is not None:
        check_inputs(_signature(proto))
    model = _finish(proto, simplify, path)
    fold_control_flow(model, str(path))  # constant If inlined; data-dependent If/Loop refused
    _lift_constants(model)
    if fmt != "onnx":  # an ONNX file's output names are the user's: every artifact keeps them
        _name_outputs(model)
    model.metadata_props["autoglm.source_format"] = fmt
    model.metadata_props["autoglm.source_path"] = str(path)
    return model


def _lift_constants(model: ir.Model) -> None:
    """Constant-node tensors (paddle2onnx keeps weights there) become initializers, so every pass
    sees them as weights; initializers that old exporters also list as graph inputs are unlisted."""
    from onnx_ir.passes.common import (
        LiftConstantsToInitializersPass,
        RemoveInitializersFromInputsPass,
    )

    RemoveInitializersFromInputsPass()(model)
    result = LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0)(model)
    if result.modified:
        logger.info("lifted Constant-node tensors to initializers")


def upgrade_opset(model: ir.Model, opset: int) -> ir.Model:
    """Convert ``model`` to ``opset`` with onnx's version converter (e.g. per-channel QDQ needs 13).

    Raises ModelLoadError naming the op the converter could not take, before any calibration."""
    from onnx import version_converter

    proto = to_proto(model)
    path = Path(model.metadata_props.get("autoglm.source_path", "model"))
    have = model.graph.opset_imports.get("", 0)
    try:
        converted = version_converter.convert_version(proto, opset)
    except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError/ValidationError
        raise ModelLoadError(
            f"{path}: opset {have} → {opset} conversion failed ({str(e).splitlines()[0][:160]}); "
            f"re-export the model at opset ≥ {opset}"
        ) from None
    out = _finish(converted, False, path)
    out.metadata_props.update(model.metadata_props)
    return out


def _name_outputs(model: ir.Model) -> None:
    """A torch model's outputs have no names: the TorchScript exporter numbers them ("5"); give
    them readable ones. Not for an ONNX file, whose names ("463" too) are what its users read."""
    outs = model.graph.outputs
    for i, v in enumerate(outs):
        if v.name and v.name.isdigit():
            v.name = "output" if len(outs) == 1 else f"output_{i}"


def _read_onnx(path: Path) -> onnx.ModelProto:
    try:
        proto = onnx.load(str(path), load_external_data=True)
    except Exception as e:  # noqa: BLE001 - protobuf raises various types
        raise ModelLoadError(
            f"{path}: unknown format (not ONNX, TorchScript, .pt2 or a torch pickle): "
            f"{type(e).__name__}"
        ) from None
    if not proto.graph.node or not proto.graph.output:
        raise ModelLoadError(
            f"{path}: unknown format (not ONNX, TorchScript, .pt2 or a torch pickle)"
        )
    return proto


def _fix_input_shapes(proto: onnx.ModelProto, shapes: dict[str, InputSpec], path: Path):
    """Check the user's shapes against the model's inputs; make every unknown dim symbolic.

    ``dim_param``, a missing dim and ``dim_value <= 0`` (paddle2onnx writes -1) are all dynamic: they
    become ``dim_param`` and stay symbolic in the IR (artifacts keep them dynamic). A user shape must
    agree with the model's fixed dims; it is the concrete shape used for random feeds (kept as a
    hint in the model's metadata, see :func:`autoglm_compress.inputs.concrete_inputs`).
    """
    inits = {i.name for i in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in inits]
    names = {i.name for i in graph_inputs}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise ConfigError(
            f"--input-shape names {unknown} not among the model's inputs {sorted(names)}"
        )
    for inp in graph_inputs:
        dims = inp.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            unnamed = d.HasField("dim_param") and d.dim_param in ("", "?", "-1")
            if unnamed or (not d.HasField("dim_param") and d.dim_value <= 0):
                d.Clear()  # one name per unknown dim: a shared name would claim equal sizes
                d.dim_param = f"{inp.name}_dim{i}"
    for out in proto.graph.output:
        for d in out.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.Clear()  # -1 written as a size: unknown, left to shape inference
        if inp.name not in shapes:
            continue
        want = shapes[inp.name].shape
        if inp.type.tensor_type.HasField("shape") and len(dims) != len(want):
            raise ConfigError(
                f"--input-shape {inp.name}: rank {len(want)} but the model's input "
                f"has rank {len(dims)}"
            )
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value != want[i]:
                raise ConfigError(
                    f"--input-shape {inp.name}={'x'.join(map(str, want))}: dim {i} "
                    f"is fixed to {d.dim_value} in the model"
                )
    hints = {s.name: list(s.shape) for s in shapes.values()}
    if hints:
        set_shape_hints(proto, hints)
    return proto


def set_shape_hints(proto: onnx.ModelProto, hints: dict[str, list[int]]) -> None:
    meta = {p.key: p for p in proto.metadata_props}
    if SHAPE_HINTS in meta:
        meta[SHAPE_HINTS].value = json.dumps(hints)
    else:
        proto.metadata_props.add(key=SHAPE_HINTS, value=json.dumps(hints))


def make_static(model: ir.Model, shapes: dict[str, tuple[int, ...]]) -> ir.Model:
    """``--static-shapes``: fix every symbolic input dim to ``shapes`` and re-simplify."""
    proto = fix_input_dims(to_proto(model), shapes)  # re-inferred below with the fixed dims
    for out in proto.graph.output:
        for d in out.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.Clear()
    return _finish(proto, True, Path(model.metadata_props.get("autoglm.source_path", "model")))


def _signature(proto: onnx.ModelProto) -> ir.Model:
    """The model's inputs alone (no nodes, no weights), with its shape hints."""
    inits = {i.name for i in proto.graph.initializer}
    graph = onnx.helper.make_graph([], proto.graph.name or "inputs",
                                   [v for v in proto.graph.input if v.name not in inits], [])
    sig = onnx.helper.make_model(graph, opset_imports=proto.opset_import)
    sig.metadata_props.extend(proto.metadata_props)
    return from_proto(sig)


def _finish(proto: onnx.ModelProto, simplify: bool, path: Path) -> ir.Model:
    if simplify:
        proto = _simplify(proto)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
        onnx.checker.check_model(proto, full_check=True)  # the IR check, on the proto at hand
        model = from_proto(proto)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(
            f"{path}: converted model fails the ONNX check: {str(e).splitlines()[0]}"
        ) from None
    return model


_SIM_SKIP = ("fuse_attention", "fuse_attention_different_v_hidden_size")
# onnx-simplifier folds constants by running them: Shape(x) → ConstantOfShape of a declared
# 1x3x10000x10000 input is a 1.2 GB tensor (6 GB peak, 70 s, from a 300-byte file). Tensors above
# this size stay unfolded (onnxsim checks the inferred size before it runs the node).
SIM_FOLD_LIMIT = "256MB"


def _sim_can_skip(onnxsim) -> bool:
    import inspect

    return "skipped_optimizers" in inspect.signature(onnxsim.simplify).parameters


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxsim

        # fold_bn reports BN folding; onnxruntime's contrib Attention (newer onnxsim fuses it)
        # would leave the standard-op IR that the executor, pruning and the ARM emitters read
        kw = {"skipped_optimizers": list(_SIM_SKIP)} if _sim_can_skip(onnxsim) else {}
        simplified, ok = onnxsim.simplify(
            proto, skip_fuse_bn=True, tensor_size_threshold=SIM_FOLD_LIMIT, **kw
        )
    except Exception as e:  # noqa: BLE001 - onnxsim gives up on some graphs; keep the original
        logger.warning(
            "onnx-simplifier failed (%s); continuing unsimplified", str(e).splitlines()[0]
        )
        return proto
    return simplified if ok else proto


def describe_inputs(model: ir.Model) -> str:
    return ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in model_inputs(model))

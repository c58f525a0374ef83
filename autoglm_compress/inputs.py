"""Model input specs: parsing ``--input-shape``, reading the IR's inputs, making sample feeds."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir

from autoglm_compress.errors import CalibrationError, ConfigError

__all__ = [
    "GENERATED_INPUT_LIMIT",
    "INPUT_ELEMENTS_CEILING",
    "SHAPE_HINTS",
    "InputSpec",
    "check_generated_size",
    "concrete_inputs",
    "iter_random_feeds",
    "load_npz_feeds",
    "model_inputs",
    "parse_input_shape",
    "random_feeds",
]

logger = logging.getLogger(__name__)
_NAME_NOTED: set[tuple[str, str]] = set()  # (file, array) taken under another name, said once
SHAPE_HINTS = "autoglm.input_shapes"  # metadata key: the --input-shape values, as JSON

# Generated inputs (random calibration/verification feeds, torch export examples) come from shapes
# that a model file declares, and a 100-byte file can declare 1x3x100000x100000. A declared shape
# is generated up to GENERATED_INPUT_LIMIT elements per input; a shape the user chose with
# --input-shape (and any one sample read from data) up to INPUT_ELEMENTS_CEILING. Both are checked
# before anything is allocated.
GENERATED_INPUT_LIMIT = 1 << 24  # 16,777,216 elements: 64 MiB of float32 (1x4x2048x2048)
INPUT_ELEMENTS_CEILING = 1 << 28  # 268,435,456 elements: 1 GiB of float32
_CHUNK = 1 << 20  # random values drawn this many at a time (the same stream as one draw)

_DTYPES = {
    "float32": np.float32,
    "float": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "uint8": np.uint8,
    "int8": np.int8,
    "bool": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple  # ints, or str for a symbolic dim
    dtype: str = "float32"

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) and d >= 0 for d in self.shape)


def parse_input_shape(text: str) -> InputSpec:
    """``NAME=1x3x224x224`` or ``NAME=1x16:int64`` → InputSpec."""
    m = re.fullmatch(r"([^=]+)=(\d+(?:[x,]\d+)*)(?::(\w+))?", text.strip())
    if not m:
        raise ConfigError(
            f"--input-shape {text!r}: expected NAME=1x3x224x224[:dtype], e.g. x=1x3x32x32"
        )
    dtype = m.group(3) or "float32"
    if dtype not in _DTYPES:
        raise ConfigError(
            f"--input-shape {text!r}: unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}"
        )
    dims = tuple(int(d) for d in re.split(r"[x,]", m.group(2)))
    if any(d <= 0 for d in dims):
        raise ConfigError(f"--input-shape {text!r}: dimensions must be positive")
    return InputSpec(m.group(1), dims, np.dtype(_DTYPES[dtype]).name)


def model_inputs(model: ir.Model) -> list[InputSpec]:
    """The model's inputs as the IR holds them: symbolic dims stay strings."""
    specs = []
    for v in model.graph.inputs:
        shape = tuple(d if isinstance(d, int) else str(d) for d in (v.shape or ()))
        dtype = np.dtype(v.dtype.numpy()).name if v.dtype is not None else "float32"
        specs.append(InputSpec(v.name, shape, dtype))
    return specs


def shape_hints(model: ir.Model) -> dict[str, tuple[int, ...]]:
    text = model.metadata_props.get(SHAPE_HINTS)
    return {k: tuple(v) for k, v in json.loads(text).items()} if text else {}


def concrete_inputs(model: ir.Model) -> list[InputSpec]:
    """Inputs with concrete shapes for random feeds: ``--input-shape`` where given, a symbolic
    leading (batch) dim as 1; any other symbolic dim is a ConfigError asking for data or a shape."""
    hints, specs = shape_hints(model), []
    for s in model_inputs(model):
        shape = hints.get(s.name) or tuple(
            1 if (i == 0 and not isinstance(d, int)) else d for i, d in enumerate(s.shape)
        )
        spec = InputSpec(s.name, tuple(shape), s.dtype)
        if not spec.static:
            dyn = [i for i, d in enumerate(shape) if not isinstance(d, int)]
            raise ConfigError(
                f"input {s.name!r} has symbolic dims {dyn} {list(s.shape)}: give data "
                f"(--calib/--eval) or --input-shape {s.name}=1x..."
            )
        specs.append(spec)
    return specs


_PASS_THROUGH = frozenset(
    {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand", "Clip"}
)


def _int_upper_bound(model: ir.Model, name: str) -> int:
    """Largest safe value+1 for an integer input: the table size when it indexes a Gather
    (followed through casts and reshapes); 2 otherwise (flags, masks)."""
    value = next(v for v in model.graph.inputs if v.name == name)
    bounds, todo, seen = [], [value], set()
    while todo:
        v = todo.pop()
        for user, idx in v.uses():
            if id(user) in seen:
                continue
            seen.add(id(user))
            data = user.inputs[0]
            if user.op_type == "Gather" and idx == 1 and data is not None and data.shape:
                axis = user.attributes.get_int("axis", 0)
                if isinstance(data.shape[axis], int):
                    bounds.append(int(data.shape[axis]))
            elif user.op_type in _PASS_THROUGH and idx == 0:
                todo.extend(user.outputs)
    return min(bounds) if bounds else 2


def _dims(shape) -> str:
    return "x".join(str(d) for d in shape)


def check_generated_size(specs: list[InputSpec], user_given=frozenset()) -> None:
    """Refuse, before any allocation, inputs too large to generate: a declared shape over
    ``GENERATED_INPUT_LIMIT`` elements, a ``--input-shape`` one (``user_given`` names) or the
    feed as a whole over ``INPUT_ELEMENTS_CEILING``. One ConfigError line: input, shape, limit."""
    total = 0
    for s in specs:
        n = math.prod(int(d) for d in s.shape)
        total += n
        if s.name in user_given and n > INPUT_ELEMENTS_CEILING:
            raise ConfigError(
                f"--input-shape {s.name}={_dims(s.shape)}: {n:,} elements, over the hard ceiling "
                f"of {INPUT_ELEMENTS_CEILING:,} per generated input; choose a smaller shape or "
                "give data (--calib/--eval)"
            )
        if s.name not in user_given and n > GENERATED_INPUT_LIMIT:
            raise ConfigError(
                f"input {s.name!r} declares shape {_dims(s.shape)} ({n:,} elements), over the "
                f"{GENERATED_INPUT_LIMIT:,}-element limit for generated inputs; pass --input-shape "
                f"{s.name}=... with a smaller concrete shape where its dims are symbolic, or give "
                "data (--calib/--eval)"
            )
    if total > INPUT_ELEMENTS_CEILING:
        raise ConfigError(
            f"inputs {[s.name for s in specs]} hold {total:,} elements together, over the "
            f"{INPUT_ELEMENTS_CEILING:,}-element ceiling for one generated feed; pass smaller "
            "--input-shape values or give data (--calib/--eval)"
        )


def _fill(out: np.ndarray, draw) -> np.ndarray:
    """``out`` filled by ``draw(count)`` in chunks: no float64/int64 temporary of the whole size."""
    flat = out.reshape(-1)
    for i in range(0, flat.size, _CHUNK):
        flat[i : i + _CHUNK] = draw(min(_CHUNK, flat.size - i))
    return out


def _random_array(rng, model: ir.Model, s: InputSpec) -> np.ndarray:
    out = np.empty(s.shape, np.dtype(s.dtype))
    if s.dtype == "bool":
        return _fill(out, lambda k: rng.integers(0, 2, size=k))
    if not np.issubdtype(np.dtype(s.dtype), np.integer):
        return _fill(out, rng.standard_normal)
    if "mask" in s.name.lower() and len(s.shape) >= 1:
        # attention-mask convention: a prefix of ones (at least one), then padding zeros
        flat = np.zeros((int(np.prod(s.shape[:-1])), s.shape[-1]), s.dtype)
        for row in flat:
            row[: rng.integers(1, s.shape[-1] + 1)] = 1
        return flat.reshape(s.shape)
    high = _int_upper_bound(model, s.name)
    return _fill(out, lambda k: rng.integers(0, high, size=k))


def iter_random_feeds(model: ir.Model, n: int = 1, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """:func:`random_feeds` one at a time (memory does not grow with ``n``); the size check runs
    when this is called, before the first feed is drawn."""
    specs = concrete_inputs(model)
    check_generated_size(specs, frozenset(shape_hints(model)))
    rng = np.random.default_rng(seed)
    return ({s.name: _random_array(rng, model, s) for s in specs} for _ in range(n))


def random_feeds(model: ir.Model, n: int = 1, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` random feeds that fit the model: N(0,1) floats; integer ids within the table they
    index; 0/1 for other integer inputs; masks as a prefix of ones. Inputs too large to generate
    are refused first (:func:`check_generated_size`)."""
    return list(iter_random_feeds(model, n, seed))


# Data files are read lazily: each .npy header (in an .npz zip or a bare .npy) is parsed first,
# its declared size checked against the bytes the member really holds, and only the rows of the
# samples asked for are read, once, at most NPZ_READ_LIMIT bytes in all (a 2 MB .npz can inflate
# to gigabytes). Object arrays are refused: reading them would unpickle.
NPZ_READ_LIMIT = 1 << 30  # 1 GiB of array data from one file per call


@dataclasses.dataclass
class _NpyMember:
    """One array's header: where it is, what it declares. Behaves like the array's shape."""

    key: str
    shape: tuple
    dtype: np.dtype
    fortran: bool
    info: zipfile.ZipInfo | None  # None: a bare .npy file

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def read_bytes(self, rows: int | None) -> int:
        """Bytes read for the first ``rows`` rows (the whole array when rows cannot be sliced)."""
        whole = math.prod(self.shape) * self.dtype.itemsize
        if rows is None or not self.shape or (self.fortran and self.ndim > 1):
            return whole
        return min(rows, len(self)) * self.row_bytes


def _npy_header(f) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy stream ``f``, which is left at the data."""
    from numpy.lib import format as npformat

    if npformat.read_magic(f) == (1, 0):
        return npformat.read_array_header_1_0(f)
    return npformat.read_array_header_2_0(f)  # 2.0 and 3.0 share the 4-byte length


def _read_header(f, where: str, key: str, size: int) -> tuple[tuple, np.dtype, bool]:
    shape, fortran, dtype = _npy_header(f)
    if dtype.hasobject:
        raise CalibrationError(
            f"{where}: array {key!r} holds Python objects ({dtype}); reading them would unpickle "
            "and could run code, so it is refused: save numeric arrays"
        )
    declared = math.prod(shape) * dtype.itemsize
    held = size - f.tell()
    if declared > held:
        raise CalibrationError(
            f"{where}: array {key!r} declares {tuple(shape)} {dtype} ({declared:,} bytes) but "
            f"holds {held:,}: truncated or corrupt; re-save it with numpy.savez"
        )
    return tuple(shape), dtype, fortran


def _npz_members(path: Path) -> dict[str, _NpyMember]:
    """Headers of every array in ``path`` (``{"": member}`` for a bare .npy), nothing inflated."""
    where = repr(str(path))
    with open(path, "rb") as f:
        head = f.read(6)
        if head == b"\x93NUMPY":
            f.seek(0)
            shape, dtype, fortran = _read_header(f, where, "", path.stat().st_size)
            return {"": _NpyMember("", shape, dtype, fortran, None)}
    if not head.startswith(b"PK"):
        raise ValueError("neither an .npz (zip) nor an .npy file")
    members = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[: -len(".npy")]
            with zf.open(info) as f:
                shape, dtype, fortran = _read_header(f, where, key, info.file_size)
            members[key] = _NpyMember(key, shape, dtype, fortran, info)
    return members


def _read_member(path: Path, m: _NpyMember, rows: int | None) -> np.ndarray:
    """The first ``rows`` rows of ``m`` (all when None), streamed into one array: read once."""
    whole = rows is None or not m.shape or (m.fortran and m.ndim > 1)
    shape = m.shape if whole else (min(rows, len(m)), *m.shape[1:])
    if m.fortran and m.ndim > 1:
        shape = shape[::-1]
    out = np.empty(shape, m.dtype)
    buf = memoryview(out.reshape(-1).view(np.uint8))
    with contextlib.ExitStack() as stack:
        if m.info is None:
            f = stack.enter_context(open(path, "rb"))
        else:
            f = stack.enter_context(stack.enter_context(zipfile.ZipFile(path)).open(m.info))
        _npy_header(f)  # skip it: checked by _read_header
        done = 0
        while done < len(buf):
            chunk = f.read(min(16 << 20, len(buf) - done))
            if not chunk:
                raise CalibrationError(f"{str(path)!r}: array {m.key!r} is truncated")
            buf[done : done + len(chunk)] = chunk
            done += len(chunk)
    return out.T if m.fortran and m.ndim > 1 else out


def load_npz_feeds(
    path: str | Path,
    model: ir.Model,
    limit: int | None = None,
    label_key: str = "labels",
    *,
    labels_only: bool = False,
) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """Split arrays in an .npz/.npy into per-sample feeds for the model.

    Arrays are ``(N, *sample_shape)``: an array of the input's rank holds samples along axis 0 (each
    gets batch 1; for an input with a fixed batch ``b > 1`` consecutive groups of ``b`` rows form
    one sample), an array of rank + 1 holds N whole input tensors. Each array is matched to an
    input by name (a single-input model also takes a lone array under any key). Returns the feeds
    and the labels array when the file holds one under ``label_key`` (one per sample row).
    Only the first ``limit`` samples are read (see ``NPZ_READ_LIMIT``); ``labels_only`` reads
    just the labels.
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"data file {str(path)!r} not found")
    try:
        arrays = _npz_members(path)
    except CalibrationError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's data
        raise CalibrationError(f"cannot read {str(path)!r} as .npz/.npy: {e}") from None
    label_member = arrays.pop(label_key, None)
    specs = model_inputs(model)
    if len(specs) == 1 and len(arrays) == 1:
        (key, arr), = arrays.items()
        if key != specs[0].name and (str(path), key) not in _NAME_NOTED:
            _NAME_NOTED.add((str(path), key))
            logger.warning("%s: array %r taken for the model's only input %r (the names differ)",
                           path.name, key, specs[0].name)
        arrays = {specs[0].name: arr}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise CalibrationError(
            f"{str(path)!r} lacks arrays for inputs {missing}; it has {sorted(arrays)}"
        )
    grouped = {s.name: _as_samples(arrays[s.name], s, path) for s in specs}
    counts = {len(g) for g in grouped.values()}
    if len(counts) != 1 or 0 in counts:
        got = {k: len(g) for k, g in grouped.items()}
        raise CalibrationError(f"{str(path)!r}: inputs have different or zero sample counts {got}")
    n = counts.pop() if limit is None else min(counts.pop(), limit)
    plan = {} if labels_only else {s.name: grouped[s.name].rows(n) for s in specs}
    _check_read_size(path, grouped, plan, label_member, n)
    per = _rows_per_sample(grouped[specs[0].name], specs[0])
    label_rows = len(grouped[specs[0].name]) * per  # every sample's rows, before any is read
    for name, rows in plan.items():
        grouped[name].arr = _read_member(path, grouped[name].arr, rows)
    feeds = [] if labels_only else [
        {s.name: _fit(grouped[s.name][i], s, path) for s in specs} for i in range(n)
    ]
    labels = None
    if label_member is not None:
        from autoglm_compress.labels import normalize_labels

        labels = _read_member(path, label_member, None)
        labels = normalize_labels(labels, label_rows, f"{str(path)!r} '{label_key}'")[: n * per]
    return feeds, labels


def _check_read_size(path: Path, grouped: dict, plan: dict, label_member, n: int) -> None:
    """Refuse, before reading, a sample over ``INPUT_ELEMENTS_CEILING`` elements or more than
    ``NPZ_READ_LIMIT`` bytes for the ``n`` samples asked for."""
    total = label_member.read_bytes(None) if label_member is not None else 0
    for name, rows in plan.items():
        g = grouped[name]
        per_sample = math.prod(g.arr.shape[1:]) * (g.batch or 1)
        if per_sample > INPUT_ELEMENTS_CEILING:
            raise CalibrationError(
                f"{str(path)!r}: one sample of input {name!r} holds {per_sample:,} elements "
                f"(array {tuple(g.arr.shape)}), over the {INPUT_ELEMENTS_CEILING:,}-element "
                "ceiling per input; give smaller samples"
            )
        total += g.arr.read_bytes(rows)
    if total > NPZ_READ_LIMIT:
        raise CalibrationError(
            f"{str(path)!r}: the {n} samples asked for hold {total:,} bytes, over the "
            f"{NPZ_READ_LIMIT:,}-byte limit read from one data file; ask for fewer samples or "
            "split the file"
        )


def _rows_per_sample(g: _Grouped, spec: InputSpec) -> int:
    """Label rows per sample: the sample's batch size (fixed batch, or N whole tensors)."""
    if g.batch is not None:
        return g.batch
    return int(g.arr.shape[1]) if g.arr.ndim > 1 else 1


def _sample_dims(spec: InputSpec) -> str:
    return "x".join(str(d) if isinstance(d, int) else "?" for d in spec.shape)


class _Grouped:
    """Lazy per-sample view of one array: sample ``i`` is ``arr[i]`` (whole tensors) or rows
    ``[i*b, (i+1)*b)`` (batch ``b``)."""

    def __init__(self, arr: np.ndarray, batch: int | None):
        self.arr, self.batch = arr, batch

    def __len__(self) -> int:
        return len(self.arr) if self.batch is None else len(self.arr) // self.batch

    def rows(self, n: int) -> int:
        """Rows of the array that the first ``n`` samples span."""
        return n if self.batch is None else n * self.batch

    def __getitem__(self, i: int) -> np.ndarray:
        if self.batch is None:
            return self.arr[i]
        return self.arr[i * self.batch : (i + 1) * self.batch]


def _as_samples(arr: np.ndarray, spec: InputSpec, path: Path) -> _Grouped:
    rank = len(spec.shape)
    first = spec.shape[0] if rank else None
    b = first if isinstance(first, int) and first > 0 else 1
    def dims_fit(got, want) -> bool:
        return all(not isinstance(w, int) or w == g for w, g in zip(want, got))

    if arr.ndim == rank + 1 and dims_fit(arr.shape[1:], spec.shape):  # rank 0: (N,) scalars
        return _Grouped(arr, None)
    if rank and arr.ndim == rank and len(arr) % b == 0 and dims_fit(arr.shape[1:], spec.shape[1:]):
        return _Grouped(arr, b)
    want = _sample_dims(spec)
    alt = f" or (N·{b}, {want.split('x', 1)[1]})" if b > 1 and rank > 1 else ""
    hint = f" or (N, {want.split('x', 1)[1]})" if b == 1 and rank > 1 else ""
    raise CalibrationError(
        f"{str(path)!r}: input {spec.name!r} ({want}) expects an array (N, {want}){alt}{hint}; "
        f"got {tuple(arr.shape)}"
    )


def _fit(sample: np.ndarray, spec: InputSpec, path: Path) -> np.ndarray:
    want = tuple(spec.shape)
    arr = np.asarray(sample)
    if arr.ndim == len(want) - 1:
        arr = arr[None]
    fits = arr.ndim == len(want) and all(
        not isinstance(w, int) or w == a for w, a in zip(want, arr.shape)
    )
    if want and not fits:
        raise CalibrationError(
            f"{str(path)!r}: input {spec.name!r} expects per-sample shape "
            f"({_sample_dims(spec)}), got {arr.shape}"
        )
    if arr.dtype != np.dtype(spec.dtype):
        same_kind = np.issubdtype(arr.dtype, np.floating) == np.issubdtype(
            np.dtype(spec.dtype), np.floating
        )
        if not same_kind or arr.dtype.kind not in "biuf":
            raise CalibrationError(
                f"{str(path)!r}: input {spec.name!r} expects {spec.dtype}, got {arr.dtype}"
            )
        arr = arr.astype(spec.dtype)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise CalibrationError(f"{str(path)!r}: input {spec.name!r} holds NaN or Inf values")
    return arr

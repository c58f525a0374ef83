"""Model input specs: parsing ``--input-shape``, reading the IR's inputs, making sample feeds."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
import onnx_ir as ir

from autoglm_compress.errors import CalibrationError, ConfigError

__all__ = ["InputSpec", "parse_input_shape", "model_inputs", "random_feeds", "load_npz_feeds"]

logger = logging.getLogger(__name__)

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
    specs = []
    for v in model.graph.inputs:
        shape = tuple(d if isinstance(d, int) else str(d) for d in (v.shape or ()))
        dtype = np.dtype(v.dtype.numpy()).name if v.dtype is not None else "float32"
        specs.append(InputSpec(v.name, shape, dtype))
    return specs


def _int_upper_bound(model: ir.Model, name: str) -> int:
    """Largest safe value+1 for an integer input: the table size when it indexes a Gather."""
    value = next(v for v in model.graph.inputs if v.name == name)
    bounds = []
    for user, idx in value.uses():
        if user.op_type == "Gather" and idx == 1 and user.inputs[0] is not None:
            data = user.inputs[0]
            if data.const_value is not None or (data.shape and isinstance(data.shape[0], int)):
                bounds.append(int(data.shape[0]))
    return min(bounds) if bounds else 2


def random_feeds(model: ir.Model, n: int = 1, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` random feeds that fit the model: N(0,1) floats; integer ids within the embedding size."""
    rng = np.random.default_rng(seed)
    feeds = []
    specs = model_inputs(model)
    for _ in range(n):
        feed = {}
        for s in specs:
            if not s.static:
                raise ConfigError(
                    f"input {s.name!r} has symbolic shape {s.shape}; pass --input-shape"
                )
            if np.issubdtype(np.dtype(s.dtype), np.integer) or s.dtype == "bool":
                hi = _int_upper_bound(model, s.name)
                feed[s.name] = rng.integers(0, hi, size=s.shape).astype(s.dtype)
            else:
                feed[s.name] = rng.standard_normal(s.shape).astype(s.dtype)
        feeds.append(feed)
    return feeds


def load_npz_feeds(
    path: str | Path, model: ir.Model, limit: int | None = None, label_key: str = "labels"
) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """Split arrays in an .npz/.npy (leading axis = samples) into per-sample feeds for the model.

    Each array is matched to an input by name (a single-input model also takes a lone array under
    any key). Returns the feeds and the labels array when the file holds one under ``label_key``.
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"data file {str(path)!r} not found")
    try:
        data = np.load(path, allow_pickle=False)
        arrays = {"": data} if isinstance(data, np.ndarray) else {k: data[k] for k in data.files}
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's data
        raise CalibrationError(f"cannot read {str(path)!r} as .npz/.npy: {e}") from None
    labels = arrays.pop(label_key, None)
    specs = model_inputs(model)
    if len(specs) == 1 and len(arrays) == 1:
        arrays = {specs[0].name: next(iter(arrays.values()))}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise CalibrationError(
            f"{str(path)!r} lacks arrays for inputs {missing}; it has {sorted(arrays)}"
        )
    counts = {len(arrays[s.name]) for s in specs}
    if len(counts) != 1 or 0 in counts:
        raise CalibrationError(
            f"{str(path)!r}: inputs have different or zero sample counts {counts}"
        )
    n = counts.pop() if limit is None else min(counts.pop(), limit)
    feeds = [{s.name: _fit(arrays[s.name][i], s, path) for s in specs} for i in range(n)]
    return feeds, (None if labels is None else np.asarray(labels)[:n])


def _fit(sample: np.ndarray, spec: InputSpec, path: Path) -> np.ndarray:
    want = tuple(spec.shape)
    arr = np.asarray(sample)
    if spec.static and arr.shape != want:
        if len(want) == arr.ndim + 1 and want[0] == 1 and tuple(want[1:]) == arr.shape:
            arr = arr[None]
        else:
            raise CalibrationError(
                f"{str(path)!r}: input {spec.name!r} expects per-sample shape {want}, got {arr.shape}"
            )
    if arr.dtype != np.dtype(spec.dtype):
        same_kind = np.issubdtype(arr.dtype, np.floating) == np.issubdtype(
            np.dtype(spec.dtype), np.floating
        )
        if not same_kind:
            raise CalibrationError(
                f"{str(path)!r}: input {spec.name!r} expects {spec.dtype}, got {arr.dtype}"
            )
        arr = arr.astype(spec.dtype)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise CalibrationError(f"{str(path)!r}: input {spec.name!r} holds NaN or Inf values")
    return arr

"""Calibration data sources: per-sample feeds ``{input name: array}`` that fit the model's inputs.

``open_calibration_source(spec, model)`` accepts

* a ``.npz`` / ``.npy`` file — arrays named like the inputs, leading axis = samples
  (delegates to :func:`autoglm_compress.inputs.load_npz_feeds`);
* a folder of images (jpg/png/bmp, recursive, sorted) — see :mod:`.images` and
  :class:`ImagePreprocess`;
* ``"module:function"`` or ``"path/to/file.py:function"`` — a callable taking no arguments that
  returns or yields dicts of arrays (or bare arrays for a single-input model); an array whose rank
  equals the input's holds a batch and is split along axis 0, one rank less is one sample;
* nothing, with ``random=True`` — random feeds (``kind="random"``, so the report can warn).

Every feed is checked: all inputs present, shape and dtype fit (float→float and int→int casts are
allowed), values finite. Each sample keeps the input's batch dimension (1 for a symbolic batch).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import itertools
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir

from autoglm_compress.calibration.images import (
    ImagePreprocess,
    list_images,
    load_image,
    resolve_target,
)
from autoglm_compress.errors import CalibrationError, ConfigError
from autoglm_compress.inputs import InputSpec, iter_random_feeds, load_npz_feeds, model_inputs

__all__ = [
    "DEFAULT_RANDOM_SAMPLES",
    "CalibrationSource",
    "ImagePreprocess",
    "batched",
    "precheck_source",
    "fit_feed",
    "open_calibration_source",
]

logger = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
DEFAULT_RANDOM_SAMPLES = 128  # random source length when iterated without take(n)
_CALLABLE = re.compile(r"^(?P<target>.+\.py|[A-Za-z_][\w.]*):(?P<func>[A-Za-z_]\w*)$")


@dataclasses.dataclass
class CalibrationSource:
    """An iterable of validated per-sample feeds; ``take(n)`` stops after ``n`` samples.

    Iterating a source that yields no sample at all raises ``CalibrationError('empty calibration
    set ...')``. ``size`` is the sample count when known up front (files, folders).
    """

    name: str
    kind: str  # "npz" | "images" | "callable" | "random"
    _produce: Callable[[int | None], Iterable[Feed]] = dataclasses.field(repr=False)
    size: int | None = None
    skipped: list[str] = dataclasses.field(default_factory=list)  # files that were not samples
    # labels of the first n samples (an .npz's "labels" array), or None: what distillation's
    # cross-entropy term reads
    labels: Callable[[int | None], np.ndarray | None] | None = dataclasses.field(
        default=None, repr=False)

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    def __iter__(self) -> Iterator[Feed]:
        return self.take(None)

    def take(self, n: int | None) -> Iterator[Feed]:
        if n is not None and n < 1:
            raise ConfigError(f"calibration sample count must be positive, got {n}")
        count = 0
        feeds = iter(self._produce(n))
        for feed in feeds if n is None else itertools.islice(feeds, n):  # never pulls sample n+1
            count += 1
            yield feed
        if count == 0:
            raise CalibrationError(
                f"empty calibration set: {self.name!r} ({self.kind}) gave no samples"
            )


def _shape_str(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _fit_array(value, spec: InputSpec, origin: str) -> np.ndarray:
    """``value`` as the input's dtype, or one CalibrationError: what was expected, what came."""
    arr = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    want = np.dtype(spec.dtype)
    expected = f"expects {want.name} {_shape_str(spec.shape)}"
    got = f"got {arr.dtype.name} {_shape_str(arr.shape)}"
    dims_ok = arr.ndim == len(spec.shape) and all(
        not isinstance(d, int) or d < 0 or d == a for d, a in zip(spec.shape, arr.shape)
    )
    kinds_ok = np.issubdtype(arr.dtype, np.floating) == np.issubdtype(want, np.floating) and (
        arr.dtype.kind in "biuf"
    )
    if not (dims_ok and kinds_ok):
        raise CalibrationError(f"{origin}: input {spec.name!r} {expected}, {got}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise CalibrationError(f"{origin}: input {spec.name!r} holds NaN or Inf values")
    return arr if arr.dtype == want else arr.astype(want)


def fit_feed(feed, specs: list[InputSpec], origin: str) -> Feed:
    """Validate one per-sample feed against the model's inputs; extra keys (labels) are dropped."""
    if not isinstance(feed, dict):
        raise CalibrationError(f"{origin}: expected a dict of arrays, got {type(feed).__name__}")
    missing = [s.name for s in specs if s.name not in feed]
    if missing:
        raise CalibrationError(f"{origin}: no data for inputs {missing}; it has {sorted(feed)}")
    return {s.name: _fit_array(feed[s.name], s, origin) for s in specs}


def _sample_batch(spec: InputSpec) -> int:
    first = spec.shape[0] if spec.shape else 1
    return first if isinstance(first, int) and first > 0 else 1


def _split(item, specs: list[InputSpec], origin: str) -> list[Feed]:
    """A callable's item (dict or bare array, maybe a batch) → per-sample feeds."""
    if not isinstance(item, dict):
        if len(specs) != 1 or not hasattr(item, "shape"):
            raise CalibrationError(
                f"{origin}: yielded {type(item).__name__}; expected a dict of "
                f"arrays keyed by {[s.name for s in specs]}"
            )
        item = {specs[0].name: item}
    arrays, counts = {}, set()
    for s in specs:
        if s.name not in item:
            raise CalibrationError(f"{origin}: no data for input {s.name!r}; it has {sorted(item)}")
        a = item[s.name]
        a = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
        if a.ndim == len(s.shape) - 1 and _sample_batch(s) == 1:
            a = a[None]
        if a.ndim == 0:
            _fit_array(a, s, origin)  # raises the shape message
        arrays[s.name] = a
        counts.add(len(a) // _sample_batch(s))
    if len(counts) != 1:
        raise CalibrationError(
            f"{origin}: inputs hold different batch sizes "
            f"{ {k: v.shape for k, v in arrays.items()} }"
        )
    n = counts.pop()
    step = {s.name: _sample_batch(s) for s in specs}
    return [{k: a[i * step[k] : (i + 1) * step[k]] for k, a in arrays.items()} for i in range(n)]


def _npz_source(path: Path, model: ir.Model, specs: list[InputSpec]) -> CalibrationSource:
    origin = str(path)

    def produce(n):
        feeds, _ = load_npz_feeds(path, model, limit=n)
        return (fit_feed(f, specs, origin) for f in feeds)

    def labels(n):
        return load_npz_feeds(path, model, limit=n, labels_only=True)[1]  # samples not re-read

    return CalibrationSource(origin, "npz", produce, labels=labels)


def _image_source(
    folder: Path, specs: list[InputSpec], pre: ImagePreprocess | None, skip_invalid: bool
) -> CalibrationSource:
    if len(specs) != 1:
        raise CalibrationError(
            f"image folder {str(folder)!r} needs a single-input model; this one "
            f"has inputs {[s.name for s in specs]}"
        )
    pre = pre or ImagePreprocess()
    target = resolve_target(specs[0], pre)
    skipped: list[Path] = []
    files = list_images(folder, skip_invalid, skipped)
    source = CalibrationSource(str(folder), "images", lambda n: (), size=len(files))
    source.skipped.extend(str(p) for p in skipped)

    def produce(n):
        for path in files:
            try:
                image = load_image(path, target, pre)
            except CalibrationError:
                if not skip_invalid:
                    raise
                logger.info("skipping unreadable image %s", path)
                source.skipped.append(str(path))
                continue
            yield fit_feed({target.name: image}, specs, str(path))

    source._produce = produce
    return source


def _load_callable(text: str) -> Callable:
    m = _CALLABLE.match(text)
    target, func = m.group("target"), m.group("func")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise CalibrationError(f"calibration script {target!r} not found")
            mod_name = f"_autoglm_calib_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            module = _import_from_cwd(target)
    except CalibrationError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module failed to import
        raise CalibrationError(
            f"cannot import {target!r} for calibration data {text!r}: {e}"
        ) from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise CalibrationError(f"{target!r} has no callable {func!r} (calibration data {text!r})")
    return fn


def _import_from_cwd(name: str):
    """Import ``name`` with the current folder first on the path (a console script's own
    ``sys.path[0]`` is its bin folder, so ``--calib mydata:samples`` would not find mydata.py)."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    finally:
        if added:
            sys.path.remove(cwd)


def _user_items(fn: Callable, text: str) -> Iterator:
    """The callable's items; its exceptions (at call or while iterating) become CalibrationError."""
    try:
        out = fn()
        if isinstance(out, dict) or hasattr(out, "shape"):
            yield out
            return
        if not isinstance(out, Iterable):
            raise CalibrationError(
                f"calibration callable {text!r} returned {type(out).__name__}; "
                "expected dicts of arrays (returned, listed or yielded)"
            )
        yield from out
    except (CalibrationError, GeneratorExit):
        raise
    except Exception as e:  # noqa: BLE001 - the user's function failed
        raise CalibrationError(
            f"calibration callable {text!r} raised {type(e).__name__}: {e}"
        ) from None


def _callable_source(text: str, specs: list[InputSpec]) -> CalibrationSource:
    fn = _load_callable(text)

    def produce(n):
        for k, item in enumerate(_user_items(fn, text)):
            origin = f"{text} (item {k})"
            for feed in _split(item, specs, origin):
                yield fit_feed(feed, specs, origin)

    return CalibrationSource(text, "callable", produce)


def _random_source(model: ir.Model, seed: int) -> CalibrationSource:
    iter_random_feeds(model, 0, seed)  # too-large or symbolic inputs refused now, not mid-run

    def produce(n):  # one feed at a time: memory does not grow with the sample count
        return iter_random_feeds(model, n or DEFAULT_RANDOM_SAMPLES, seed)

    return CalibrationSource("random", "random", produce)


def open_calibration_source(
    spec: str | Path | None,
    model: ir.Model,
    *,
    preprocess: ImagePreprocess | None = None,
    random: bool = False,
    seed: int = 0,
    skip_invalid: bool = True,
) -> CalibrationSource:
    """The calibration source ``spec`` names (see the module docstring); random only on request."""
    if spec is None:
        if not random:
            raise ConfigError(
                "no calibration data: give a .npz/.npy file, an image folder or "
                "module:function, or ask for random data explicitly"
            )
        return _random_source(model, seed)
    if random:
        raise ConfigError(f"calibration data {str(spec)!r} and random=True both given; choose one")
    specs, text, path = model_inputs(model), str(spec), Path(spec)
    if preprocess is not None and not path.is_dir():
        logger.warning("image preprocessing ignored: %s is not an image folder", text)
    if path.is_dir():
        return _image_source(path, specs, preprocess, skip_invalid)
    if path.is_file():
        if path.suffix.lower() in (".npz", ".npy"):
            return _npz_source(path, model, specs)
        raise CalibrationError(
            f"calibration data {text!r}: unsupported file type; use .npz/.npy, "
            "an image folder or module:function"
        )
    if _CALLABLE.match(text):
        return _callable_source(text, specs)
    raise CalibrationError(
        f"calibration data {text!r} not found (expected a .npz/.npy file, an "
        "image folder, or module:function)"
    )


def precheck_source(spec: str | Path | None) -> None:
    """What can be checked of a data source before the model is loaded (seconds saved on a typo):
    a path that is neither a file, a folder nor ``module:function``, an unsupported file type, an
    image folder with no images — the errors ``open_calibration_source`` would raise later."""
    if spec is None:
        return
    text, path = str(spec), Path(spec)
    if path.is_dir():
        list_images(path, skip_invalid=True)
    elif path.is_file():
        if path.suffix.lower() not in (".npz", ".npy"):
            raise CalibrationError(
                f"calibration data {text!r}: unsupported file type; use .npz/.npy, "
                "an image folder or module:function"
            )
    elif not _CALLABLE.match(text):
        raise CalibrationError(
            f"calibration data {text!r} not found (expected a .npz/.npy file, an "
            "image folder, or module:function)"
        )


def batched(feeds: Iterable[Feed], batch_size: int = 1) -> Iterator[Feed]:
    """Group consecutive feeds into batches of ``batch_size``, concatenated along axis 0 (the last
    batch may be smaller). ``batch_size=1`` passes the per-sample feeds through."""
    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    buf: list[Feed] = []
    for feed in feeds:
        buf.append(feed)
        if len(buf) == batch_size:
            yield _concat(buf)
            buf = []
    if buf:
        yield _concat(buf)


def _concat(buf: list[Feed]) -> Feed:
    if len(buf) == 1:
        return buf[0]
    return {k: np.concatenate([f[k] for f in buf], axis=0) for k in buf[0]}

"""Build and check a :class:`CompressConfig` from flat keywords (API, CLI) or nested dicts (recipes).

Every value is checked against its field's type, choices and range; a wrong one is one
:class:`ConfigError` line naming the key path (``gates.min_cosine``) or the CLI option, and, for a
recipe, its line. A string where a tuple is expected is one element or a comma-separated list
(``targets="x86,cuda"``), never split into letters.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from autoglm_compress.config import CompressConfig, type_hints
from autoglm_compress.errors import ConfigError

__all__ = ["FlatField", "check_combinations", "flat_fields", "from_dict", "from_flat", "to_dict"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FlatField:
    flat: str  # API keyword
    path: tuple[str, ...]  # key path in the nested config / recipe
    field: dataclasses.Field
    type: Any
    group: str

    @property
    def option(self) -> str:
        cli = self.field.metadata.get("cli")
        return (cli.split("/")[-1] if cli else "--" + self.flat.replace("_", "-")).split(" ")[0]

    @property
    def key(self) -> str:
        return ".".join(self.path)


def _walk(cls, prefix: tuple[str, ...], group: str, out: list[FlatField]) -> None:
    hints = type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            _walk(t, prefix + (f.name,), (t.__doc__ or f.name).strip().splitlines()[0], out)
        elif f.name != "target_options":
            flat = f.metadata.get("flat") or f.name
            out.append(FlatField(flat, prefix + (f.name,), f, t, f.metadata.get("group") or group))


def flat_fields(targets: tuple[str, ...] | None = None) -> dict[str, FlatField]:
    """Every config field by flat name, target options included (``reduce_range`` …)."""
    out: list[FlatField] = []
    _walk(CompressConfig, (), "General", out)
    from autoglm_compress.targets.registry import target_names, target_options_class

    for name in targets or target_names():
        cls = target_options_class(name)
        hints = type_hints(cls)
        for f in dataclasses.fields(cls):
            flat = f.metadata.get("flat") or f"{name}_{f.name}"
            out.append(
                FlatField(flat, ("target_options", name, f.name), f, hints[f.name], f"Target {name}")
            )
    by_flat: dict[str, FlatField] = {}
    for ff in out:
        if ff.flat in by_flat:
            raise RuntimeError(f"config: flat name {ff.flat!r} used twice")  # a programming error
        by_flat[ff.flat] = ff
    return by_flat


def _kind(t) -> tuple[Any, bool]:
    """(inner type, optional) for ``X | None``."""
    args = typing.get_args(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return t, False


def _scalar(value, t, where: str):
    if t is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if t is float:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except (ValueError, OverflowError):
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if t is str:
        if isinstance(value, str):
            return value
        if hasattr(value, "__fspath__"):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {t}")


def _tuple(value, elem, where: str) -> tuple:
    if isinstance(value, str) or hasattr(value, "__fspath__"):
        text = str(value)
        if elem is str:
            return tuple(p.strip() for p in text.split(",") if p.strip())
        parts = text.replace("x", ",").split(",") if elem is int else text.split(",")
        value = [p.strip() for p in parts if p.strip()]
        try:
            value = [elem(p) for p in value]
        except ValueError:
            raise ConfigError(f"{where}: expected {elem.__name__}s like '1,2', got {text!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    return tuple(_scalar(v, elem, where) for v in value)


def coerce(value, t, ff_meta, where: str):
    """``value`` as type ``t`` (checked), with the field's choices and range."""
    inner, optional = _kind(t)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    if typing.get_origin(inner) is tuple:
        out = _tuple(value, typing.get_args(inner)[0], where)
    else:
        out = _scalar(value, inner, where)
    choices, lo, hi = ff_meta.get("choices"), ff_meta.get("min"), ff_meta.get("max")
    for v in out if isinstance(out, tuple) else (out,):
        if choices and v not in choices:
            raise ConfigError(f"{where}: {v!r} is not one of {', '.join(map(str, choices))}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{where}: {v!r} is not a finite number")
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if number and ((lo is not None and v < lo) or (hi is not None and v > hi)):
            rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise ConfigError(f"{where}: {v!r} is out of range {rng}")
    return out


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _build(cls, tree: dict, prefix: tuple[str, ...], where: Callable[[tuple[str, ...]], str]):
    hints, kwargs = type_hints(cls), {}
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in tree.items():
        path = prefix + (key,)
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{where(path)}: unknown key (known here: {known})")
        f, t = names[key], hints[key]
        if dataclasses.is_dataclass(t):
            if isinstance(value, t):
                kwargs[key] = value
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where(path)}: expected a table of {t.__name__} options")
            kwargs[key] = _build(t, value, path, where)
        elif key == "target_options":
            kwargs[key] = _target_options(value, path, where)
        else:
            kwargs[key] = coerce(value, t, f.metadata, where(path))
    return cls(**kwargs)


def _target_options(value, path, where) -> dict:
    from autoglm_compress.targets.registry import target_names, target_options_class

    if not isinstance(value, dict):
        raise ConfigError(f"{where(path)}: expected a table per target")
    out = {}
    for name, opts in value.items():
        if name not in target_names():
            raise ConfigError(
                f"{where(path + (name,))}: unknown target (known: {', '.join(target_names())})"
            )
        cls = target_options_class(name)
        if not isinstance(opts, (cls, dict)):
            raise ConfigError(f"{where(path + (name,))}: expected a table of {name} options, "
                              f"got {opts!r}")
        opts = opts if isinstance(opts, cls) else _build(cls, opts, path + (name,), where)
        if opts != cls():  # defaults are implied: one spelling of a config
            out[name] = opts
    return out


def from_dict(tree: dict, where: Callable[[tuple[str, ...]], str] | None = None) -> CompressConfig:
    """A config from a nested dict (a recipe); ``where(path)`` words the location in errors."""
    from autoglm_compress.targets.registry import target_names

    where = where or (lambda p: ".".join(p))
    cfg = _build(CompressConfig, tree, (), where)
    if not cfg.model:
        raise ConfigError(f"{where(('model',))}: no model given")
    for name in cfg.targets:
        if name not in target_names():
            raise ConfigError(f"{where(('targets',))}: unknown target {name!r}; available: "
                              f"{', '.join(target_names())}")
    return cfg


def from_flat(model=None, base: CompressConfig | None = None, *, cli: bool = False, **kw):
    """A config from flat keywords (``int8=True, calib="x.npz", targets="x86"``), over ``base``.
    ``fp16``/``int8`` are shorthands for ``precision``; nested sections may be passed whole."""
    fields, tree = flat_fields(), to_dict(base, defaults=True) if base is not None else {}
    if model is not None:
        tree["model"] = str(model)
    for short in ("fp16", "int8"):
        if isinstance(kw.get(short), bool) or (short == "fp16" and short in kw):
            flag = kw.pop(short)
            if not isinstance(flag, bool):
                raise ConfigError(f"{short}: expected True or False, got {flag!r}")
            if flag:
                if tree.get("precision", "fp32") not in ("fp32", short):
                    raise ConfigError("--fp16 and --int8 are exclusive; choose one precision per run")
                tree["precision"] = short
    sections = {f.name for f in dataclasses.fields(CompressConfig)} - {ff.flat for ff in fields.values()}
    for key, value in kw.items():
        if key in sections:  # a whole section: int8=Int8Config(...) or calibration={...}
            tree[key] = value
            continue
        if key not in fields:
            hint = "option" if cli else "keyword"
            raise ConfigError(f"{key}: unknown {hint}; see `autoglm-compress --help`")
        _set(tree, fields[key].path, value)

    def where(path):
        ff = next((f for f in fields.values() if f.path == path), None)
        return (ff.option if cli else ff.flat) if ff is not None else ".".join(path)

    return from_dict(tree, where)


def to_dict(cfg: CompressConfig, defaults: bool = False) -> dict:
    """The nested dict of ``cfg`` (recipe layout); without ``defaults`` only the values that
    differ from the defaults, plus model, out_dir, targets and precision."""
    def walk(obj, ref) -> dict:
        out = {}
        for f in dataclasses.fields(obj):
            v, r = getattr(obj, f.name), getattr(ref, f.name) if ref is not None else None
            if dataclasses.is_dataclass(v):
                sub = walk(v, r if not defaults else None)
                if sub or defaults:
                    out[f.name] = sub
            elif f.name == "target_options":
                sub = {
                    k: walk(o, None if defaults else type(o)()) for k, o in v.items()
                }
                sub = {k: s for k, s in sub.items() if s}
                if sub:
                    out[f.name] = sub
            elif v is not None and (
                defaults or v != r or f.name in ("model", "out_dir", "targets", "precision")
            ):
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    return walk(cfg, None if defaults else CompressConfig(model=cfg.model))


def _changed(section, name: str) -> bool:
    return getattr(section, name) != getattr(type(section)(), name)


def check_combinations(cfg: CompressConfig) -> list[str]:
    """Usage errors that need no model, raised before anything is loaded; options a combination
    ignores are refused when that hides a mistake, else warned about. Returns the warnings."""
    from pathlib import Path

    from autoglm_compress.targets.registry import target_names

    p, warnings = cfg.precision, []
    for name in cfg.targets:
        if name not in target_names():
            raise ConfigError(f"unknown target {name!r}; available: {', '.join(target_names())}")
    if not cfg.targets:
        raise ConfigError("no target given: add --target x86 (or cuda, …)")
    if cfg.qat.steps and p != "int8":
        raise ConfigError("--qat-steps fine-tunes INT8 weights: add --int8")
    if cfg.int8.latency_guard:
        arm_fmt = getattr(cfg.target_options.get("arm"), "format", "tflite") \
            if "arm" in cfg.targets else None
        if p != "int8" or not ("x86" in cfg.targets or arm_fmt in ("tflite", "all")):
            raise ConfigError(
                "--latency-guard times x86 INT8 kernels in onnxruntime or counts arm TFLite ones "
                "in aarch64 LiteRT (qemu-aarch64): use it with --int8 and --target x86 or --target "
                "arm (--format tflite/all); for ncnn use --ncnn-int8-layers measured-arm")
        if arm_fmt == "all":
            warnings.append("--latency-guard decides the arm TFLite artifact's op types; the ncnn "
                            "one's int8 layers follow --ncnn-int8-layers (measured-arm: counted "
                            "on aarch64 too)")
    if cfg.int8.weights_only:
        if p != "int8":
            raise ConfigError("--weights-only quantizes weights to int8: add --int8")
        other = [t for t in cfg.targets if t not in ("x86", "arm")]
        if "arm" in cfg.targets and getattr(cfg.target_options.get("arm"), "format", "tflite") != "tflite":
            other.append("arm --format ncnn/all")
        if other:
            raise ConfigError(f"--weights-only is implemented for --target x86 and arm (TFLite) "
                              f"only, not {', '.join(other)}; drop --weights-only for static "
                              "INT8 there")
        if cfg.qat.steps or cfg.int8.latency_guard:
            raise ConfigError("--weights-only has no activation scales: --qat-steps and "
                              "--latency-guard do not apply")
    needs_calib = p == "int8" and not cfg.int8.weights_only
    if needs_calib and not cfg.calibration.data and not cfg.calibration.random:
        raise ConfigError(
            "--int8 needs calibration data: --calib DATA (.npz/.npy, image folder, "
            "module:function), or --calib-random to accept random data"
        )
    if cfg.distill.active and not (cfg.distill.data or cfg.calibration.data
                                   or cfg.calibration.random):
        raise ConfigError(
            "--distill needs data to train on: --train-data DATA or --calib DATA"
        )
    if cfg.distill.steps and cfg.distill.epochs:
        raise ConfigError("--distill-steps and --distill-epochs both given; choose one")
    if cfg.prune.importance == "taylor" and not (cfg.distill.data or cfg.calibration.data
                                                 or cfg.calibration.random):
        raise ConfigError("--prune-importance taylor measures channels on data: add "
                          "--train-data DATA or --calib DATA")
    if cfg.distill.data and not cfg.distill.active:
        raise ConfigError("--train-data is what distillation trains on: add --distill (or "
                          "--distill-steps N)")
    if cfg.calibration.random and cfg.calibration.data:
        raise ConfigError("--calib and --calib-random both given; choose one")
    if cfg.gates.max_drop is not None and not cfg.verify.eval_data:
        raise ConfigError("--max-drop needs labelled eval data: add --eval DATA.npz with 'labels'")
    if cfg.debug.dump_ir_after:
        from autoglm_compress.targets.registry import get_targets

        names = list(cfg.pass_names) + [n for t in dict.fromkeys(cfg.targets)
                                        for tgt in get_targets(t, cfg.target_options.get(t))
                                        for n in tgt.prepare_passes(p) if n not in cfg.pass_names]
        unknown_dump = set(cfg.debug.dump_ir_after) - set(names)
        if unknown_dump:
            raise ConfigError(
                f"--dump-ir-after {sorted(unknown_dump)}: not in this pipeline "
                f"({', '.join(dict.fromkeys(names)) or 'no passes'})"
            )
    if p != "int8":
        ignored = [f"--{n.replace('_', '-')}" for n in ("keep_fp32", "per_tensor", "smoothquant",
                   "equalize", "bias_correction") if _changed(cfg.int8, n)]
        ignored += ["--calib-method"] if _changed(cfg.calibration, "method") else []
        if ignored:
            warnings.append(f"{', '.join(ignored)} only act with --int8: ignored for {p}")
    for name in cfg.target_options:
        if name not in cfg.targets and cfg.target_options[name] != type(cfg.target_options[name])():
            warnings.append(f"options for target {name!r} given, but {name} is not a --target")
    image = cfg.calibration.image
    if image != type(image)() and not (cfg.calibration.data and Path(cfg.calibration.data).is_dir()):
        warnings.append("--image-* options act on an image-folder --calib only: ignored")
    _check_paths(cfg)
    from autoglm_compress.bundle import check_bundle_config

    check_bundle_config(cfg)
    for w in warnings:
        logger.warning("%s", w)
    return warnings


def _check_paths(cfg: CompressConfig) -> None:
    from pathlib import Path

    if not Path(cfg.model).is_file():
        raise ConfigError(f"model {cfg.model!r}: no such file; check the path")
    data = cfg.calibration.data
    if data and not Path(data).exists():
        _, sep, tail = data.partition(":")
        if not (sep and tail.isidentifier()):
            raise ConfigError(f"--calib {data!r}: no such file or folder")
    if cfg.verify.eval_data and not Path(cfg.verify.eval_data).is_file():
        raise ConfigError(f"--eval {cfg.verify.eval_data!r}: no such file")

"""The preprocessing a bundle's manifest records: how raw images become the model's input tensor.

Two sources. An image-folder ``--calib``: the ``--image-*`` options as calibration used them
(calibration/images.py), resolved against the model input (layout, crop = the input's H x W,
resize = the crop's larger side when not set). Array data (.npz, module:function): the user
states it with ``--preprocess``, a comma-separated list of ``key=value`` items where a list
value continues over the following commas until the next ``key=``::

    --preprocess "resize=256,crop=224,scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,layout=NCHW,order=RGB"

Keys (all optional): ``resize`` (N = shorter side, aspect kept; HxW = exact), ``crop`` (center
crop, N or HxW; default the model input's H x W), ``scale`` (a number or a fraction ``1/255``;
default 1), ``mean`` / ``std`` (one value or one per channel, in the model's channel order;
default 0 / 1), ``layout`` (NCHW | NHWC; default inferred from the input's shape), ``order``
(RGB | BGR | GRAY; default RGB, GRAY for a 1-channel input), ``input`` (the input it describes;
default the model's first). Each tensor element is ``(pixel · scale − mean[c]) / std[c]``.

This module imports only the standard library: the config parses ``--preprocess`` at once (a
usage error, exit 2, before any model is loaded).
"""

from __future__ import annotations

import math
import re

from autoglm_compress.errors import ConfigError

__all__ = ["KEYS", "Preprocess", "parse_preprocess", "image_record", "spec_record", "FORMULA"]

KEYS = ("resize", "crop", "scale", "mean", "std", "layout", "order", "input")
FORMULA = "x[c] = (pixel[c] * scale - mean[c]) / std[c]"
_LISTS = ("mean", "std")
_DIMS = re.compile(r"^\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?$")


class Preprocess(dict):
    """A parsed ``--preprocess``: key → value (tuples for mean/std and HxW pairs)."""


def _err(text: str, what: str) -> ConfigError:
    return ConfigError(f"--preprocess {text!r}: {what}")


def _number(v: str, key: str, text: str) -> float:
    try:
        if "/" in v:
            a, b = v.split("/", 1)
            x = float(a) / float(b)
        else:
            x = float(v)
    except (ValueError, ZeroDivisionError):
        raise _err(text, f"{key}={v!r} is not a number (e.g. 0.5 or 1/255)") from None
    if not math.isfinite(x):
        raise _err(text, f"{key}={v!r} is not a finite number")
    return x


def _dims(v: str, key: str, text: str) -> tuple[int, int] | int:
    m = _DIMS.match(v)
    if not m or int(m.group(1)) <= 0 or (m.group(2) is not None and int(m.group(2)) <= 0):
        raise _err(text, f"{key}={v!r}: expected a positive N or HxW, e.g. 224 or 256x320")
    return int(m.group(1)) if m.group(2) is None else (int(m.group(1)), int(m.group(2)))


def parse_preprocess(text: str) -> Preprocess:
    """``--preprocess`` text → :class:`Preprocess`; a malformed one is one ConfigError line."""
    if not isinstance(text, str) or not text.strip():
        raise _err(str(text), f"empty; expected key=value items ({', '.join(KEYS)})")
    items: list[tuple[str, list[str]]] = []
    for tok in (t.strip() for t in text.split(",")):
        if "=" in tok:
            key, _, val = tok.partition("=")
            key = key.strip().lower()
            if key not in KEYS:
                raise _err(text, f"unknown key {key!r} (known: {', '.join(KEYS)})")
            if any(k == key for k, _ in items):
                raise _err(text, f"{key} given twice")
            items.append((key, [val.strip()]))
        elif not items or items[-1][0] not in _LISTS:
            raise _err(text, f"{tok!r} is not key=value (only mean and std take a list)")
        else:
            items[-1][1].append(tok)
    out = Preprocess()
    for key, vals in items:
        if any(v == "" for v in vals):
            raise _err(text, f"{key} has an empty value")
        if key in _LISTS:
            nums = tuple(_number(v, key, text) for v in vals)
            if len(nums) not in (1, 3):
                raise _err(text, f"{key} has {len(nums)} values; give 1 or 3")
            if key == "std" and any(x <= 0 for x in nums):
                raise _err(text, "std values must be positive")
            out[key] = nums
        elif len(vals) > 1:
            raise _err(text, f"{key} takes one value")
        elif key in ("resize", "crop"):
            out[key] = _dims(vals[0], key, text)
        elif key == "scale":
            out[key] = _number(vals[0], key, text)
            if out[key] <= 0:
                raise _err(text, "scale must be positive")
        elif key == "layout":
            out[key] = vals[0].upper()
            if out[key] not in ("NCHW", "NHWC"):
                raise _err(text, f"layout={vals[0]!r}: use NCHW or NHWC")
        elif key == "order":
            out[key] = vals[0].upper()
            if out[key] not in ("RGB", "BGR", "GRAY"):
                raise _err(text, f"order={vals[0]!r}: use RGB, BGR or GRAY")
        else:
            out[key] = vals[0]
    return out


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(v[0]), int(v[1])]


def _resize(v) -> dict | None:
    if v is None:
        return None
    if isinstance(v, int):
        return {"shorter_side": int(v)}
    return {"height": int(v[0]), "width": int(v[1])}


def _input_shape(specs, name: str | None, origin: str):
    """The input ``name`` (default: the first) of ``specs`` (inputs.InputSpec)."""
    if not specs:
        raise ConfigError(f"{origin}: the model has no inputs to describe")
    if name is None:
        return specs[0]
    for s in specs:
        if s.name == name:
            return s
    raise ConfigError(f"{origin}: input={name!r} is not a model input "
                      f"({', '.join(s.name for s in specs)})")


def _layout_channels(spec, layout: str | None, origin: str) -> tuple[str, int | None]:
    shape = list(spec.shape)
    if len(shape) != 4:
        raise ConfigError(f"{origin}: input {spec.name!r} has shape {shape}; image "
                          "preprocessing describes a 4-d image input")
    if layout is None:
        layout = ("NCHW" if shape[1] in (1, 3) else "NHWC" if shape[3] in (1, 3) else None)
        if layout is None:
            raise ConfigError(f"{origin}: input {spec.name!r} shape {shape}: cannot tell NCHW "
                              "from NHWC; add layout=NCHW or layout=NHWC")
    c = shape[1] if layout == "NCHW" else shape[3]
    return layout, c if isinstance(c, int) else None


def spec_record(pre: Preprocess, specs) -> dict:
    """The manifest's preprocess block for ``--preprocess``, checked against the model inputs
    (``specs``): the input exists and is 4-d, mean/std fit its channels."""
    origin = "--preprocess"
    spec = _input_shape(specs, pre.get("input"), origin)
    layout, c = _layout_channels(spec, pre.get("layout"), origin)
    for key in _LISTS:
        v = pre.get(key)
        if v is not None and c is not None and len(v) not in (1, c):
            raise ConfigError(f"{origin}: {key} has {len(v)} values; input {spec.name!r} has "
                              f"{c} channels")
    order = pre.get("order") or ("GRAY" if c == 1 else "RGB")
    if order == "GRAY" and c not in (1, None):
        raise ConfigError(f"{origin}: order=GRAY but input {spec.name!r} has {c} channels")
    if c == 1 and order != "GRAY":
        raise ConfigError(f"{origin}: input {spec.name!r} has 1 channel; use order=GRAY")
    h, w = (spec.shape[2:4] if layout == "NCHW" else spec.shape[1:3])
    crop = pre.get("crop")
    crop = _pair(crop) if crop is not None else (
        [h, w] if isinstance(h, int) and isinstance(w, int) else None)
    return {
        "source": "--preprocess",
        "input": spec.name,
        "resize": _resize(pre.get("resize")),
        "interpolation": None,
        "crop": None if crop is None else {"height": crop[0], "width": crop[1]},
        "scale": float(pre.get("scale", 1.0)),
        "mean": list(pre.get("mean", (0.0,))),
        "std": list(pre.get("std", (1.0,))),
        "channel_order": order,
        "layout": layout,
        "dtype": spec.dtype,
        "formula": FORMULA,
    }


def image_record(image_pre, specs) -> dict:
    """The manifest's preprocess block for an image-folder ``--calib``: ``image_pre`` (an
    ``ImagePreprocess``, the run's ``--image-*``) resolved against the first 4-d input as
    calibration resolved it (calibration/images.resolve_target)."""
    from autoglm_compress.calibration.images import resolve_target

    spec = next((s for s in specs if len(s.shape) == 4), None)
    if spec is None:
        raise ConfigError("--bundle: the image calibration data fed no 4-d input to describe")
    t = resolve_target(spec, image_pre)
    size = image_pre.size
    resize = _resize(size) if size is not None else {"shorter_side": max(t.height, t.width)}
    return {
        "source": "image folder (--calib, --image-*)",
        "input": spec.name,
        "resize": resize,
        "interpolation": "bilinear",
        "crop": {"height": t.height, "width": t.width},
        "scale": float(image_pre.scale),
        "mean": [float(x) for x in image_pre.mean],
        "std": [float(x) for x in image_pre.std],
        "channel_order": "GRAY" if t.grayscale else image_pre.channel_order,
        "layout": t.layout,
        "dtype": t.dtype,
        "formula": FORMULA,
    }

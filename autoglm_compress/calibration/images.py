"""Image-folder calibration data: listing, decoding and preprocessing into model-shaped arrays.

Per image (PIL): decode → RGB (or L for grayscale) → resize → center crop to ``H x W`` → float32
``a = pixel · scale`` → optional RGB→BGR swap → ``(a - mean[c]) / std[c]`` → NCHW or NHWC with a
batch dim of 1 → the model input's dtype. ``mean``/``std`` are given in the model's channel order
(after the BGR swap). Target ``H, W, C`` and layout come from the model's input shape unless set.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from autoglm_compress.errors import CalibrationError, ConfigError
from autoglm_compress.inputs import InputSpec

__all__ = [
    "IMAGE_SUFFIXES",
    "ImagePreprocess",
    "ImageTarget",
    "list_images",
    "resolve_target",
    "load_image",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """How images become input tensors.

    ``size``: an int resizes the shorter side to it (aspect kept); ``(h, w)`` resizes exactly; None
    resizes the shorter side to ``max(H, W)`` of the crop. ``crop``: center crop ``(H, W)`` (an int
    for square); None takes the model's H, W. ``layout``/``grayscale``: None infers from the model.
    """

    size: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None = None
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str | None = None  # "NCHW" | "NHWC"
    channel_order: str = "RGB"  # "RGB" | "BGR"
    grayscale: bool | None = None

    def __post_init__(self):
        if self.layout not in (None, "NCHW", "NHWC"):
            raise ConfigError(f"image layout {self.layout!r}: use 'NCHW' or 'NHWC'")
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"channel order {self.channel_order!r}: use 'RGB' or 'BGR'")
        if any(float(s) == 0.0 for s in self.std):
            raise ConfigError(f"image std {self.std} holds a zero")
        for field in ("size", "crop"):
            v = getattr(self, field)
            if v is not None and any(int(d) <= 0 for d in _pair(v)):
                raise ConfigError(f"image {field} {v} must be positive")


@dataclasses.dataclass(frozen=True)
class ImageTarget:
    name: str
    layout: str
    channels: int
    height: int
    width: int
    dtype: str
    grayscale: bool


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def list_images(
    folder: Path, skip_invalid: bool = False, skipped: list[Path] | None = None
) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden entries ignored), sorted by relative path.

    A file with another suffix raises :class:`CalibrationError` naming it, or is skipped with a
    warning when ``skip_invalid``. No images at all raises ``empty calibration set``.
    """
    files = []
    for p in sorted(folder.rglob("*"), key=lambda q: q.relative_to(folder).as_posix()):
        rel = p.relative_to(folder)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            if not skip_invalid:
                raise CalibrationError(
                    f"{str(p)!r} in image folder {str(folder)!r} is not an image "
                    f"({', '.join(sorted(IMAGE_SUFFIXES))}); remove it"
                )
            logger.info("skipping non-image file %s", p)
            if skipped is not None:
                skipped.append(p)
            continue
        files.append(p)
    if not files:
        raise CalibrationError(f"empty calibration set: no images in folder {str(folder)!r}")
    return files


def _layout(spec: InputSpec, pre: ImagePreprocess) -> str:
    if pre.layout:
        return pre.layout
    if spec.shape[1] in (1, 3):
        return "NCHW"
    if spec.shape[3] in (1, 3):
        return "NHWC"
    raise CalibrationError(
        f"input {spec.name!r} shape {spec.shape}: cannot tell NCHW from NHWC; set the image layout"
    )


def _hw(spec: InputSpec, pre: ImagePreprocess, layout: str) -> tuple[int, int]:
    if pre.crop is not None:
        return _pair(pre.crop)
    h, w = spec.shape[2:4] if layout == "NCHW" else spec.shape[1:3]
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        return h, w
    if isinstance(pre.size, tuple):
        return _pair(pre.size)
    raise CalibrationError(
        f"input {spec.name!r} has symbolic height/width {spec.shape}; set the image crop size"
    )


def resolve_target(spec: InputSpec, pre: ImagePreprocess) -> ImageTarget:
    """Layout, channels and ``H x W`` for ``spec`` (rank 4), preferring what ``pre`` sets."""
    if len(spec.shape) != 4:
        raise CalibrationError(
            f"image data needs a 4-d image input; input {spec.name!r} has shape {spec.shape}"
        )
    layout = _layout(spec, pre)
    c = spec.shape[1] if layout == "NCHW" else spec.shape[3]
    c = c if isinstance(c, int) else (1 if pre.grayscale else 3)
    if c not in (1, 3):
        raise CalibrationError(f"input {spec.name!r} wants {c} channels; images give 1 or 3")
    if c == 1 and pre.grayscale is False:
        raise ConfigError(f"input {spec.name!r} wants 1 channel but grayscale=False was set")
    for v, what in ((pre.mean, "mean"), (pre.std, "std")):
        if len(v) not in (1, c):
            raise ConfigError(
                f"image {what} {v} has {len(v)} values; input {spec.name!r} has {c} channels"
            )
    h, w = _hw(spec, pre, layout)
    gray = c == 1 or bool(pre.grayscale)
    return ImageTarget(spec.name, layout, c, h, w, spec.dtype, gray)


def _resize(im, t: ImageTarget, pre: ImagePreprocess):
    from PIL import Image

    if isinstance(pre.size, tuple):
        h, w = _pair(pre.size)
    else:
        short = int(pre.size) if pre.size is not None else max(t.height, t.width)
        iw, ih = im.size
        h, w = (short, int(short * iw / ih)) if ih <= iw else (int(short * ih / iw), short)
    return im if im.size == (w, h) else im.resize((w, h), Image.BILINEAR)


def _center_crop(im, t: ImageTarget, path: Path):
    iw, ih = im.size
    if iw < t.width or ih < t.height:
        raise CalibrationError(
            f"image {str(path)!r} is {iw}x{ih} after resizing, smaller than the "
            f"{t.width}x{t.height} crop; set a larger resize"
        )
    left, top = int(round((iw - t.width) / 2.0)), int(round((ih - t.height) / 2.0))
    return im.crop((left, top, left + t.width, top + t.height))


def _decode(path: Path, gray: bool):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("L" if gray else "RGB")
    except Exception as e:  # noqa: BLE001 - any decode failure is the user's file
        raise CalibrationError(f"cannot read image {str(path)!r}: {e}") from None


def load_image(path: Path, t: ImageTarget, pre: ImagePreprocess) -> np.ndarray:
    """One preprocessed image as a ``[1, C, H, W]`` / ``[1, H, W, C]`` array of the input dtype."""
    im = _center_crop(_resize(_decode(path, t.grayscale), t, pre), t, path)
    a = np.asarray(im, dtype=np.float32)
    a = a[..., None] if a.ndim == 2 else a
    if t.channels == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if pre.channel_order == "BGR":
        a = a[..., ::-1]
    mean, std = np.asarray(pre.mean, np.float32), np.asarray(pre.std, np.float32)
    a = (a * np.float32(pre.scale) - mean) / std
    a = a.transpose(2, 0, 1) if t.layout == "NCHW" else a
    a = np.ascontiguousarray(a[None])
    dtype = np.dtype(t.dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(a), info.min, info.max).astype(dtype)
    return a.astype(dtype)

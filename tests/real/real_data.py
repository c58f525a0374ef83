"""Real (or realistic) input data for the real-model suite, built offline from bundled files.

- ``natural_images``: the photos bundled with scikit-image (``skimage.data``) and scikit-learn
  (``load_sample_images``), RGB uint8; grey images are replicated to three channels.
- ``natural_crops``: random crops (scale s ~ U(0.35, 1) of the short side, random aspect, random
  horizontal flip) resized to ``size``, then normalised per channel: ``(x/255 - mean) / std``
  (ImageNet mean/std by default). Calibration and evaluation crops come from disjoint images.
- ``imagenet_samples``: the 20 labelled ImageNet validation photos bundled in foolbox's wheel
  (``foolbox/data/imagenet_<i>_<label>.jpg``; the package is never imported), resized and
  normalised like ``natural_crops``: real top-1 accuracy, if only on 20 images.
- ``lfw_patches``: scikit-image's LFW subset (100 faces, 100 non-faces, 25×25 grey) resized and
  scaled the MTCNN way: ``(x - 127.5) / 128``; labels 1 = face.
- ``speech_like``: 16 kHz audio that looks like speech to a VAD: a glottal pulse train with a
  wandering pitch (f0 90–240 Hz) shaped by three formant resonators, a 4 Hz syllable envelope,
  pauses, and background noise.
- ``text_lines`` / ``text_on_photos``: text rendered with PIL (bundled fonts) onto white lines or
  onto photo crops, for the OCR models.
All generators take a seed and are deterministic.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_samples",
    "lfw_mosaics",
    "lfw_patches",
    "natural_crops",
    "natural_images",
    "speech_like",
    "text_lines",
    "text_on_photos",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SK_IMAGES = (
    "astronaut", "cat", "chelsea", "coffee", "rocket", "hubble_deep_field",
    "immunohistochemistry", "retina", "camera", "coins", "moon", "clock", "brick", "grass",
    "gravel", "horse", "page",
)  # fmt: skip
_EVAL_IMAGES = ("cat", "rocket", "coins", "grass", "china")
_WORDS = [
    "invoice",
    "total",
    "amount",
    "date",
    "name",
    "address",
    "phone",
    "street",
    "city",
    "order",
    "number",
    "paid",
    "due",
    "receipt",
    "station",
    "open",
    "close",
    "price",
    "model",
    "quantize",
    "tensor",
    "2024",
    "17.50",
    "No.42",
    "PO-1187",
]


@lru_cache(maxsize=1)
def natural_images() -> dict[str, np.ndarray]:
    """name → RGB uint8 image (H, W, 3) for every bundled photo that loads offline."""
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    out: dict[str, np.ndarray] = {}
    for name in _SK_IMAGES:
        try:
            img = np.asarray(getattr(skd, name)())
        except Exception as e:  # noqa: BLE001 - an image that needs a download is skipped
            logger.debug("skimage.data.%s unavailable: %s", name, e)
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        img = img.astype(np.uint8)
        out[name] = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    sample = load_sample_images()
    for fname, img in zip(sample.filenames, sample.images):
        out[fname.rsplit("/", 1)[-1].split(".")[0]] = np.asarray(img, dtype=np.uint8)
    return out


def _images(split: str) -> list[np.ndarray]:
    imgs = natural_images()
    keep = [k for k in imgs if (k in _EVAL_IMAGES) == (split == "eval")]
    return [imgs[k] for k in sorted(keep)]


def random_crop(img: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A random crop (scale, aspect, flip) of img resized to size = (H, W), as a PIL image."""
    h, w = img.shape[:2]
    side = min(h, w) * rng.uniform(0.35, 1.0)
    aspect = (size[1] / size[0]) * np.exp(rng.uniform(-0.2, 0.2))
    ch, cw = int(min(h, side)), int(min(w, side * aspect))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = img[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(crop)).resize((size[1], size[0]), Image.BILINEAR)


def natural_crops(
    n: int,
    size: int | tuple[int, int],
    *,
    split: str = "calib",
    seed: int = 0,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> np.ndarray:
    """float32 (n, 3, H, W): crops of the bundled photos, normalised (x/255 - mean) / std."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    rng = np.random.default_rng(seed + (1000 if split == "eval" else 0))
    imgs = _images(split)
    out = np.empty((n, 3, *hw), np.float32)
    for i in range(n):
        crop = np.asarray(random_crop(imgs[i % len(imgs)], hw, rng), np.float32) / 255.0
        out[i] = ((crop - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)
    return out


def imagenet_samples(
    size: int, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [20, 3, size, size], ImageNet class ids) from foolbox's bundled samples;
    ImportError when the foolbox wheel is not installed (requirements-real.txt)."""
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("foolbox")  # the top-level spec only: foolbox's __init__ is not run
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("foolbox (its bundled ImageNet samples) is not installed")
    files = sorted(Path(next(iter(spec.submodule_search_locations)), "data").glob("imagenet_*.jpg"))
    x = np.empty((len(files), 3, size, size), np.float32)
    for i, f in enumerate(files):
        img = Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)
        img = np.asarray(img, np.float32) / 255.0
        x[i] = ((img - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)
    labels = np.array([int(f.stem.rsplit("_", 1)[1]) for f in files], np.int64)
    return x, labels


def lfw_patches(size: int, *, split: str = "calib") -> tuple[np.ndarray, np.ndarray]:
    """(x, labels): LFW faces/non-faces at size×size, RGB, scaled (x - 127.5) / 128; 1 = face.

    Calibration takes the even-indexed images of both halves, evaluation the odd ones.
    """
    import skimage.data as skd

    grey = skd.lfw_subset()  # (200, 25, 25) float in [0, 1]; first 100 are faces
    idx = np.arange(0 if split == "calib" else 1, 200, 2)
    x = np.empty((len(idx), 3, size, size), np.float32)
    for j, i in enumerate(idx):
        img = Image.fromarray((grey[i] * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        x[j] = (np.asarray(img, np.float32)[None] - 127.5) / 128.0
    return x, (idx < 100).astype(np.int64)


def lfw_mosaics(n: int, *, split: str = "calib", grid: int = 4, patch: int = 12) -> np.ndarray:
    """(n, 3, grid·patch, grid·patch): grids of LFW faces and non-faces shrunk to patch×patch (the
    face size PNet detects at one pyramid scale), scaled (x - 127.5)/128, in a fixed shuffle."""
    x, _ = lfw_patches(patch, split=split)
    order = np.random.default_rng(0 if split == "calib" else 1).permutation(len(x))
    side = grid * patch
    out = np.empty((n, 3, side, side), np.float32)
    k = 0
    for i in range(n):
        for r in range(grid):
            for c in range(grid):
                tile = x[order[k % len(x)]]
                out[i, :, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = tile
                k += 1
    return out


def speech_like(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """float32 mono audio in [-1, 1]: voiced syllables (pitch + formants), pauses and noise."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 150 + 60 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) + 30 * rng.standard_normal()
    phase = 2 * np.pi * np.cumsum(f0) / sr
    source = np.sign(np.sin(phase)) * (np.sin(phase) ** 2) + 0.05 * rng.standard_normal(n)
    voice = np.zeros(n)
    for formant, bw in ((700, 130), (1220, 70), (2600, 160)):
        r = np.exp(-np.pi * bw / sr)
        theta = 2 * np.pi * formant / sr
        voice += lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], source)
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)), 0, None) ** 0.5
    talking = (np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 6)) > -0.3).astype(float)
    audio = voice * syllables * talking
    audio = 0.3 * audio / (np.abs(audio).max() + 1e-9) + 0.01 * rng.standard_normal(n)
    return np.clip(audio, -1, 1).astype(np.float32)


def _font(path: str | None, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)


def text_lines(
    texts: list[str], fonts: list[str | None], hw: tuple[int, int], seed: int = 0
) -> list[Image.Image]:
    """Dark text on a light, slightly noisy background, one line per image, size hw = (H, W)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, text in enumerate(texts):
        font = _font(fonts[i % len(fonts)], int(rng.integers(hw[0] * 5 // 10, hw[0] * 7 // 10)))
        bg = int(rng.integers(200, 256))
        canvas = Image.new("L", (hw[1] * 2, hw[0]), bg)
        draw = ImageDraw.Draw(canvas)
        draw.text((int(rng.integers(2, 12)), hw[0] // 2), text, fill=int(rng.integers(0, 70)),
                  font=font, anchor="lm")  # fmt: skip
        right = max(int(draw.textbbox((0, hw[0] // 2), text, font=font, anchor="lm")[2]) + 16, 64)
        line = canvas.crop((0, 0, min(right, canvas.width), hw[0])).resize((hw[1], hw[0]))
        noisy = np.asarray(line, np.float32) + rng.normal(0, 4, (hw[0], hw[1]))
        out.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return out


def random_words(n: int, seed: int = 0, k: tuple[int, int] = (2, 5)) -> list[str]:
    """n strings of k random words from a small document-like vocabulary."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, int(rng.integers(*k)))) for _ in range(n)]


def text_on_photos(n: int, hw: tuple[int, int], *, split: str = "calib", seed: int = 0):
    """n RGB uint8 arrays (H, W, 3): photo crops with 2–4 lines of text drawn on them."""
    rng = np.random.default_rng(seed + (1000 if split == "eval" else 0))
    imgs = _images(split)
    out = []
    for i in range(n):
        img = random_crop(imgs[i % len(imgs)], hw, rng)
        draw = ImageDraw.Draw(img)
        for text in random_words(int(rng.integers(2, 5)), seed=int(rng.integers(1 << 30))):
            font = _font(None, int(rng.integers(hw[0] // 14, hw[0] // 7)))
            xy = (int(rng.integers(0, hw[1] // 3)), int(rng.integers(0, hw[0] * 7 // 8)))
            dark = rng.random() < 0.5
            fill = tuple(int(v) for v in rng.integers(0, 60, 3) + (0 if dark else 195))
            draw.text(xy, text, fill=fill, font=font)
        out.append(np.asarray(img, np.uint8))
    return out

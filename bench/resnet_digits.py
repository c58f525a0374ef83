"""The wider ResNet-style CNN of the pruning bench: BasicBlock ResNet (widths 32/64/128, two blocks
per stage, 1×1 projection shortcuts where the shape changes, BN, ReLU, global average pool, FC) on
the digits upsampled to 32×32, trained with labels (seeded). Shared by bench/bench_prune.py (ours)
and bench/peers/tp_prune.py (torch-pruning) so both prune the same trained weights.

    x: float32 [N, 1, 32, 32] (the 8×8 digits, bilinear ×4, normalised as the demo's) → [N, 10].
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

__all__ = ["DigitsResNet", "resnet_data", "train_resnet"]


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class DigitsResNet(nn.Module):
    def __init__(self, widths=(32, 64, 128)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [_Block(cin, w, 1 if i == 0 else 2), _Block(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x):
        y = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def resnet_data() -> dict[str, np.ndarray]:
    """x_train, y_train, x_eval, y_eval at 32×32 (the demo's fixed split)."""
    from digits import load_digits_split

    x_tr, y_tr, _, x_ev, y_ev = load_digits_split()

    def up(x):
        t = nn.functional.interpolate(torch.from_numpy(x), scale_factor=4, mode="bilinear",
                                      align_corners=False)
        return np.ascontiguousarray(t.numpy(), np.float32)

    return {"x_train": up(x_tr), "y_train": y_tr, "x_eval": up(x_ev), "y_eval": y_ev}


def train_resnet(epochs: int = 4, seed: int = 0) -> tuple[DigitsResNet, float]:
    """(trained model in eval mode, held-out accuracy): Adam 2e-3 cosine, batch 64, light
    shift augmentation."""
    torch.manual_seed(seed)
    d = resnet_data()
    x, y = torch.from_numpy(d["x_train"]), torch.from_numpy(d["y_train"])
    model = DigitsResNet()
    steps = epochs * ((len(x) + 63) // 64)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
            xb = torch.roll(x[idx], shifts=(dx, dy), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(d["x_eval"])).argmax(1).numpy()
    return model, float((pred == d["y_eval"]).mean())

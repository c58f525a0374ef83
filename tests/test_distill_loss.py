"""Distillation losses: softened KL on class scores, cross-entropy on labels, and what the report says
(unit numbers against a hand computation; a short CLI run with labelled --train-data)."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from conftest import DEMO, ROOT

from autoglm_compress.cli import main
from autoglm_compress.runtime.train_loop import objective

RNG = np.random.default_rng(0)


def _targets(n=6, c=5):
    return [torch.tensor(RNG.normal(size=(n, 1, c)), dtype=torch.float32),
            torch.tensor(RNG.normal(size=(n, 3, 4)), dtype=torch.float32)]


def test_kl_on_scores_mse_on_the_rest():
    t = _targets()
    denom = [x.var() for x in t]
    s = [x + 0.3 * torch.randn_like(x) for x in t]
    idx = [0, 2, 5]
    f = objective(t, denom, "kl", 2.0, None, 0.5, "cpu")
    p_t = F.softmax(t[0][idx].reshape(3, -1) / 2, -1)
    log_p_s = F.log_softmax(s[0][idx].reshape(3, -1) / 2, -1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean() * 4
    mse = ((s[1][idx] - t[1][idx]) ** 2).mean() / denom[1]
    torch.testing.assert_close(f([s[0][idx], s[1][idx]], idx), kl + mse)
    assert f.name == "kl (T=2) on class scores"
    g = objective(t, denom, "mse", 2.0, None, 0.5, "cpu")
    assert g.name == "normalised mse"


def test_mse_channel_weighs_every_output_channel_alike():
    """--distill-loss mse-channel: a [N, 2, A] output whose row 0 is in hundreds (boxes) and row 1
    in 0…1 (scores) — the same relative error on either row costs the same, where one tensor
    variance lets row 1's error vanish."""
    from autoglm_compress.runtime.train_loop import output_variance

    t = torch.stack([torch.tensor(RNG.normal(0, 100, (6, 50))),
                     torch.tensor(RNG.uniform(0, 1, (6, 50)))], 1).float()[:, None]
    assert t.shape == (6, 1, 2, 50)  # [samples, the model's batch, channels, anchors]
    d = output_variance(t, True)
    assert d.shape == (1, 1, 2, 1)
    torch.testing.assert_close(d.reshape(-1), torch.stack([t[:, :, 0].var(), t[:, :, 1].var()]))
    idx = [0, 1, 2]
    err = {}
    for row in (0, 1):
        s = t[idx].clone()
        s[:, :, row] += 0.1 * t[:, :, row].std()  # the same error relative to the row's spread
        err[row] = {kind: float(objective([t], [output_variance(t, kind == "mse-channel")], kind,
                                           1.0, None, 0.5, "cpu")([s], idx))
                    for kind in ("mse", "mse-channel")}
    assert abs(err[0]["mse-channel"] - err[1]["mse-channel"]) < 1e-6
    assert err[1]["mse"] < 1e-4 * err[0]["mse"]
    assert objective([t], [d], "mse-channel", 1.0, None, 0.5, "cpu").name == \
        "normalised mse per channel"


def test_labels_add_cross_entropy():
    t = _targets()
    denom = [x.var() for x in t]
    labels = np.array([0, 1, 2, 3, 4, 0])
    s = [x.clone() for x in t]  # the student equals the teacher: only the CE term is left
    idx = [1, 3]
    f = objective(t, denom, "mse", 4.0, labels, 0.25, "cpu")
    ce = F.cross_entropy(s[0][idx].reshape(2, -1), torch.tensor(labels[idx]))
    torch.testing.assert_close(f([s[0][idx], s[1][idx]], idx), 0.25 * ce)
    assert f.name == "normalised mse + 0.25·cross-entropy on labels"


def test_cli_kl_with_labelled_train_data(tmp_path):
    """KL on softened scores + cross-entropy trains a weight-pruned student (l1, no
    compensation: a start far enough from the teacher for 60 steps to show)."""
    sys.path.insert(0, str(ROOT / "examples"))
    from digits import load_digits_split

    x, y = load_digits_split()[:2]
    train = tmp_path / "train.npz"
    np.savez(train, x=x[:256], labels=y[:256])
    out = tmp_path / "o"
    assert main([str(DEMO), "--prune", "0.5", "--distill-steps", "60", "--train-data", str(train),
                 "--distill-loss", "kl", "--distill-temperature", "3", "--target", "x86",
                 "--prune-importance", "l1", "--no-prune-compensate",
                 "--samples", "8", "-o", str(out)]) == 0
    rec = next(p for p in json.loads((out / "report.json").read_text())["passes"]
               if p["name"] == "distill")
    s = rec["stats"]
    assert s["loss"] == "kl (T=3) on class scores + 0.5·cross-entropy on labels"
    assert s["loss_after"] < 0.7 * s["loss_before"]


def test_lr_backs_off_when_the_heldout_loss_rises(tmp_path):
    """At an absurd lr (20× each tensor's RMS per step) the first held-out check is worse than
    the untrained student: training restarts at a 10× smaller lr, twice at most, and the weights
    kept are never worse on the held-out samples than the start."""
    sys.path.insert(0, str(ROOT / "examples"))
    from digits import load_digits_split

    train = tmp_path / "train.npz"
    np.savez(train, x=load_digits_split()[0][:128])
    out = tmp_path / "o"
    assert main([str(DEMO), "--prune", "0.5", "--distill-steps", "40", "--distill-lr", "20",
                 "--train-data", str(train), "--prune-importance", "l1",
                 "--no-prune-compensate", "--target", "x86", "--samples", "8",
                 "-o", str(out)]) == 0
    s = next(p for p in json.loads((out / "report.json").read_text())["passes"]
             if p["name"] == "distill")["stats"]
    assert s["lr_tried"][:2] == [20, 2.0] and s["lr"] == s["lr_tried"][-1]
    assert s["heldout_samples"] == 16
    assert s["heldout_loss_after"] <= s["heldout_loss_before"]
    # the curves: held-out loss every 40 // 10 steps of the last attempt, from the untrained
    # student; the weights kept are its lowest point. Batch loss at every step (40 < 50 points)
    curve = s["heldout_curve"]
    assert [x for x, _ in curve] == list(range(0, 41, 4))
    assert curve[0][1] == s["heldout_loss_before"]
    assert abs(min(y for _, y in curve) - s["heldout_loss_after"]) <= 1e-6
    assert [x for x, _ in s["loss_curve"]] == list(range(1, 41))
    assert (out / "report.html").read_text().count("<polyline") == 2  # drawn in one chart

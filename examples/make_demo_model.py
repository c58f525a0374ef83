"""Build the demo artifacts: a trained digits CNN (TorchScript) plus calibration and eval data.

Usage: ``python examples/make_demo_model.py [--force] [--epochs N] [--threads N]``

Writes, next to this script:

- ``digits_cnn.pt``: the CNN of ``digits.py`` trained on scikit-learn's ``load_digits``, traced with
  ``torch.jit.trace`` on a ``[1, 1, 8, 8]`` float32 input named ``x``;
- ``digits_calib.npz``: ``x``, 200 float32 ``[N, 1, 8, 8]`` training samples for calibration;
- ``digits_eval.npz``: ``x``, the 500 held-out samples, and ``labels`` (int64).

It does nothing when all three exist (pass ``--force`` to rebuild): the files are tracked in git,
and a fresh clone's checkout times say nothing about which is newer, so ``make demo`` must neither
retrain nor rewrite them. Training is seeded and deterministic for a given
thread count; it takes a couple of seconds on two CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODEL = HERE / "digits_cnn.pt"
CALIB = HERE / "digits_calib.npz"
EVAL = HERE / "digits_eval.npz"
OUTPUTS = (MODEL, CALIB, EVAL)
SOURCES = (Path(__file__).resolve(), HERE / "digits.py")


def up_to_date() -> bool:
    """True when every output exists (mtimes are not compared: see the module docstring)."""
    return all(p.is_file() for p in OUTPUTS)


def _atomic(path: Path, write) -> None:  # noqa: ANN001 - write(tmp_path) callback
    """Call ``write`` on a same-named file in a temporary folder beside ``path``, then move it.

    The file name is kept because ``torch.jit.save`` names the archive's root folder after it.
    """
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tmp-") as tmp:
        write(Path(tmp) / path.name)
        os.replace(Path(tmp) / path.name, path)


def saved_accuracy() -> float:
    """Accuracy of the saved TorchScript model on the saved eval set."""
    import numpy as np
    import torch

    data = np.load(EVAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.jit.load(str(MODEL), map_location="cpu")
    with torch.no_grad():
        pred = model(torch.from_numpy(data["x"])).argmax(1).numpy()
    return float((pred == data["labels"]).mean())


def build(epochs: int, threads: int) -> None:
    """Train, trace and write the three artifacts."""
    import numpy as np
    import torch
    from digits import load_digits_split, train_digits_cnn

    _, _, x_calib, x_eval, y_eval = load_digits_split(n_calib=200)
    result = train_digits_cnn(epochs, seed=0, num_threads=threads)
    print(
        f"trained {result.epochs} epochs in {result.seconds:.1f}s on {threads} thread(s); "
        f"eval accuracy {result.eval_accuracy:.4f} ({len(x_eval)} samples)"
    )
    example = torch.from_numpy(x_eval[:1].copy())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(result.model, (example,))
        _atomic(MODEL, lambda p: torch.jit.save(traced, str(p)))
    _atomic(CALIB, lambda p: np.savez(p, x=x_calib.astype(np.float32)))
    _atomic(
        EVAL, lambda p: np.savez(p, x=x_eval.astype(np.float32), labels=y_eval.astype(np.int64))
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if the outputs are fresh")
    ap.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training (default 2)")
    args = ap.parse_args(argv)

    if not args.force and up_to_date():
        print(f"up to date: {', '.join(p.name for p in OUTPUTS)} (use --force to rebuild)")
    else:
        start = time.perf_counter()
        build(args.epochs, args.threads)
        print(f"wrote {', '.join(p.name for p in OUTPUTS)} in {time.perf_counter() - start:.1f}s")
    acc = saved_accuracy()
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.0f} KiB" for p in OUTPUTS)
    print(f"eval accuracy of {MODEL.name}: {acc:.4f}  ({sizes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

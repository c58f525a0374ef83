"""What the benchmarks share: the usual command line (models, sample counts, work folder,
--write-results)."""

from __future__ import annotations

import argparse
from pathlib import Path


def bench_args(models: str, work: str, samples: int = 128, n_eval: int = 64, argv=None):
    """(parsed args, work folder created) for ``--models --samples --eval --work --write-results``."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=models)
    ap.add_argument("--samples", type=int, default=samples, help="calibration samples")
    ap.add_argument("--eval", type=int, default=n_eval, help="held-out samples")
    ap.add_argument("--work", default=work)
    ap.add_argument("--write-results", action="store_true")
    a = ap.parse_args(argv)
    path = Path(a.work)
    path.mkdir(parents=True, exist_ok=True)
    return a, path

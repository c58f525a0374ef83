"""Executor and calibration on CUDA vs CPU (issue: CUDA target, device-aware executor).

    python bench/bench_gpu_executor.py            # on a machine with a CUDA GPU

Times one calibration pass (entropy observers on every tensor) and 100 reference forward runs of the
zoo CNN and transformer on the CPU and on the GPU, in one process, and checks that the two devices'
outputs agree. TensorRT is probed and reported (engine latencies need the tensorrt package).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    import models

    from autoglm_compress import load
    from autoglm_compress.inputs import random_feeds
    from autoglm_compress.quantization.collect import collect_stats
    from autoglm_compress.runtime import TorchExecutor
    from autoglm_compress.targets.cuda.engine import tensorrt_available

    res = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "tensorrt": tensorrt_available(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("cnn", "transformer"):
            p = Path(tmp) / f"{name}.onnx"
            models.save_onnx(models.ZOO[name](), p)
            model = load(p)
            feeds = random_feeds(model, n=128, seed=0)
            row = {}
            outs = {}
            for dev in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
                ex = TorchExecutor(model, device=dev)
                ex.run(feeds[0])
                t0 = time.perf_counter()
                for f in feeds[:100]:
                    o = ex.run(f)
                if dev == "cuda":
                    torch.cuda.synchronize()
                fwd = (time.perf_counter() - t0) / 100 * 1e3
                outs[dev] = next(iter(o.values())).cpu().numpy()
                import os

                os.environ["AUTOGLM_DEVICE"] = dev
                t0 = time.perf_counter()
                collect_stats(model, feeds, "entropy")
                row[dev] = {
                    "forward_ms": round(fwd, 3),
                    "calibrate_128_s": round(time.perf_counter() - t0, 3),
                }
            if "cuda" in outs:
                row["max_abs_diff_cpu_vs_cuda"] = float(np.abs(outs["cpu"] - outs["cuda"]).max())
            res[name] = row
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

"""Several processes under ``torchrun``: who is who, and the process group distillation trains in.

``torchrun --nproc-per-node N autoglm-compress model.pt --prune 0.5 --distill-steps 1000 …`` starts N
copies of the same command with ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` set. Every process loads the
model and runs the graph passes (they are deterministic); the distill pass trains with
DistributedDataParallel (gloo on CPU, nccl on CUDA), each process computing its share of every batch;
then rank 0 alone goes on (calibration, lowering, emission, verification) and writes the artifacts,
and the other ranks leave without writing anything.
"""

from __future__ import annotations

import logging
import os

import torch

__all__ = ["rank", "world_size", "is_main", "process_group", "release"]

logger = logging.getLogger(__name__)


def world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0")) if world_size() > 1 else 0
    except ValueError:
        return 0


def is_main() -> bool:
    return rank() == 0


def process_group(device: torch.device) -> str | None:
    """Join (once) the process group torchrun describes; the backend's name, or None alone."""
    import torch.distributed as dist

    if world_size() < 2:
        return None
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        logger.info("process group: rank %d of %d (%s)", rank(), world_size(), backend)
    return dist.get_backend()


def release() -> None:
    """Wait for every rank, then leave the group (rank 0 goes on alone after training)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

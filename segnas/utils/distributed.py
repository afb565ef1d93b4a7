"""torch.distributed set-up for ``torchrun`` launches: one process per device, rank 0 writes files."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def init_from_environment() -> bool:
    """Join the process group that torchrun describes in the environment; ``False`` when not under torchrun.

    Backend: NCCL when CUDA is available, else gloo (what the CPU tests use).
    """
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def shutdown(succeeded: bool) -> None:
    """Leave the process group at the end of a command: after a barrier when the command succeeded (no rank
    tears down the group, or rank 0 its store, while another still uses it: a rank torn down mid-use aborts with
    "terminate called without an active exception"), at once when it failed (the others may never arrive)."""
    if dist.is_initialized():
        if succeeded:
            dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` on a single process)."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_dicts(part: dict) -> dict:
    """The union of every rank's ``part`` (each rank computed different keys), on every rank."""
    if not dist.is_initialized():
        return part
    parts: list[dict] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, part)
    merged: dict = {}
    for item in parts:
        merged.update(item)
    return merged

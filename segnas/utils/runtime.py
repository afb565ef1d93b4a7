"""Process-wide torch settings and device choice."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from segnas.errors import SegnasInputError


def configure_torch() -> None:
    """Flush denormal floats to zero on CPU: without it 3D convolution training can be tens of times slower."""
    torch.set_flush_denormal(True)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; under torchrun each process takes its ``LOCAL_RANK`` GPU."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu" if name == "auto" else name)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which job schedulers set), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: ``threads``, or the available cores shared among the torchrun processes of
    this machine (``LOCAL_WORLD_SIZE``). Returns the number set."""
    if threads is not None and threads < 1:
        raise SegnasInputError(f"must be at least 1, got {threads}", "--threads")
    count = threads or max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(count)
    return count


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

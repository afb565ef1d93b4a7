"""The one cost-measurement module: parameters, FLOPs, measured peak training memory, latency.

Memory is always *measured* over a few real training steps (forward, DiceCE backward, AdamW step):

* **CUDA**: the caching allocator's peak (``torch.cuda.max_memory_allocated``) over the steps, which holds
  weights, gradients, optimiser state, activations saved for backward and transient workspace.
* **CPU** (no allocator statistics): the largest, over the steps, of
  ``bytes of tensors saved for backward (distinct storages) + input batch + logits
  + parameters + gradients + optimiser state``, each read off the live tensors of the real step.
  It does not see short-lived temporaries freed inside one operator (convolution workspace, im2col
  buffers), allocator fragmentation, or the framework's own overhead, so it is a lower bound on the
  process's memory and a faithful *ranking* of architectures, not a prediction of a GPU's figure.

Every figure is taken in one execution mode, the one training and prediction use by default: ``amp`` (the
device's native reduced precision under ``torch.autocast``: bfloat16 on a CPU with AVX-512 BF16 or AMX, float16
on CUDA; see :func:`~segnas.utils.runtime.autocast_dtype`), or float32 with ``amp=False`` (``segnas cost
--no-amp``, as ``segnas train --no-amp``). So a budget means what training will see: on the 2-core machine a
float32 step of MONAI UNet 16..256 at ACDC's patch takes about twice the bfloat16 one. The mode is recorded in
the report (``precision``) and is part of the cache key.

Results are cached by (network, patch, batch, device, precision, torch version, :data:`METHOD_VERSION`) in a versioned
JSON file (``$SEGNAS_CACHE_DIR/cost_cache.json``, default ``~/.cache/segnas``; concurrent searches share it under
a file lock), so a search never measures an architecture twice, and a change to how memory is measured never
reuses a figure of the old method.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from filelock import FileLock
from monai.losses import DiceCELoss
from torch.utils.flop_counter import FlopCounterMode

from segnas.errors import SegnasInputError

from segnas.formats import FileFormat
from segnas.networks.registry import NetworkSpec
from segnas.utils.runtime import mixed_precision, precision_name

#: The version of the measuring method: raise it whenever a change alters any figure of a report, so that
#: cached figures of the old method are not reused (it is part of every cache key and entry).
METHOD_VERSION = 3  # 2: measured in the training's execution mode (amp by default); 3: step time after a warm-up
CACHE_FORMAT = FileFormat("segnas.cost-cache", 1, unversioned=0, what="cost cache")


@CACHE_FORMAT.upgrade(0)
def _entries_under_a_key(data: dict[str, Any]) -> dict[str, Any]:
    """Version 0 was a bare ``{key: report}``; its keys lack the method version, so no lookup finds them again."""
    return {"entries": data}


@dataclass
class CostReport:
    """Measured cost of training one network at one patch and batch size."""

    parameters: int
    flops_forward: float  # FLOPs of one forward pass of the batch
    memory_bytes: int  # peak training memory, see the module docstring for what it holds
    memory_method: str  # "cuda-allocator-peak" or "cpu-saved-tensors"
    latency_ms: float  # forward pass of the batch in inference mode, median of a few runs
    seconds_per_step: float  # one training step, median
    device: str
    patch_size: list[int]
    batch_size: int
    precision: str = "float32"  # the execution mode measured (see the module docstring); reports before 0.3: float32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_path() -> Path:
    return Path(os.environ.get("SEGNAS_CACHE_DIR", Path.home() / ".cache" / "segnas")) / "cost_cache.json"


def _cache_key(network: NetworkSpec, patch: Sequence[int], batch: int, device: torch.device, precision: str) -> str:
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    spec = network.to_dict()
    if "architecture" in spec:  # metadata (scores, cost) must not change the key
        spec["architecture"] = {k: v for k, v in spec["architecture"].items()
                                if k not in ("metadata", "format", "version", "written_by")}
    payload = json.dumps([spec, list(patch), batch, device_name, precision, torch.__version__, METHOD_VERSION],
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries; a damaged or foreign cache is only a cache: start an empty one."""
    try:
        return CACHE_FORMAT.read_json(path)["entries"] if path.is_file() else {}
    except SegnasInputError:
        return {}


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(_tensor_bytes(state.values()) for state in optimizer.state.values())


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _training_steps(model: nn.Module, image: torch.Tensor, label: torch.Tensor, steps: int,
                    amp: bool) -> tuple[int, float]:
    """Run real training steps as the trainer does (forward and loss under ``amp``'s autocast, backward and the
    optimiser step outside it): one warm-up step, then ``steps`` timed ones; return (peak bytes by the device's
    method, over all of them; median seconds of the timed steps). The warm-up's first-touch allocations and
    optimiser state made it up to 60% slower than the steady step on the 2 cores (MONAI UNet 16..256: 0.33 s
    against 0.20), which a median of three counting it raised by about 10%."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    params = list(model.parameters())
    cuda = image.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(image.device)
        torch.cuda.reset_peak_memory_stats(image.device)
    peak, times = 0, []
    for _ in range(steps + 1):
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
                mixed_precision(image.device, amp):
            logits = model(image)
            loss = loss_fn(logits, label)
        activations = sum(saved.values()) + _tensor_bytes([image, label, logits])
        loss.backward()
        grads = _tensor_bytes(p.grad for p in params)
        optimizer.step()
        if cuda:
            torch.cuda.synchronize(image.device)
        times.append(time.perf_counter() - start)
        peak = max(peak, activations + _tensor_bytes(params) + grads + _optimizer_state_bytes(optimizer))
    if cuda:
        peak = torch.cuda.max_memory_allocated(image.device)
    return peak, _median(times[1:])


def measure_cost(network: NetworkSpec, patch_size: Sequence[int], batch_size: int,
                 device: str | torch.device = "cpu", steps: int = 3, use_cache: bool = True,
                 model: nn.Module | None = None, amp: bool = True) -> CostReport:
    """Measure the cost of ``network`` (see :mod:`segnas.networks.registry`) in ``amp``'s execution mode (the
    module docstring says which).

    ``model`` may be given to measure an existing module (it is trained for ``steps`` steps on random
    data, so pass a copy you do not need). Cached unless ``use_cache=False``.
    """
    device = torch.device(device)
    precision = precision_name(device, amp)
    key = _cache_key(network, patch_size, batch_size, device, precision)
    cache_file = cache_path()
    cache = _read_cache(cache_file) if use_cache else {}
    if key in cache:
        return CostReport(**{k: v for k, v in cache[key].items() if k != "method_version"})
    model = (model if model is not None else network.build()).to(device)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch_size, network.in_channels, *patch_size, generator=generator).to(device)
    label = torch.randint(0, network.out_channels, (batch_size, 1, *patch_size), generator=generator)
    label = label.to(device)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(image)
    model.eval()
    latencies = []
    with torch.no_grad(), mixed_precision(device, amp):
        for _ in range(3):
            start = time.perf_counter()
            model(image)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            latencies.append((time.perf_counter() - start) * 1000)
    model.train()
    peak, seconds = _training_steps(model, image, label, steps, amp)
    report = CostReport(
        parameters=sum(p.numel() for p in model.parameters()), flops_forward=float(counter.get_total_flops()),
        memory_bytes=int(peak), memory_method="cuda-allocator-peak" if device.type == "cuda" else "cpu-saved-tensors",
        latency_ms=round(_median(latencies), 3), seconds_per_step=round(seconds, 4), device=str(device),
        patch_size=list(patch_size), batch_size=batch_size, precision=precision)
    if use_cache:
        store_in_cache(cache_file, key, {"method_version": METHOD_VERSION, **report.to_dict()})
    return report


def store_in_cache(cache_file: Path, key: str, entry: dict[str, Any]) -> None:
    """Add one entry to the cache file. Read-modify-write under a file lock (``filelock``: portable, and it
    frees the lock when a process dies), so that two searches sharing the cache never lose each other's entries;
    the write itself is atomic (a reader sees the old or the new file, never half of one)."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_file) + ".lock", timeout=600):
        cache = _read_cache(cache_file)
        cache[key] = entry
        CACHE_FORMAT.write_json(cache_file, {"entries": cache})

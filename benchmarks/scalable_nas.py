"""Scalable NAS on Hippocampus fold 0 (or another dataset's): the memory of stochastic sampling against the full
relaxation, the discretisation gap of both, and the derived U-Net of cells against MONAI's UNet and random
networks of the same space; then the transfer of searched cells between tasks (Kim et al.'s claim).

Parts (each resumes where it stopped; figures go to ``benchmarks/results/scalable_nas.json``, on another dataset
``scalable_nas_<dataset>.json``):

* ``memory``: one search step's measured peak memory and time (the cost module's method; CPU: saved tensors
  + weights, gradients and Adam state) for a drawn network (``gumbel``) and for the full relaxation (every
  candidate run, ``full``) of the same space and patch, at the cpu and paper profiles' spaces; and the
  derived-size network alone for reference.
* ``search``: ``segnas search --strategy scalable-nas`` with the cpu profile (its derived network is the one
  trained below); then sampling against the full relaxation, same (shorter) steps and seed: search wall-clock
  and the discretisation gap of each (foreground Dice of the search net as trained against that of the derived
  network inside it, inherited weights).
* ``train``: the sampled search's derived network, MONAI's UNet and 3 random networks of the space, each trained
  from scratch for the same steps with each seed: Dice, NSD, parameters, memory, step time.
* ``transfer --cells-from RESULTS``: the cells another task's search found (its results file's ``search``),
  put in this task's host and trained from scratch beside this task's own searched cells and MONAI's UNet, same
  steps, seeds and recipe (runs ``train`` recorded are reused); recorded under ``transfer from <dataset>``.
  Without ``--cells-from``: the derived cells and MONAI's UNet on segnas's synthetic generator at a harder
  setting (more noise, smaller objects), the stand-in measured before a second real task was at hand.

    python benchmarks/scalable_nas.py memory
    python benchmarks/scalable_nas.py search          # about 25 minutes on 2 cores
    python benchmarks/scalable_nas.py train --steps 300 --seeds 0 1
    python benchmarks/scalable_nas.py transfer --steps 300 --seeds 0 1

Between Hippocampus and ACDC (subjects grouped; ACDC trains as ``segnas train`` does by default, for its curve's
steps), each task's search first (``--searches search_gumbel``: the transfer needs the profile's search alone).
The train parts read the searched cells and the plan from the results file, so they run in a later session
than the search (a search recorded before results kept its architecture needs its work folder, or a new search):

    python benchmarks/scalable_nas.py search --searches search_gumbel --data ../shared/data/Task27_ACDC \\
        --group-by 'patient\\d+'
    python benchmarks/scalable_nas.py transfer --data ../shared/data/Task27_ACDC --group-by 'patient\\d+' \\
        --recipe defaults --steps 3000 --cells-from benchmarks/results/scalable_nas.json
    python benchmarks/scalable_nas.py transfer --steps 300 --cells-from benchmarks/results/scalable_nas_acdc.json
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (architecture_record, benchmark_parser, read_result, recorded_searches, result_path,  # noqa: E402
                    train_networks, write_result)

from segnas.api import search  # noqa: E402
from segnas.cost.measure import measure_cost  # noqa: E402
from segnas.data.dataset import load_dataset  # noqa: E402
from segnas.data.plan import Plan, make_plan  # noqa: E402
from segnas.data.synthetic import write_synthetic_dataset  # noqa: E402
from segnas.networks.registry import CellUNetSpec, MonaiUNetSpec, NetworkSpec, cell_unet_host  # noqa: E402
from segnas.spaces.cells import UNET_CELL_TYPES, CellArchitecture, random_genotype  # noqa: E402
from segnas.strategies.scalable_nas import PROFILES, SamplingSearchHook, ScalableSearchNetSpec  # noqa: E402

#: The search part's searches: the profile's sampled one (trained and transferred), and sampling against the full
#: relaxation at the same shorter length (the discretisation gap).
SEARCHES = ("search_gumbel", "gap_gumbel", "gap_full")


class SearchStep(nn.Module):
    """The search net run as one search step runs it: a fresh draw (or the full relaxation) per forward."""

    def __init__(self, net: nn.Module, hook: SamplingSearchHook):
        super().__init__()
        self.net, self.hook = net, hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, cells=self.hook.cells_kwargs(self.hook.warmup_steps, x.device))


def _measure_step(net_spec: ScalableSearchNetSpec, profile: Any, sampling: str, patch: list[int],
                  device: str = "cpu") -> dict[str, Any]:
    torch.manual_seed(0)
    hook = SamplingSearchHook(profile.space, 10, 0, sampling)
    report = measure_cost(net_spec, patch, profile.batch_size, device, use_cache=False,
                          model=SearchStep(net_spec.build(), hook))
    return {"memory_bytes": report.memory_bytes, "seconds_per_step": report.seconds_per_step,
            "flops_forward": report.flops_forward, "parameters": report.parameters}


def _put_result(queue: Any, function: Any, arguments: tuple) -> None:
    try:
        queue.put(function(*arguments))
    except torch.OutOfMemoryError as err:  # a GPU's allocator refused: recorded like the CPU's killed child
        queue.put({"failed": f"out of GPU memory ({str(err).splitlines()[0]})"})


def _in_child(function: Any, *arguments: Any) -> dict[str, Any]:
    """``function(*arguments)`` in a fresh (spawned: a forked child of a process that has run torch hangs in
    its OpenMP pool) process: a measurement the machine's memory cannot hold kills the child (the kernel's
    out-of-memory killer), not the benchmark, and is recorded as such."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_put_result, args=(queue, function, arguments))
    child.start()
    while child.is_alive() and queue.empty():
        child.join(timeout=1)
    if not queue.empty():
        result = queue.get()
        child.join()
        return result
    if child.exitcode != 0:
        gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return {"failed": f"the process was killed (exit {child.exitcode}): out of memory on this "
                          f"{gib:.0f} GiB machine" if child.exitcode == -9 else f"exit {child.exitcode}"}
    return {"failed": "the child ended without a result"}


def part_memory(args: Any, device: str = "cpu") -> dict[str, Any]:
    """Search-step memory of sampling and the full relaxation on ``device`` (CUDA: the allocator's peak)."""
    spec = load_dataset(args.data)
    plan = make_plan(spec, stride=8)  # a patch every profile's U-Net divides
    rows = {}
    for name in (["tiny"] if args.smoke else ["cpu", "paper"]):
        profile = PROFILES[name]
        net_spec = ScalableSearchNetSpec(plan.num_channels, plan.num_classes, profile.space, profile.channels,
                                         profile.levels)
        row: dict[str, Any] = {"space": profile.space.to_dict(), "channels": profile.channels,
                               "levels": profile.levels}
        for sampling in ("gumbel", "full"):
            row[sampling] = _in_child(_measure_step, net_spec, profile, sampling, plan.patch_size, device)
            print(f"{name} {sampling}: {row[sampling]}")
        host = cell_unet_host(plan.num_channels, plan.num_classes, profile.channels, profile.levels)
        derived = CellArchitecture(profile.space, host, {t: random_genotype(profile.space, np.random.default_rng(0))
                                                         for t in UNET_CELL_TYPES})
        alone = measure_cost(CellUNetSpec(plan.num_channels, plan.num_classes, derived), plan.patch_size,
                             profile.batch_size, device, use_cache=False)
        row["one_network_alone"] = {"memory_bytes": alone.memory_bytes, "parameters": alone.parameters,
                                    "seconds_per_step": alone.seconds_per_step}
        if "memory_bytes" in row["full"]:
            row["memory_ratio_full_over_gumbel"] = row["full"]["memory_bytes"] / row["gumbel"]["memory_bytes"]
            row["time_ratio_full_over_gumbel"] = row["full"]["seconds_per_step"] / row["gumbel"]["seconds_per_step"]
        rows[name] = row
    return {"patch_size": plan.patch_size, "profiles": rows, "device": device}


def _search(args: Any, name: str, options: dict[str, Any]) -> CellArchitecture:
    folder = args.work / name
    started = time.perf_counter()
    arch = search(args.data, folder, "scalable-nas", profile="tiny" if args.smoke else args.profile,
                  options=options, device="cpu", resume=(folder / "search.json").is_file(),
                  group_by=args.group_by)["cells"]
    meta = arch.metadata
    print(f"{name}: {meta['search_seconds']:.0f} s of search ({time.perf_counter() - started:.0f} s this call); "
          f"as trained {meta['score_as_trained']:.4f}, derived {meta['score_derived_inherited']:.4f}\n"
          f"{arch.summary()}")
    return arch


def part_search(args: Any, recorded: dict[str, Any], save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The profile's sampled search (its network is trained in ``train``), then sampling against the full
    relaxation with the same (shorter, ``--gap-steps``) length and seed: the full relaxation runs every candidate
    and is too slow on CPU for the profile's length. ``--searches`` picks some; each is saved as it ends, and one
    already ``recorded`` with the same profile and its architecture is not run again (on ACDC each search is an
    evening of its own); the other recorded rows of that profile stay in the record."""
    profile = "tiny" if args.smoke else args.profile
    same = recorded.get("profile") == profile
    rows = dict(recorded.get("searches", {})) if same else {}
    short = {"steps": 4 if args.smoke else args.gap_steps, "warmup_steps": 1 if args.smoke else args.gap_steps // 4}
    options = {"search_gumbel": {"sampling": "gumbel"}, "gap_gumbel": {"sampling": "gumbel", **short},
               "gap_full": {"sampling": "full", **short}}
    part: dict[str, Any] = {"searches": rows, "profile": profile, "dataset": load_dataset(args.data).name,
                            "plan": recorded.get("plan") if same else None}
    for name in args.searches:
        if "architecture" in rows.get(name, {}) and part["plan"] is not None:
            print(f"{name}: recorded, not searched again", flush=True)
            continue
        arch = _search(args, name, options[name])
        meta = arch.metadata
        rows[name] = {key: meta[key] for key in ("sampling", "steps", "search_seconds", "score_as_trained",
                                                 "score_derived_inherited", "discretisation_gap")}
        rows[name].update(cells=arch.summary(), genotype=arch.to_dict()["cells"],
                          architecture=architecture_record(arch), parameters=meta["cost"]["parameters"],
                          memory_bytes=meta["cost"]["memory_bytes"])
        part["plan"] = part["plan"] or Plan.load(args.work / name).to_dict()  # every search plans alike
        save(part)
    if "gap_full" in rows and "gap_gumbel" in rows:
        part["step_time_ratio_full_over_gumbel"] = (rows["gap_full"]["search_seconds"] /
                                                    rows["gap_gumbel"]["search_seconds"])
    return part


def _unet(in_channels: int, out_channels: int, levels: int) -> MonaiUNetSpec:
    """The hand-designed counterpart: MONAI's UNet (its default widths 16, 32, ... and 2 residual units) with as
    many levels as the U-Net of cells, so both take the same patch (the paper's 3D U-Net comparison)."""
    return MonaiUNetSpec(in_channels, out_channels, channels=tuple(16 * 2**level for level in range(levels)),
                         strides=(2,) * (levels - 1))


def _searched(args: Any, record: dict[str, Any]) -> tuple[CellArchitecture, Plan]:
    """The sampled search's derived cells and its plan (``record``: the search part's; training spans sessions,
    the work folder does not)."""
    architectures, plan = recorded_searches(record, ("search_gumbel",), args.work)
    return architectures["search_gumbel"], plan  # type: ignore[return-value]


def _networks(args: Any, record: dict[str, Any]) -> tuple[dict[str, NetworkSpec], Plan]:
    """The searched network, MONAI's UNet of as many levels and 3 random networks of the space, on the search's
    plan (``record``: the search part's)."""
    derived, plan = _searched(args, record)
    networks: dict[str, NetworkSpec] = {
        "searched": CellUNetSpec(plan.num_channels, plan.num_classes, derived),
        "monai-unet": _unet(plan.num_channels, plan.num_classes, derived.host["levels"])}
    for index in range(3):
        rng = np.random.default_rng(2024 + index)
        cells = {t: random_genotype(derived.space, rng) for t in UNET_CELL_TYPES}
        networks[f"random{index}"] = CellUNetSpec(plan.num_channels, plan.num_classes,
                                                  CellArchitecture(derived.space, derived.host, cells))
    return networks, plan


def part_train(args: Any, record: dict[str, Any], done: dict[str, Any],
               save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    networks, plan = _networks(args, record)
    return train_networks(args, networks, args.data, load_dataset(args.data), plan, args.work / "train", done=done,
                          save=save, recipe=args.recipe)


def part_transfer(args: Any, record: dict[str, Any], done: dict[str, Any],
                  save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Kim et al.'s transfer: another task's cells in this task's host, against this task's own cells and the
    UNet (``--cells-from``; ``done``: the recorded runs, ``train``'s included); without it, the synthetic
    stand-in. ``record``: this task's search part."""
    if args.cells_from is None:
        return _transfer_to_synthetic(args, record)
    source = read_result(args.cells_from)
    searched = source.get("search", {}).get("searches", {}).get("search_gumbel")
    if searched is None:
        raise SystemExit(f"--cells-from {args.cells_from}: no search recorded there (run its search part first)")
    networks, plan = _networks(args, record)
    own = networks["searched"].architecture
    if source["search"].get("profile") != ("tiny" if args.smoke else args.profile):
        raise SystemExit(f"--cells-from {args.cells_from}: searched with another profile's space")
    moved = CellArchitecture.from_dict({"space": own.space.to_dict(), "host": own.host, "cells": searched["genotype"]},
                                       args.cells_from)
    chosen = {"transferred": CellUNetSpec(plan.num_channels, plan.num_classes, moved),
              "searched": networks["searched"], "monai-unet": networks["monai-unet"]}
    trained = train_networks(args, chosen, args.data, load_dataset(args.data), plan, args.work / "transfer_real",
                             done=done, save=save, recipe=args.recipe)
    return {**trained, "cells_from": str(args.cells_from), "source_cells": moved.summary()}


def _transfer_key(args: Any) -> str:
    """Where a transfer's figures go in the results file: ``transfer`` (the synthetic stand-in) or
    ``transfer from <dataset>`` (a search recorded before searches named their dataset is Hippocampus's: the only
    task then)."""
    if args.cells_from is None:
        return "transfer"
    return f"transfer from {read_result(args.cells_from).get('search', {}).get('dataset', 'Hippocampus')}"


def _transfer_to_synthetic(args: Any, record: dict[str, Any]) -> dict[str, Any]:
    networks, _ = _networks(args, record)
    data = args.work / "synthetic_hard"
    if not (data / "dataset.json").is_file():
        write_synthetic_dataset(data, num_cases=8 if args.smoke else 40, shape=(48, 48, 48), seed=11, noise=0.8,
                                radius=(3, 6))
    spec = load_dataset(data)
    searched = networks["searched"]
    host = {**searched.architecture.host, "in_channels": 1, "out_channels": 3}
    transferred = CellUNetSpec(1, 3, CellArchitecture(searched.architecture.space, host,
                                                      searched.architecture.cells))
    plan = make_plan(spec, stride=2 ** (host["levels"] - 1))
    result = train_networks(args, {"searched": transferred, "monai-unet": _unet(1, 3, host["levels"])}, data, spec, plan,
                        args.work / "transfer")
    result["dataset"] = {"cases": len(spec.cases), "shape": [48, 48, 48], "noise": 0.8, "radius": [3, 6],
                         "patch_size": plan.patch_size}
    return result


def main() -> None:
    parser = benchmark_parser(__doc__, ["memory", "search", "train", "transfer"], "scalable_nas", subjects=True,
                              recipes=True)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=800, help="training steps of every network (800)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--gap-steps", type=int, default=160, help="steps of the sampled/full comparison (160)")
    parser.add_argument("--searches", nargs="+", choices=SEARCHES, default=list(SEARCHES),
                        help="search: run only these (default all three; the transfer needs search_gumbel alone)")
    parser.add_argument("--cells-from", type=Path,
                        help="transfer: another task's results file (scalable_nas.json): its searched cells")
    args = parser.parse_args()
    path = result_path(args, "scalable_nas")
    result = read_result(path) if path.is_file() else {}
    key = _transfer_key(args) if args.part == "transfer" else args.part

    def save(part: dict[str, Any]) -> None:  # after every run: the results file outlives the work folder
        write_result(path, {**result, key: part})

    if args.part in ("train", "transfer"):  # runs already recorded, of this part or of train, are not run again
        done = {**result.get("train", {}).get("networks", {}), **result.get(key, {}).get("networks", {})}
        result[key] = (part_train if args.part == "train" else part_transfer)(args, result.get("search", {}), done,
                                                                              save)
    elif args.part == "search":
        result[key] = part_search(args, result.get("search", {}), save)
    else:
        result[key] = part_memory(args)
    print(f"written {write_result(path, result)}")


if __name__ == "__main__":
    main()

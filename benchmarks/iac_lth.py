"""IAC-LTH on Hippocampus fold 0 (or another dataset's): the full IAC search against the stability-stopped
search, and the backbone alone against the backbone with its searched (and with random) implanted cells.

Parts (each resumes where it stopped; figures go to ``benchmarks/results/iac_lth.json``, on another dataset
``iac_lth_<dataset>.json``):

* ``search``: the full search (``--stopping full``: every epoch of the profile, IAC's fixed length; it trains
  the profile's backbone first) and the IAC-LTH search (``--stopping js``) on that same backbone. Reports
  epochs, search wall-clock and their ratio, the cells each derives, and the temporal analysis: the epoch from
  which each edge's final operation of the full search led, against the epoch IAC-LTH stopped
  (``iac_lth_lead.png``).
* ``train``: every network trained from scratch for the same steps with each seed: the backbone alone, the
  backbone with the full search's cells, with IAC-LTH's cells, and with cells of random operations (control);
  validation Dice and NSD by ``segnas predict`` + ``evaluate``, with parameters, measured memory and step time.

    python benchmarks/iac_lth.py search            # about 25 minutes on 2 cores (cpu profile)
    python benchmarks/iac_lth.py train --steps 1500 --seeds 0 1

On ACDC (the paper's own data): subjects grouped, and trained as ``segnas train`` trains by default for the
steps of the ACDC curve (every run is saved as it ends; a later call trains only what is missing). The search
part records both searches' cells and their plan, so ``train`` runs from the results file alone, in a later
session than the search (whose work folder is gone by then):

    python benchmarks/iac_lth.py search --data ../shared/data/Task27_ACDC --group-by 'patient\\d+'
    python benchmarks/iac_lth.py train --data ../shared/data/Task27_ACDC --group-by 'patient\\d+' \\
        --recipe defaults --steps 3000 --seeds 0 1
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (architecture_record, benchmark_parser, read_result, recorded_searches, result_path,  # noqa: E402
                    train_networks, write_result)

from segnas.api import open_search, search  # noqa: E402
from segnas.data.dataset import load_dataset  # noqa: E402
from segnas.data.plan import Plan  # noqa: E402
from segnas.networks.registry import SKIP_CELL, ImplantedNetworkSpec, network_from_dict  # noqa: E402
from segnas.spaces.cells import CellArchitecture, random_genotype  # noqa: E402
from segnas.strategies.iac_lth.plots import stability_figure  # noqa: E402

def _search(args: Any, name: str, options: dict[str, Any]) -> CellArchitecture:
    folder = args.work / name
    resume = (folder / "search.json").is_file()
    started = time.perf_counter()
    arch = search(args.data, folder, "iac-lth", profile="tiny" if args.smoke else args.profile, options=options,
                  device="cpu", resume=resume, group_by=args.group_by)["cells"]
    print(f"{name}: {arch.metadata['epochs']} epochs, {arch.metadata['search_seconds']:.0f} s of search "
          f"({time.perf_counter() - started:.0f} s this call)\n{arch.summary()}")
    return arch


def part_search(args: Any) -> dict[str, Any]:
    full = _search(args, "full", {"stopping": "full"})
    lth = _search(args, "lth", {"stopping": "js", "backbone": args.work / "full" / "backbone"})
    history = json.loads((args.work / "full" / "cells" / "stability.json").read_text())
    full_search = open_search(args.work / "full", "cpu", show_progress=False)
    space = full_search.profile.space
    lth_rule = json.loads((args.work / "lth" / "cells" / "stability.json").read_text())["rule"]
    stability_figure(space, history["history"], history["lead_epochs"], lth.metadata["epochs"],
                     result_path(args, "iac_lth_lead", ".png"),
                     lth_rule["threshold"] * history["history"][-1]["reference"])
    rows = {}
    for name, arch in (("full", full), ("lth", lth)):
        meta = arch.metadata
        rows[name] = {"epochs": meta["epochs"], "search_seconds": meta["search_seconds"],
                      "cells": arch.summary(), "genotype": arch.to_dict()["cells"], "lead_epochs": meta["lead_epochs"],
                      "architecture": architecture_record(arch),
                      "edges_decided": meta["edges_decided"], "val_dice_relaxed": meta["val_dice_relaxed"],
                      "parameters": meta["cost"]["parameters"], "host_parameters": meta["host_cost"]["parameters"],
                      "memory_bytes": meta["cost"]["memory_bytes"],
                      "host_memory_bytes": meta["host_cost"]["memory_bytes"],
                      "step_seconds": meta["cost"]["seconds_per_step"],
                      "host_step_seconds": meta["host_cost"]["seconds_per_step"]}
    same_ops = [a == b for a, b in zip(full.operations(), lth.operations())]
    return {"searches": rows, "epoch_ratio": full.metadata["epochs"] / lth.metadata["epochs"],
            "wall_clock_ratio": full.metadata["search_seconds"] / lth.metadata["search_seconds"],
            "same_genotype": full.cells == lth.cells, "kept_edges_with_the_same_operation": sum(same_ops),
            "kept_edges": len(same_ops), "backbone_val_dice": full.metadata["backbone_val_dice"],
            "profile": "tiny" if args.smoke else args.profile, "plan": full_search.ctx.plan.to_dict()}


def _searched(args: Any, record: dict[str, Any]) -> tuple[CellArchitecture, CellArchitecture, Plan]:
    """The full and the IAC-LTH search's cells and their plan (``record``: the search part's; the training of
    ACDC's networks spans sessions, and the work folder does not)."""
    architectures, plan = recorded_searches(record, ("full", "lth"), args.work)
    return architectures["full"], architectures["lth"], plan  # type: ignore[return-value]


def part_train(args: Any, searched: dict[str, Any], recorded: dict[str, Any],
               save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The backbone alone and with each search's cells (``searched``: the search part's record) and random cells,
    trained as the other strategy benchmarks train (``train_networks``: cheapest first, saved after every run,
    ``recorded`` runs of the same network, steps and recipe reused)."""
    full, lth, plan = _searched(args, searched)
    control = CellArchitecture(full.space, full.host, {SKIP_CELL: random_genotype(full.space,
                                                                                 np.random.default_rng(2024))})
    host = network_from_dict(full.host)
    networks = {"backbone": host, "full": ImplantedNetworkSpec(host.in_channels, host.out_channels, full),
                "lth": ImplantedNetworkSpec(host.in_channels, host.out_channels, lth),
                "random": ImplantedNetworkSpec(host.in_channels, host.out_channels, control)}
    trained = train_networks(args, networks, args.data, load_dataset(args.data), plan, args.work / "train", "cpu",
                             done=recorded.get("networks", {}), save=save, recipe=args.recipe)
    trained["networks"]["random"]["genotype"] = control.to_dict()["cells"]
    return trained


def main() -> None:
    parser = benchmark_parser(__doc__, ["search", "train"], "iac_lth", subjects=True, recipes=True)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=1500, help="training steps of every network (1500)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    path = result_path(args, "iac_lth")
    result = read_result(path) if path.is_file() else {}
    result.pop("rows", None)

    def save(part: dict[str, Any]) -> None:  # after every run: the results file outlives the work folder
        write_result(path, {**result, "train": part})

    result[args.part] = part_search(args) if args.part == "search" else \
        part_train(args, result.get("search", {}), result.get("train", {}), save)
    print(f"written {write_result(path, result)}")


if __name__ == "__main__":
    main()

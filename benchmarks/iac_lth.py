"""IAC-LTH on Hippocampus fold 0: the full IAC search against the stability-stopped search, and the backbone
alone against the backbone with its searched (and with random) implanted cells.

Parts (each resumes where it stopped; figures go to ``benchmarks/results/iac_lth.json``):

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
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, read_result, retrain_and_evaluate, write_result  # noqa: E402

from segnas.api import open_search, search  # noqa: E402
from segnas.cost.measure import measure_cost  # noqa: E402
from segnas.networks.registry import SKIP_CELL, ImplantedNetworkSpec, network_from_dict  # noqa: E402
from segnas.spaces.architecture import load_architecture  # noqa: E402
from segnas.spaces.cells import CellArchitecture, random_genotype  # noqa: E402
from segnas.strategies.iac_lth.plots import stability_figure  # noqa: E402

RESULT = "iac_lth.json"


def _search(args: Any, name: str, options: dict[str, Any]) -> CellArchitecture:
    folder = args.work / name
    resume = (folder / "search.json").is_file()
    started = time.perf_counter()
    arch = search(args.data, folder, "iac-lth", profile="tiny" if args.smoke else args.profile, options=options,
                  device="cpu", resume=resume)["cells"]
    print(f"{name}: {arch.metadata['epochs']} epochs, {arch.metadata['search_seconds']:.0f} s of search "
          f"({time.perf_counter() - started:.0f} s this call)\n{arch.summary()}")
    return arch


def part_search(args: Any) -> dict[str, Any]:
    full = _search(args, "full", {"stopping": "full"})
    lth = _search(args, "lth", {"stopping": "js", "backbone": args.work / "full" / "backbone"})
    history = json.loads((args.work / "full" / "cells" / "stability.json").read_text())
    space = open_search(args.work / "full", "cpu", show_progress=False).profile.space
    lth_rule = json.loads((args.work / "lth" / "cells" / "stability.json").read_text())["rule"]
    stability_figure(space, history["history"], history["lead_epochs"], lth.metadata["epochs"],
                     args.results / "iac_lth_lead.png", lth_rule["threshold"] * history["history"][-1]["reference"])
    rows = {}
    for name, arch in (("full", full), ("lth", lth)):
        meta = arch.metadata
        rows[name] = {"epochs": meta["epochs"], "search_seconds": meta["search_seconds"],
                      "cells": arch.summary(), "genotype": arch.to_dict()["cells"], "lead_epochs": meta["lead_epochs"],
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
            "profile": "tiny" if args.smoke else args.profile}


def part_train(args: Any) -> dict[str, Any]:
    full = load_architecture(args.work / "full" / "cells" / "arch.json")
    lth = load_architecture(args.work / "lth" / "cells" / "arch.json")
    control = CellArchitecture(full.space, full.host, {SKIP_CELL: random_genotype(full.space,
                                                                                 np.random.default_rng(2024))})
    search_folder = open_search(args.work / "full", "cpu", show_progress=False)
    ctx = search_folder.ctx
    host = network_from_dict(full.host)
    networks = {"backbone": host, "full": ImplantedNetworkSpec(host.in_channels, host.out_channels, full),
                "lth": ImplantedNetworkSpec(host.in_channels, host.out_channels, lth),
                "random": ImplantedNetworkSpec(host.in_channels, host.out_channels, control)}
    rows: dict[str, Any] = {}
    for name, network in networks.items():
        cost = measure_cost(network, ctx.plan.patch_size, 4, "cpu")
        runs = [retrain_and_evaluate(args.data, ctx.dataset, ctx.plan, network, args.work / "train" / f"{name}_{seed}",
                                     smoke=args.smoke, steps=args.steps, seed=seed) for seed in args.seeds]
        dice = [run["mean_dice"] for run in runs]
        rows[name] = {"runs": runs, "mean_dice": statistics.mean(dice),
                      "sd_dice": statistics.stdev(dice) if len(dice) > 1 else None,
                      "parameters": cost.parameters, "memory_bytes": cost.memory_bytes,
                      "step_seconds": cost.seconds_per_step}
        print(f"{name}: Dice {[round(d, 4) for d in dice]}, {cost.parameters:,} parameters, "
              f"{cost.memory_bytes / 2**20:.1f} MiB, {cost.seconds_per_step:.3f} s/step")
    rows["random"]["genotype"] = control.to_dict()["cells"]
    return {"networks": rows, "steps": args.steps, "seeds": args.seeds, "batch_size": 4}


def main() -> None:
    parser = benchmark_parser(__doc__, ["search", "train"], "iac_lth")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=1500, help="training steps of every network (1500)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    path = args.results / (RESULT if not args.smoke else "iac_lth_smoke.json")
    result = read_result(path) if path.is_file() else {}
    result[args.part] = part_search(args) if args.part == "search" else part_train(args)
    result.pop("rows", None)
    print(f"written {write_result(path, result)}")


if __name__ == "__main__":
    main()

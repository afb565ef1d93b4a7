"""Thrifty NAS on Hippocampus fold 0: the searched network at the paper's scale (0.6M parameters) against MONAI's
UNet and the hand-designed UNets of the same family at its size; three parameter budgets; and what each level of
the search contributes (the cell on the U-Net path, the path of a fixed cell, both).

Parts (each resumes where it stopped; figures go to ``benchmarks/results/thrifty.json``):

* ``search``: ``segnas search --strategy thrifty`` with the profile, three times with the same steps and seed:
  ``--search both`` (Thrifty NAS), ``micro`` (the cell on the U-Net path) and ``macro`` (the path of the fixed
  separable-convolution cell); each derives its network at every budget (the search is shared by the budgets, so
  each budget only fits widths). Search wall-clock, path, cell, and measured parameters and memory per budget.
* ``train``: every derived network at every budget, MONAI's UNet (4.8M) and the hand-designed family (MONAI's
  UNet at level-0 widths 4, 6 and 8: 0.3M to 1.2M), each trained from scratch for the same steps with each seed:
  Dice, NSD, parameters, memory, step time.

    python benchmarks/thrifty.py search                   # about an hour per search on 2 cores (cpu profile)
    python benchmarks/thrifty.py train --steps 1000 --seeds 0 1
    python benchmarks/thrifty.py search --device cuda     # the figures of docs/benchmarks.md: a lent H100
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, read_result, train_networks, write_result  # noqa: E402

from segnas.api import open_search, search  # noqa: E402
from segnas.data.plan import make_plan  # noqa: E402
from segnas.networks.registry import MonaiUNetSpec, NetworkSpec  # noqa: E402
from segnas.spaces.cells import CellArchitecture  # noqa: E402
from segnas.strategies.thrifty import CellPathSpec  # noqa: E402

SEARCHES = ("both", "micro", "macro")
BUDGETS = ("0.2Mparams", "0.6Mparams", "1.5Mparams")
#: The paper's scale, the budget compared with the hand-designed networks.
PAPER_BUDGET = "0.6Mparams"
#: Level-0 widths of the hand-designed family: MONAI's UNet (widths doubling over 5 levels, 2 residual units) made
#: narrower; 16 is MONAI's default (4.8M parameters).
HAND_WIDTHS = (4, 6, 8, 16)


def _options(args: Any, level: str) -> dict[str, Any]:
    options: dict[str, Any] = {"search": level}
    if args.steps_search:
        options.update(steps=args.steps_search, warmup_steps=args.steps_search // 3)
    if args.arch_lr:
        options.update(arch_lr=args.arch_lr)
    return options


def part_search(args: Any) -> dict[str, Any]:
    rows = {}
    budgets = ["3kparams", "6kparams"] if args.smoke else list(BUDGETS)
    for level in args.searches:
        folder = args.work / level
        started = time.perf_counter()
        archs = search(args.data, folder, "thrifty", budgets=budgets, profile="tiny" if args.smoke else args.profile,
                       options=_options(args, level), device=args.device, seed=args.seed,
                       resume=(folder / "search.json").is_file(), show_progress=True)
        first = next(iter(archs.values())).metadata
        rows[level] = {"search_seconds": first["search_seconds"], "call_seconds": time.perf_counter() - started,
                       "steps": first["steps"], "path": first["path"], "cell": next(iter(archs.values())).summary(),
                       "val_dice_relaxed": first["val_dice_relaxed"], "arch_lr": args.arch_lr,
                       "budgets": {}}
        for label, arch in archs.items():
            meta = arch.metadata
            rows[level]["budgets"][meta["budget"]["text"]] = {
                "widths": meta["widths"], "parameters": meta["cost"]["parameters"],
                "memory_bytes": meta["cost"]["memory_bytes"], "ratio": meta["budget"]["ratio"],
                "inside_window": meta["budget"]["inside_window"], "width_trials": meta["width_trials"]}
            print(f"{level} {label}: path {meta['path']}, widths {meta['widths']}, {meta['cost']['parameters']:,} "
                  f"parameters ({meta['budget']['ratio']:.1%}), {meta['cost']['memory_bytes'] / 2**20:.0f} MiB",
                  flush=True)
    return {"searches": rows, "profile": "tiny" if args.smoke else args.profile, "device": args.device,
            "seed": args.seed}


def _networks(args: Any) -> tuple[dict[str, NetworkSpec], Any]:
    """The derived networks of the searches that have run (each level's folder), and the hand-designed family."""
    levels = [level for level in SEARCHES if (args.work / level / "search.json").is_file()]
    if not levels:
        raise SystemExit(f"no search under {args.work}: run the search part first")
    ctx = open_search(args.work / levels[0], args.device, show_progress=False).ctx
    channels, classes = ctx.plan.num_channels, ctx.plan.num_classes
    networks: dict[str, NetworkSpec] = {}
    for level in levels:
        results = open_search(args.work / level, args.device, show_progress=False).ctx.folder.results()
        for label, arch in results.items():
            assert isinstance(arch, CellArchitecture)
            if level == "both" or arch.metadata["budget"]["text"] in (PAPER_BUDGET, "6kparams"):
                networks[f"thrifty-{level}/{label}"] = CellPathSpec(channels, classes, arch)
    for width in HAND_WIDTHS[:2] if args.smoke else HAND_WIDTHS:
        networks[f"monai-unet-{width}"] = MonaiUNetSpec(channels, classes,
                                                        channels=tuple(width * 2**level for level in range(5)))
    return networks, ctx


def part_train(args: Any, recorded: dict[str, Any], save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every network on one plan whose patch MONAI's UNet (stride 16) divides: the searched networks (stride 4)
    train on the same patches as the hand-designed ones. Seeds already in ``recorded`` are not trained again."""
    networks, ctx = _networks(args)
    if args.networks:
        networks = {name: networks[name] for name in args.networks}
    plan = make_plan(ctx.dataset, stride=16)
    result = train_networks(args, networks, args.data, ctx.dataset, plan, args.work / "train", args.device,
                            done=recorded.get("train", {}).get("networks"),
                            save=lambda part: save({**part, "patch_size": plan.patch_size}))
    return {**result, "patch_size": plan.patch_size}


def main() -> None:
    parser = benchmark_parser(__doc__, ["search", "train"], "thrifty")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="the searches' seed (0)")
    parser.add_argument("--steps-search", type=int, default=None, help="search steps (default: the profile's)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of every network (1000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--networks", nargs="+", help="train only these (names as the results list them)")
    parser.add_argument("--arch-lr", type=float, default=None,
                        help="search: the logits' learning rate (default: the profile's)")
    parser.add_argument("--tag", default=None,
                        help="a variant's name: its work folder and result file get it as a suffix")
    parser.add_argument("--searches", nargs="+", choices=SEARCHES, default=list(SEARCHES),
                        help="search: run only these levels (default all three)")
    args = parser.parse_args()
    if args.tag:
        args.work = args.work.with_name(f"{args.work.name}-{args.tag}")
    stem = "thrifty" + (f"-{args.tag}" if args.tag else "") + ("_smoke" if args.smoke else "")
    path = args.results / f"{stem}.json"
    result = read_result(path) if path.is_file() else {}
    recorded = {key: dict(value) for key, value in result.items() if isinstance(value, dict)}

    def store(part: dict[str, Any]) -> None:
        if args.part == "train" and args.networks:  # a subset adds to (or replaces) its networks' rows
            part = {**part, "networks": {**recorded.get("train", {}).get("networks", {}), **part["networks"]}}
        if args.part == "search":
            part = {**part, "searches": {**recorded.get("search", {}).get("searches", {}), **part["searches"]}}
        result[args.part] = part
        write_result(path, result)

    if args.part == "train":
        store(part_train(args, recorded, store))
    else:
        store(part_search(args))
    print(f"written {path}")


if __name__ == "__main__":
    main()

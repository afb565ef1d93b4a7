"""Does the search beat hand design? Hand-designed networks and every budgeted strategy's winners on Hippocampus
fold 0, each measured on one yardstick and trained from scratch with the same recipe, steps and seeds.

The yardstick: every network's cost is measured by the cost module at the patch of one plan that every network
takes (stride 16: 48x64x48 on Hippocampus) and batch 2 (the searches' batch); every search runs at that patch
(every strategy's profile takes it), so a budget means the same on both sides of the plot
and for every strategy, those whose papers budget parameters (Thrifty NAS, Scalable NAS) included: on a GPU or a
CPU it is training memory, not parameters, that decides what fits (docs/benchmarks.md).

Parts (each resumes; figures in ``benchmarks/results/pareto.json``, the plot in ``pareto.png``; on another
dataset ``pareto_<dataset>.json`` and ``.png``):

* ``measure``: the hand-designed family (MONAI UNet at 8..128, 16..256 and 32..512 channels with 2 residual
  units; DynUNet in nnU-Net's layout; the topology space's U-Net preset at the cpu profile's size), measured.
* ``curve``: the biggest UNet's validation Dice every ``--every`` steps up to ``--steps``: pick the step count of
  ``train`` from it (all networks converged).
* ``search``: each of ``--strategies`` at the same three memory budgets, log-spaced across the family's measured
  memory (those inside what the strategy reaches), so each budget has a hand-designed network under it.
* ``train``: every hand-designed network and every winner (DiNTS: both decodes) for ``--steps`` with each seed
  (batch 4, AdamW 3e-3, flips: the benchmarks' recipe; ``--recipe defaults``: ``segnas train``'s, as on ACDC),
  evaluated on the fold's validation cases.
* ``ablate``: the space ablation: the space's U-Net preset in the cpu profile's space and in variants of that
  space (one more scale; the light stem), measured and trained like ``train``: what the space allows apart from
  the search.
* ``table``: the table (mean and spread of Dice, each structure's Dice, NSD, cost, search time, which budget each
  fits) and the plot (both fronts over memory, parameters and the training step measured now on this machine; the
  budgets, the spread), and the goal: per budget, the best hand network that fits it against the
  budget's best winner and against the best searched network that fits it (the front), the differences against
  the seed-to-seed noise; and the half-memory line.

    python benchmarks/pareto.py measure
    python benchmarks/pareto.py curve --steps 3000 --every 250
    python benchmarks/pareto.py search --strategies hypersegnas dints thrifty scalable-nas
    python benchmarks/pareto.py search --strategies hypersegnas --profile cpu-light --window 0.5   # a wider window
    python benchmarks/pareto.py search --strategies hypersegnas --profile cpu-light --top-n 10 --budgets 110MiB
    python benchmarks/pareto.py search --strategies hypersegnas --profile cpu-light --finetune-steps 300  # cheaper
    python benchmarks/pareto.py search --strategies hypersegnas --profile cpu-light --finetune-steps 300 \\
        --supernet-steps 1200 --anneal-steps 300 --score-cases 16   # cheaper still: what issue 46's 1.5x needs
    python benchmarks/pareto.py search --strategies dints --budgets 110MiB --note "timing, AVX2"  # beside it, apart
    python benchmarks/pareto.py train --steps 2000 --seeds 0 1   # 2000: the curve's choice
    python benchmarks/pareto.py ablate --steps 2000 --seeds 0 1
    python benchmarks/pareto.py table
    python benchmarks/pareto.py measure --smoke   # (and so on) the tiny profiles on synthetic data: the script runs

On another dataset (results in ``pareto_<dataset>.json``), ``--group-by`` names its subjects and the plan is the
default one (per-axis pooling on thick slices; every hand-designed network and the preset take its strides);
``--recipe defaults`` trains the curve, ``train`` and ``ablate`` as ``segnas train`` does by default (batch 2,
full augmentation, mixed precision; runs of the other recipe are not reused) and ``--networks`` picks the curve's
network:

    python benchmarks/pareto.py measure --data ../shared/data/Task27_ACDC --group-by 'patient\\d+'
    python benchmarks/pareto.py curve --data ../shared/data/Task27_ACDC --group-by 'patient\\d+' \\
        --recipe defaults --networks monai-unet-16 --steps 4000 --every 500
    python benchmarks/pareto.py search --data ../shared/data/Task27_ACDC --group-by 'patient\\d+' --strategies dints
    python benchmarks/pareto.py train --data ../shared/data/Task27_ACDC --group-by 'patient\\d+' \\
        --recipe defaults --steps 3000 --seeds 0 1

Searches and runs of another dataset live under ``<work>/<dataset>`` (``benchmarks/work/pareto/acdc``).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (TRAIN_RECIPES, benchmark_parser, machine, read_result, result_path, train_networks,  # noqa: E402
                    write_result)

from segnas.api import prepare_search, train  # noqa: E402
from segnas.cost.budget import Budget, parse_budget  # noqa: E402
from segnas.cost.measure import measure_cost  # noqa: E402
from segnas.data.dataset import load_dataset  # noqa: E402
from segnas.data.plan import Plan, first_levels, make_plan  # noqa: E402
from segnas.data.synthetic import write_synthetic_dataset  # noqa: E402
from segnas.engine.run import read_run  # noqa: E402
from segnas.networks.registry import (DynUNetSpec, MonaiUNetSpec, NetworkSpec, TopologyNetworkSpec,  # noqa: E402
                                      cell_network)
from segnas.report.plots import pareto_figure  # noqa: E402
from segnas.spaces.architecture import (ARCHITECTURE_FORMAT, Architecture, architecture_from_dict,  # noqa: E402
                                        load_architecture)
from segnas.spaces.presets import unet_architecture  # noqa: E402
from segnas.spaces.topology import TopologySpace  # noqa: E402
from segnas.strategies.base import get_strategy  # noqa: E402

#: The batch of the yardstick (the searches' batch in their cpu profiles).
YARDSTICK_BATCH = 2
#: Where the three budgets sit in the log-range [smallest hand network, largest reachable].
BUDGET_POSITIONS = (1 / 6, 1 / 2, 5 / 6)
HAND_WIDTHS = (8, 16, 32)
SMOKE_WIDTHS = (2, 4)


def _plan(args: Any) -> tuple[Any, Plan]:
    spec = load_dataset(args.data)
    return spec, make_plan(spec, stride=16, show_progress=False, group_by=args.group_by)


def _hand_family(args: Any, plan: Plan) -> dict[str, NetworkSpec]:
    """MONAI UNet at three widths, DynUNet in nnU-Net's layout and the space's U-Net preset, each pooling as the
    plan does (on isotropic data every axis halved per level: the specs recorded before per-axis strides)."""
    channels, classes = plan.num_channels, plan.num_classes
    widths = SMOKE_WIDTHS if args.smoke else HAND_WIDTHS
    strides = first_levels(plan.pool_strides, len(MonaiUNetSpec.strides)) or MonaiUNetSpec.strides
    family: dict[str, NetworkSpec] = {
        f"monai-unet-{w}": MonaiUNetSpec(channels, classes, channels=tuple(w * 2**level for level in range(5)),
                                         strides=strides)
        for w in widths}
    family["dynunet"] = DynUNetSpec.for_plan(channels, classes, plan.patch_size, plan.target_spacing)
    space = _profile_space(args)
    family["unet-preset"] = _preset(replace(space, strides=first_levels(plan.pool_strides, space.levels)), plan)
    return family


def _profile_space(args: Any) -> TopologySpace:
    return get_strategy("hypersegnas").profiles["tiny" if args.smoke else "cpu"].space


def _preset(space: TopologySpace, plan: Plan) -> TopologyNetworkSpec:
    return TopologyNetworkSpec(plan.num_channels, plan.num_classes, unet_architecture(space), "mean")


def _space_variants(space: TopologySpace) -> dict[str, TopologySpace]:
    """The spaces of the capacity ablation: the profile's own; one with a scale more (channels double again,
    resolution halves again: what a U-Net's deeper levels add for little memory, with the blocks the U-Net preset
    needs to reach it); and each with the light stem (no features wider than the image at full resolution)."""
    deeper = replace(space, num_depths=space.num_depths + 1, num_blocks=max(space.num_blocks, 2 * space.num_depths))
    scales = f"{deeper.num_depths} scales"
    return {"unet-preset": space, f"unet-preset ({scales})": deeper,
            "unet-preset (light stem)": replace(space, stem="light"),
            f"unet-preset ({scales}, light stem)": replace(deeper, stem="light")}


def _largest_unet(args: Any) -> str:
    """The name of the widest MONAI UNet of the family (the curve's network, the goal's reference)."""
    return f"monai-unet-{(SMOKE_WIDTHS if args.smoke else HAND_WIDTHS)[-1]}"


def _cost(network: NetworkSpec, plan: Plan, device: str) -> dict[str, Any]:
    return measure_cost(network, plan.patch_size, YARDSTICK_BATCH, device).to_dict()


def part_measure(args: Any) -> dict[str, Any]:
    _, plan = _plan(args)
    rows = {}
    for name, network in _hand_family(args, plan).items():
        rows[name] = {"network": network.to_dict(), "cost": _cost(network, plan, args.device)}
        print(f"{name}: {rows[name]['cost']['parameters']:,} parameters, "
              f"{rows[name]['cost']['memory_bytes'] / 2**20:.0f} MiB", flush=True)
    return {"patch_size": plan.patch_size, "batch_size": YARDSTICK_BATCH, "device": args.device, **machine(),
            "networks": rows}


def part_curve(args: Any) -> dict[str, Any]:
    """The biggest UNet's validation Dice against steps; the suggested step count is the first within 0.005 of
    the best (later steps gain less than the seed noise)."""
    spec, plan = _plan(args)
    family = _hand_family(args, plan)
    name = args.networks[0] if args.networks else _largest_unet(args)
    if name not in family:
        raise SystemExit(f"--networks: the curve's network is one of {sorted(family)}, not {name!r}")
    network = family[name]
    steps, every = (4, 2) if args.smoke else (args.steps, args.every)
    folder = args.work / "curve" / name
    resume = (folder / "checkpoint_last.pt").is_file()
    recipe = TRAIN_RECIPES[args.recipe]
    train(args.data, network, folder, plan=plan, steps=steps, lr=3e-3, seed=0, device=args.device, resume=resume,
          force=not resume, val_every=every, checkpoint_every=every, augment=recipe["augment"], **recipe["config"])
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    curve = [(row["step"], row["val_dice"]) for row in log if "val_dice" in row]
    best = max(dice for _, dice in curve)
    suggested = next(step for step, dice in curve if dice >= best - 0.005)
    print(f"{name}: " + ", ".join(f"{step}: {dice:.3f}" for step, dice in curve) + f"; suggested {suggested} steps")
    return {"network": name, "curve": curve, "best": best, "suggested_steps": suggested, "recipe": args.recipe,
            "seconds": read_run(folder).get("train_seconds")}


def _budgets(family: dict[str, Any], reach: tuple[float, float], smoke: bool) -> list[Budget]:
    """The three memory budgets every strategy searches under: log-spaced across the hand-designed family's
    measured memory (from just above the smallest network's to the largest's), so each has a hand-designed network
    under it and a budget means the same for every strategy; with ``smoke``, across the tiny space's ``reach``."""
    costs = sorted(row["cost"]["memory_bytes"] for row in family.values())
    low, high = (reach[0] * 1.05, reach[1] * 0.95) if smoke else (costs[0] * 1.01, costs[-1])
    values = [math.exp(math.log(low) + p * (math.log(high) - math.log(low))) for p in BUDGET_POSITIONS]
    return [parse_budget(f"{int(v / 2**20)}MiB") for v in values]  # whole MiB: labels a reader can read


def part_search(args: Any) -> dict[str, Any]:
    """Every strategy at the family's three memory budgets (those inside what it reaches), searched at the
    yardstick's patch and batch; the winners are saved as each budget's search ends."""
    path = result_path(args, "pareto")
    result = read_result(path)
    measured = result.get("measure")
    if not measured:
        raise SystemExit("run the measure part first")
    recorded = result.get("search", {}).get("strategies", {})
    rows: dict[str, Any] = {}

    def save() -> None:
        write_result(path, {**result, "search": {"strategies": {**recorded, **rows}}})

    for name in args.strategies:
        key = name if args.profile == "cpu" else f"{name}@{args.profile}"  # both spaces' searches kept
        options, changed = _search_stage_settings(args)
        words = ", ".join(filter(None, (changed, args.note)))
        key += f" ({words})" if words else ""  # a search kept apart from the profile's own
        earlier = recorded.get(key) if not (args.rerun or args.smoke) else None
        if earlier and earlier.get("complete", True):  # winners are kept whole in the results file
            print(f"{key}: recorded, not searched again (--rerun searches again)", flush=True)
            rows[key] = earlier
            continue
        cls = get_strategy(name)
        folder = args.work / "search" / key
        resume = (folder / "search.json").is_file() and not args.smoke  # a smoke run checks the script: anew
        strategy = prepare_search(args.data, folder, cls("tiny" if args.smoke else args.profile, options),
                                  budgets=None, device=args.device, resume=resume, force=args.smoke,
                                  show_progress=True, patch=measured["patch_size"], group_by=args.group_by)
        reach = strategy.budget_range("memory")
        wanted = _budgets(measured["networks"], reach, args.smoke)
        budgets = [b for b in wanted if reach[0] <= b.value <= reach[1]]
        out_of_reach = [b.text for b in wanted if b not in budgets]
        if out_of_reach:
            print(f"{key}: budgets {out_of_reach} are outside the memory it reaches, "
                  f"[{reach[0] / 2**20:.0f}, {reach[1] / 2**20:.0f}] MiB", flush=True)
        searched_now = {b.label() for b in budgets if not args.budgets or b.text in args.budgets}
        winners = _winners_kept(None if args.smoke else recorded.get(key), args.rerun, searched_now)
        rows[key] = {"kind": "memory", "budgets": [b.text for b in budgets], "out_of_reach": out_of_reach,
                      "reach_bytes": list(reach), "winners": winners, "complete": False}
        for budget in budgets:  # one at a time, saved as each ends: a DiNTS budget is a search of its own
            if budget.label() in rows[key]["winners"]:  # recorded by a search stopped before its last budget
                continue
            if args.budgets and budget.text not in args.budgets:
                print(f"{key}: {budget.text} not searched (--budgets); the search stays incomplete", flush=True)
                continue
            for label, arch in strategy.run([budget]).items():
                entries = {"": folder / label / "arch.json"}
                if (folder / label / "arch_plain.json").is_file():
                    entries[" (plain decode)"] = folder / label / "arch_plain.json"
                for suffix, arch_path in entries.items():
                    rows[key]["winners"][label + suffix] = {
                        "arch": str(arch_path), "architecture": ARCHITECTURE_FORMAT.read_json(arch_path),
                        "search_seconds": _seconds(arch)}
            save()
        rows[key]["complete"] = all(b.label() in rows[key]["winners"] for b in budgets)
        shared = folder / "supernet" / "run.json"  # HyperSegNAS's one super-net, trained once for every budget
        if shared.is_file():
            rows[key]["supernet_seconds"] = read_run(shared.parent).get("train_seconds")
        save()
        print(f"{key}: budgets {rows[key]['budgets']} -> {sorted(rows[key]['winners'])}", flush=True)
    return {"strategies": {**recorded, **rows}}


def _search_stage_settings(args: Any) -> tuple[dict[str, Any] | None, str]:
    """HyperSegNAS's settings given on the command line (``--window``, ``--top-n``, ``--finetune-steps``,
    ``--score-cases``, ``--supernet-steps``, ``--anneal-steps``) as strategy options, and the words that name them
    in the results' key (``"window 50%, top 10"``; ``""`` for none)."""
    words = {"window": lambda value: f"window {value:.0%}", "top_n": lambda value: f"top {value}",
             "finetune_steps": lambda value: f"fine-tuning {value} steps",
             "score_cases": lambda value: f"scored on {value} cases",
             "supernet_steps": lambda value: f"super-net {value} steps",
             "anneal_steps": lambda value: f"annealing {value} steps"}
    options = {setting: getattr(args, setting) for setting in words if getattr(args, setting) is not None}
    return options or None, ", ".join(words[setting](value) for setting, value in options.items())


def _winners_kept(row: dict[str, Any] | None, rerun: bool, searched_now: set[str]) -> dict[str, Any]:
    """The recorded winners a search of a strategy starts from: every one of a search stopped before its last budget
    (it resumes), and on ``--rerun`` those of the budgets not in ``searched_now`` (budget labels: a rerun of one
    budget must not drop the others' winners, which their trained rows name)."""
    winners = (row or {}).get("winners", {})
    return {label: winner for label, winner in winners.items()
            if not rerun or _label_budget(label) not in searched_now}


def _label_budget(label: str) -> str:
    """The budget label of a winner's label (``"budget-251MiB (plain decode)"`` -> ``"budget-251MiB"``)."""
    return label.split(" ")[0]


def _seconds(arch: Architecture) -> float | None:
    value = arch.metadata.get("search_seconds")
    return float(sum(value.values())) if isinstance(value, dict) else value


def _searched_networks(result: dict[str, Any], plan: Plan) -> dict[str, NetworkSpec]:
    networks: dict[str, NetworkSpec] = {}
    for name, row in result.get("search", {}).get("strategies", {}).items():
        for label, winner in row["winners"].items():
            arch = architecture_from_dict(winner["architecture"], source=winner["arch"]) \
                if "architecture" in winner else load_architecture(winner["arch"])
            networks[f"{name}/{label}"] = (
                TopologyNetworkSpec(plan.num_channels, plan.num_classes, arch, "mean")
                if isinstance(arch, Architecture) else cell_network(arch, plan.num_channels, plan.num_classes))
    return networks


def part_train(args: Any) -> dict[str, Any]:
    spec, plan = _plan(args)
    result = read_result(result_path(args, "pareto"))
    networks = {**_hand_family(args, plan), **_searched_networks(result, plan)}
    if args.networks:
        unknown = sorted(set(args.networks) - set(networks))
        if unknown:
            raise SystemExit(f"--networks: {', '.join(unknown)} not among {', '.join(sorted(networks))}")
        networks = {name: networks[name] for name in args.networks}
    recorded = result.get("train", {}).get("networks", {})
    # Runs of the same network (by fingerprint) are reused under any name: the presets the ablation trained,
    # a search's winner that is a preset.
    done = {**result.get("ablate", {}).get("networks", {}), **recorded}
    path = result_path(args, "pareto")

    def merged(part: dict[str, Any]) -> dict[str, Any]:
        return {**part, "networks": {**recorded, **part["networks"]}}

    def save(part: dict[str, Any]) -> None:  # after every run: the results file outlives the work folder
        write_result(path, {**result, "train": merged(part)})

    return merged(train_networks(args, networks, args.data, spec, plan, args.work / "train", args.device,
                                 done=done, save=save, recipe=args.recipe))


def part_ablate(args: Any) -> dict[str, Any]:
    """The U-Net preset of each space variant, measured and trained as ``train`` trains (a variant already
    trained by ``train``, the profile's own preset, is reused by its fingerprint)."""
    spec, plan = _plan(args)
    path = result_path(args, "pareto")
    result = read_result(path) if path.is_file() else {}  # needs no other part
    spaces = _space_variants(_profile_space(args))
    networks = {name: _preset(space, plan) for name, space in spaces.items()}
    chosen = {name: networks[name] for name in args.networks or networks}
    recorded = {**result.get("train", {}).get("networks", {}), **result.get("ablate", {}).get("networks", {})}
    recorded = {name: row for name, row in recorded.items() if name in networks}  # every variant's, kept
    described = {name: {"space": space.to_dict(), "yardstick_cost": _cost(networks[name], plan, args.device)}
                 for name, space in spaces.items()}

    def part(trained: dict[str, Any]) -> dict[str, Any]:
        return {**trained, "networks": {**recorded, **trained["networks"]}, "spaces": described}

    def save(trained: dict[str, Any]) -> None:
        write_result(path, {**result, "ablate": part(trained)})

    return part(train_networks(args, chosen, args.data, spec, plan, args.work / "ablate", args.device,
                               done=recorded, save=save, recipe=args.recipe))


def part_table(args: Any) -> dict[str, Any]:
    _, plan = _plan(args)
    result = read_result(result_path(args, "pareto"))
    # The ablation's presets are hand-designed too: the best network that fits a budget may be one of them.
    trained = {**result.get("ablate", {}).get("networks", {}), **result.get("train", {}).get("networks", {})}
    search = result.get("search", {}).get("strategies", {})
    hand_family = {**_hand_family(args, plan),
                   **{name: _preset(space, plan) for name, space in _space_variants(_profile_space(args)).items()}}
    hand = set(hand_family)
    budgets = sorted({parse_budget(text) for row in search.values() for text in row["budgets"]}, key=lambda b: b.value)
    networks = {**hand_family, **_searched_networks(result, plan)}
    points = []
    for name, row in trained.items():
        if name not in networks or row.get("sd_dice") is None:
            continue
        cost = _cost(networks[name], plan, args.device)
        strategy = name.split("/")[0]
        label = name.split("/", 1)[1] if "/" in name else ""
        # The step time is the cost module's, measured now at the yardstick on this machine for every point: the
        # runs' own seconds come from whichever CPU trained them (an AMX and an AVX2 machine differ 2x).
        points.append({"name": name, "group": "hand-designed" if name in hand else "searched", "dice": row["mean_dice"],
                       "dice_sd": row["sd_dice"], "nsd": row["mean_nsd"], "per_structure": _per_structure(row["runs"]),
                       "memory_bytes": cost["memory_bytes"], "parameters": cost["parameters"],
                       "seconds_per_step": cost["seconds_per_step"], "runs": len(row["runs"]),
                       "search_seconds": search.get(strategy, {}).get("winners", {}).get(label, {})
                       .get("search_seconds")})
    noise = statistics.mean(p["dice_sd"] for p in points) if points else None
    verdicts = [verdict for budget in budgets if (verdict := _budget_verdict(points, budget, noise))]
    half_memory = _half_memory_goal(points, _largest_unet(args))
    pareto_figure(points, budgets, result_path(args, "pareto", ".png"))
    for p in sorted(points, key=lambda p: p["memory_bytes"]):
        structures = " / ".join(f"{dice:.3f}" for dice in p["per_structure"].values())
        print(f"| {p['name']} | {p['group']} | {p['dice']:.3f} ± {p['dice_sd']:.3f} | {structures} | {p['nsd']:.3f} | "
              f"{p['memory_bytes'] / 2**20:.0f} | {p['parameters']:,} | {p['seconds_per_step']:.2f} |")
    for verdict in verdicts:
        print(json.dumps(verdict))
    print(json.dumps(half_memory))
    return {"points": points, "noise": noise, "verdicts": verdicts, "half_memory": half_memory,
            "yardstick": {"patch_size": plan.patch_size, "batch_size": YARDSTICK_BATCH}}


def _per_structure(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each structure's Dice, the mean over the runs (``{"RV": 0.80, "MYO": 0.79, "LV": 0.87}`` on ACDC)."""
    return {label: statistics.mean(run["dice"][label]["dice"] for run in runs) for label in runs[0]["dice"]}


def _budget_verdict(points: list[dict[str, Any]], budget: Budget, noise: float | None) -> dict[str, Any] | None:
    """The goal's first half at one budget: the best hand-designed network that fits it against the best searched
    network that fits it, read two ways. ``searched``: the budget's own winners (``None`` while none is trained);
    ``front_searched``: every trained searched network that fits, whatever budget it was searched for (the fronts'
    reading, as the hand-designed side is read). ``None`` where no network of one side fits."""
    fits = [p for p in points if cost_of_point(p, budget) <= budget.value]
    handmade = [p for p in fits if p["group"] == "hand-designed"]
    front = [p for p in fits if p["group"] == "searched"]
    if not handmade or not front:
        return None
    best_hand = max(handmade, key=lambda p: p["dice"])
    verdict: dict[str, Any] = {"budget": budget.text, "hand": best_hand["name"], "hand_dice": best_hand["dice"],
                               "noise": noise}
    own = [p for p in front if _label(p["name"]) == budget.label()]
    for prefix, group in (("", own), ("front_", front)):
        keys = [f"{prefix}{key}" for key in ("searched", "searched_dice", "difference", "beats_by_more_than_noise")]
        if not group:
            verdict |= dict.fromkeys(keys)
            continue
        best = max(group, key=lambda p: p["dice"])
        difference = best["dice"] - best_hand["dice"]
        verdict |= dict(zip(keys, (best["name"], best["dice"], difference, difference > (noise or 0))))
    return verdict


def _half_memory_goal(points: list[dict[str, Any]], largest: str) -> dict[str, Any]:
    """The goal's second half: the least memory at which a searched network's mean Dice reaches the largest
    UNet's, against half that UNet's memory (``searched`` is ``None`` where none reaches it; ``trained`` is false
    while the UNet has no trained row)."""
    reference = next((p for p in points if p["name"] == largest), None)
    if reference is None:
        return {"largest": largest, "trained": False}
    half = reference["memory_bytes"] / 2
    searched = [p for p in points if p["group"] == "searched"]
    reaching = [p for p in searched if p["dice"] >= reference["dice"]]
    least = min(reaching, key=lambda p: p["memory_bytes"]) if reaching else None
    # By how much the goal is missed: the best searched network inside half the memory, against the UNet.
    inside = [p for p in searched if p["memory_bytes"] <= half]
    best_inside = max(inside, key=lambda p: p["dice"]) if inside else None
    return {"largest": largest, "trained": True, "largest_dice": reference["dice"], "half_memory_bytes": half,
            "searched": least["name"] if least else None,
            "searched_memory_bytes": least["memory_bytes"] if least else None,
            "best_inside_half": best_inside["name"] if best_inside else None,
            "difference_inside_half": best_inside["dice"] - reference["dice"] if best_inside else None,
            "met": bool(least and least["memory_bytes"] <= half)}


def _label(name: str) -> str:
    """The budget label of a searched point's name ("dints/budget-251MiB (plain decode)" -> "budget-251MiB")."""
    return _label_budget(name.split("/", 1)[1]) if "/" in name else ""


def cost_of_point(point: dict[str, Any], budget: Budget) -> float:
    return point["memory_bytes"] if budget.kind == "memory" else point["parameters"]


def main() -> None:
    parser = benchmark_parser(__doc__, ["measure", "curve", "search", "train", "ablate", "table"], "pareto",
                              subjects=True, recipes=True)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--strategies", nargs="+", default=["hypersegnas", "dints", "thrifty", "scalable-nas"])
    parser.add_argument("--steps", type=int, default=2000, help="training steps of every network (2000: the curve)")
    parser.add_argument("--every", type=int, default=250, help="curve: validation every N steps (250)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--networks", nargs="+", help="train, ablate: only these (names as the results list them)")
    parser.add_argument("--window", type=float,
                        help="search: HyperSegNAS's candidate window as a fraction of the budget (the profile's)")
    parser.add_argument("--top-n", type=int,
                        help="search: how many of HyperSegNAS's best-scored candidates are fine-tuned (the profile's)")
    parser.add_argument("--finetune-steps", type=int,
                        help="search: HyperSegNAS's fine-tuning steps per finalist (the profile's; `hypersegnas.py "
                             "selection` weighs them)")
    parser.add_argument("--score-cases", type=int,
                        help="search: HyperSegNAS's validation cases that score a candidate (the profile's: all)")
    parser.add_argument("--supernet-steps", type=int, help="search: HyperSegNAS's super-net steps (the profile's)")
    parser.add_argument("--anneal-steps", type=int, help="search: HyperSegNAS's annealing steps (the profile's)")
    parser.add_argument("--budgets", nargs="+", help="search: only these of the three budgets (e.g. 110MiB)")
    parser.add_argument("--rerun", action="store_true",
                        help="search: search again a strategy already recorded (with --budgets: only those budgets; "
                             "the others keep their recorded winners)")
    parser.add_argument("--note", help="search: record the search apart, under '<strategy> (NOTE)', e.g. a timing on "
                                       "another CPU that must not replace the recorded winners")
    args = parser.parse_args()
    if args.smoke:
        args.data = args.work / "data" / "Task99_Smoke"
        if not (args.data / "dataset.json").is_file():
            write_synthetic_dataset(args.data, num_cases=8, shape=(32, 32, 32))
    path = result_path(args, "pareto")
    result = read_result(path) if path.is_file() else {}
    parts = {"measure": part_measure, "curve": part_curve, "search": part_search, "train": part_train,
             "ablate": part_ablate, "table": part_table}
    result[args.part] = parts[args.part](args)
    print(f"written {write_result(path, result)}")


if __name__ == "__main__":
    main()

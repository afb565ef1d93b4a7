"""DiNTS benchmarks on Task04_Hippocampus fold 0, side by side with HyperSegNAS (HyperSegNAS paper Table 2 style).

    python benchmarks/dints.py step-time   # seconds per search step: segnas's DiNTS vs MONAI's DiNTS(TopologySearch)
    python benchmarks/dints.py search      # DiNTS under the HyperSegNAS benchmark's three budgets, winners retrained
    python benchmarks/dints.py table       # one comparison table (markdown) and the DSC-vs-memory plot
    python benchmarks/dints.py table --baselines benchmarks/results/foundation_10min.json
                                           # ... against baselines trained for the winners' minutes
    python benchmarks/dints.py step-time --smoke   # tiny settings, to check the script runs

``search`` needs ``results/hypersegnas_search*.json`` (its budgets); ``table`` needs every result file
(the decode timing comes from ``benchmarks/dints_decode.py``). Each part writes
``benchmarks/results/dints_<part>.json`` and prints its figures; ``search`` resumes from ``benchmarks/work/dints``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from common import RESULTS, benchmark_parser, read_result, retrain_and_evaluate, write_result
from monai.losses import DiceCELoss
from monai.networks.nets import DiNTS, TopologySearch

from segnas.api import prepare_search
from segnas.cost.budget import parse_budget
from segnas.cost.measure import measure_cost
from segnas.data.dataset import load_dataset
from segnas.data.plan import make_plan
from segnas.networks.monai_compat import load_into_monai
from segnas.networks.registry import MonaiUNetSpec, NetworkSpec, TopologyNetworkSpec
from segnas.networks.topology_net import TopologyNet
from segnas.report.plots import accuracy_memory_figure
from segnas.spaces.presets import unet_architecture
from segnas.spaces.topology import TopologySpace
from segnas.strategies.dints.search import TOPOLOGY_WEIGHT, DintsHook
from segnas.strategies.dints.strategy import DintsStrategy
from segnas.utils.runtime import configure_torch


# ----- seconds per search step ----------------------------------------------------------------------------------
def _set_trainable(parameters: list[torch.nn.Parameter], flag: bool) -> None:
    for parameter in parameters:
        parameter.requires_grad_(flag)


def _monai_step(model: DiNTS, space: TopologySearch, weights_opt: torch.optim.Optimizer,
                arch_opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, loss_fn: DiceCELoss,
                ram_factor: float) -> None:
    """One step of MONAI's DiNTS search after warm-up, as its tutorial runs it: an SGD update of the weights
    with the logits frozen, then an Adam update of the logits (weights frozen) with the entropy, memory and
    topology terms (ramp 1)."""
    weights = weights_opt.param_groups[0]["params"]
    logits = [space.log_alpha_a, space.log_alpha_c]
    _set_trainable(logits, False)
    weights_opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    weights_opt.step()
    _set_trainable(logits, True)
    _set_trainable(weights, False)
    arch_opt.zero_grad(set_to_none=True)
    task = loss_fn(model(x), y)
    probs_a, _ = space.get_prob_a(child=True)
    entropy_a = -(probs_a * torch.log(probs_a + 1e-5)).mean()
    entropy_c = -(F.softmax(space.log_alpha_c, -1) * F.log_softmax(space.log_alpha_c, -1)).mean()
    ram = torch.abs(ram_factor - space.get_ram_cost_usage(x.shape) / space.get_ram_cost_usage(x.shape, full=True))
    (task + entropy_a + entropy_c + ram + TOPOLOGY_WEIGHT * space.get_topology_entropy(probs_a)).backward()
    arch_opt.step()
    _set_trainable(weights, True)


def _segnas_step(model: TopologyNet, hook: DintsHook, weights_opt: torch.optim.Optimizer, x: torch.Tensor,
                 y: torch.Tensor) -> None:
    """The same step through segnas: the trainer's weight update with the relaxation held fixed, then the
    DiNTS hook's architecture update (data loading left out on both sides)."""
    weights_opt.zero_grad(set_to_none=True)
    hook.loss_fn(model(x, relaxation=hook.relaxation()), y).backward()
    weights_opt.step()
    hook.architecture_step(SimpleNamespace(model=model, device=x.device), hook.total_steps)


def step_time(args: argparse.Namespace) -> dict[str, Any]:
    """Median seconds per search step of both implementations, same space, weights, logits and input."""
    profile = DintsStrategy.profiles["tiny" if args.smoke else "cpu"]
    space = profile.space
    plan = make_plan(load_dataset(args.data), stride=space.total_stride, show_progress=False)
    patch = (32, 32, 32) if args.smoke else tuple(plan.patch_size)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(profile.batch_size, plan.num_channels, *patch, generator=generator)
    y = torch.randint(0, plan.num_classes, (profile.batch_size, 1, *patch), generator=generator)

    torch.manual_seed(0)
    ours = TopologyNet(space, plan.num_channels, plan.num_classes, merge="sum")
    hook = DintsHook(space, [{"image": x, "label": y}] * (profile.steps + 1), profile.warmup_steps, profile.steps,
                     0.5, tuple(x.shape), seed=0)
    monai_space = TopologySearch(channel_mul=space.channel_mul * space.base_channels / 32,
                                 num_blocks=space.num_blocks, num_depths=space.num_depths,
                                 use_downsample=space.stem_downsample)
    reference = DiNTS(monai_space, in_channels=plan.num_channels, num_classes=plan.num_classes,
                      use_downsample=space.stem_downsample)
    load_into_monai(ours, reference)
    with torch.no_grad():
        monai_space.log_alpha_a.copy_(hook.log_alpha_a)
        monai_space.log_alpha_c.copy_(hook.log_alpha_c)
    sgd = dict(lr=profile.lr, momentum=0.9, weight_decay=4e-5)
    adam = dict(lr=1e-3, betas=(0.5, 0.999), weight_decay=0.0)
    ours_opt = torch.optim.SGD(ours.parameters(), **sgd)
    monai_weights = [p for n, p in reference.named_parameters() if "log_alpha" not in n]
    monai_opt, monai_arch_opt = (torch.optim.SGD(monai_weights, **sgd),
                                 torch.optim.Adam([monai_space.log_alpha_a, monai_space.log_alpha_c], **adam))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    runs = {"segnas": lambda: _segnas_step(ours, hook, ours_opt, x, y),
            "monai": lambda: _monai_step(reference, monai_space, monai_opt, monai_arch_opt, x, y, loss_fn, 0.5)}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for name, run in runs.items():  # warm-up: first-call allocations and oneDNN kernel selection
        run()
    for _ in range(args.rounds):  # interleaved, so load on the shared machine hits both alike
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result = {"space": space.to_dict(), "patch": list(patch), "batch": profile.batch_size,
              "threads": torch.get_num_threads(), "seconds": seconds, "median_seconds": median,
              "monai_over_segnas": median["monai"] / median["segnas"]}
    print(f"seconds per search step: segnas {median['segnas']:.2f}, MONAI {median['monai']:.2f} "
          f"(MONAI / segnas = {result['monai_over_segnas']:.2f})")
    return result


# ----- three budgets ----------------------------------------------------------------------------------------------
def _hypersegnas_results(args: argparse.Namespace) -> dict[str, Any]:
    suffix = "_smoke" if args.smoke else ""
    for name in (f"hypersegnas_search{suffix}.json", f"hypersegnas_search_noretrain{suffix}.json"):
        if (args.results / name).is_file():
            return read_result(args.results / name)
    raise SystemExit(f"run `python benchmarks/hypersegnas.py search` first: no {args.results}/hypersegnas_search*.json")


def search_budgets(args: argparse.Namespace) -> dict[str, Any]:
    """DiNTS under each HyperSegNAS benchmark budget; the decoded winners retrained like HyperSegNAS's."""
    strategy = DintsStrategy("tiny" if args.smoke else "cpu")
    profile = strategy.profile
    out = args.work / profile.name
    budgets = [parse_budget(f"{int(row['budget_bytes'])}B") for row in _hypersegnas_results(args)["budgets"]]
    search = prepare_search(args.data, out, strategy, budgets, resume=(out / "search.json").is_file())
    rows = []
    for budget in budgets:
        start = time.perf_counter()
        factor, calibration = search.ram_factor_for(budget)
        arch = search.run_one(budget.label(), factor, {"budget": budget.text, "budget_value": budget.value,
                                                       "calibration": calibration})
        meta = arch.metadata
        row = {"budget": budget.text, "budget_bytes": budget.value, "ram_factor": factor,
               "estimated_mb": meta["estimated_memory_mb"], "measured_bytes": meta["cost"]["memory_bytes"],
               "inside_3_percent": budget.value * 0.97 <= meta["cost"]["memory_bytes"] <= budget.value,
               "search_seconds": meta["search_seconds"], "wall_seconds_this_run": time.perf_counter() - start,
               "val_dice_decoded": meta["val_dice_decoded"], "val_dice_relaxed": meta["val_dice_relaxed"],
               "active_edges": int(arch.edges.sum())}
        row.update(retrain_and_evaluate(args.data, search.ctx.dataset, search.ctx.plan, arch,
                                        out / budget.label() / "retrained", args.minutes, args.smoke))
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    return {"profile": profile.name, "steps": profile.steps, "warmup_steps": profile.warmup_steps,
            "budgets": rows, "retrain_minutes": args.minutes}


# ----- the comparison table and plot ------------------------------------------------------------------------------
def _baseline_memory(name: str, plan_patch: list[int], num_classes: int, batch: int) -> int:
    """Measured training memory of a foundation baseline at the searches' patch and batch (cost cache)."""
    if name == "monai-unet":
        network: NetworkSpec = MonaiUNetSpec(1, num_classes)
    else:
        network = TopologyNetworkSpec(1, num_classes, unet_architecture(TopologySpace()), "mean")
    return measure_cost(network, plan_patch, batch).memory_bytes


def table(args: argparse.Namespace) -> dict[str, Any]:
    """Table 2 of the HyperSegNAS paper, for this machine: both methods per budget, baselines, timings."""
    suffix = "_smoke" if args.smoke else ""
    read = {name: read_result(args.results / f"{name}{suffix}.json")
            for name in ("hypersegnas_search", "dints_search", "dints_step_time")}
    read["dints_decode"] = read_result(RESULTS / "dints_decode.json")["rows"]
    read["foundation"] = read_result(args.baselines)
    hyper, dints = read["hypersegnas_search"], read["dints_search"]
    minutes = {hyper["retrain_minutes"], dints["retrain_minutes"], read["foundation"]["minutes"]}
    if len(minutes) > 1 and not args.smoke:
        raise SystemExit(f"the winners and the baselines ({args.baselines}) were trained for different minutes: "
                         f"{sorted(minutes)}; train them alike (--minutes) so the DSC column compares like with like")
    hyper_seconds = hyper["seconds"]  # each budget's from its arch.json: true also when the search was resumed
    batch = read["dints_step_time"]["batch"]
    lines = ["| budget | method | estimated memory | measured memory | inside [b-3%, b] | DSC | NSD (1 mm) "
             "| search wall-clock |", "|---|---|---|---|---|---|---|---|"]
    points: dict[str, list[tuple[float, float]]] = {"HyperSegNAS": [], "DiNTS": []}
    mib = 2**20
    for h_row, d_row in zip(hyper["budgets"], dints["budgets"]):
        budget_mib = h_row["budget_bytes"] / mib
        search_seconds = hyper_seconds[f"search_{h_row['budget']}"]
        lines.append(f"| {budget_mib:.0f} MiB | HyperSegNAS | (measured) | {h_row['measured_bytes'] / mib:.0f} MiB "
                     f"| {'yes' if h_row['inside_3_percent'] else 'no'} | {h_row['mean_dice']:.3f} "
                     f"| {h_row['mean_nsd']:.3f} | {search_seconds / 60:.1f} min + shared super-net |")
        lines.append(f"| | DiNTS | {d_row['estimated_mb']:.0f} (DiNTS feature-map MB) | {d_row['measured_bytes'] / mib:.0f} MiB "
                     f"| {'yes' if d_row['inside_3_percent'] else 'no'} | {d_row['mean_dice']:.3f} "
                     f"| {d_row['mean_nsd']:.3f} | {d_row['search_seconds'] / 60:.1f} min |")
        points["HyperSegNAS"].append((h_row["measured_bytes"] / mib, h_row["mean_dice"]))
        points["DiNTS"].append((d_row["measured_bytes"] / mib, d_row["mean_dice"]))
    baselines = {}
    for name, record in read["foundation"]["networks"].items():
        num_classes = len(record["dice"]) + 1  # the foreground labels plus background
        memory = _baseline_memory(name, read["foundation"]["patch"], num_classes, batch) / mib
        baselines[name] = (memory, record["mean_dice"])
        lines.append(f"| - | {name} (hand-designed) | - | {memory:.0f} MiB | - | {record['mean_dice']:.3f} "
                     f"| {record['mean_nsd_1mm']:.3f} | - |")
    supernet = hyper_seconds["supernet_and_annealing"]
    dints_total = sum(r["search_seconds"] for r in dints["budgets"])
    hyper_total = supernet + sum(v for k, v in hyper_seconds.items() if k.startswith("search_"))
    step, decode = read["dints_step_time"], read["dints_decode"]
    summary = {
        "wall_clock_minutes": {"hypersegnas_supernet_plus_3_searches": hyper_total / 60,
                               "dints_3_searches": dints_total / 60},
        "seconds_per_search_step": step["median_seconds"], "monai_over_segnas_step": step["monai_over_segnas"],
        "decode": decode,
    }
    lines += ["", f"Wall-clock: HyperSegNAS super-net + annealing {supernet / 60:.1f} min, plus 3 searches = "
                  f"{hyper_total / 60:.1f} min; DiNTS 3 searches = {dints_total / 60:.1f} min.",
              f"Seconds per DiNTS search step ({step['batch']} x {step['patch']}): segnas "
              f"{step['median_seconds']['segnas']:.2f}, MONAI {step['median_seconds']['monai']:.2f}."]
    accuracy_memory_figure(points, baselines, args.results / "dints_vs_hypersegnas.png")
    markdown = "\n".join(lines)
    print(markdown)
    return {"markdown": markdown, "points": points, "baselines": baselines, **summary}


def main() -> None:
    parser = benchmark_parser(__doc__, ["step-time", "search", "table"], "dints")
    parser.add_argument("--rounds", type=int, default=5, help="step-time: timed steps per implementation (5)")
    parser.add_argument("--baselines", type=Path, default=RESULTS / "foundation.json",
                        help="table: the hand-designed baselines' results (benchmarks/foundation.py --results)")
    args = parser.parse_args()
    configure_torch()
    args.results.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.minutes, args.rounds = 0.05, 2
    part = args.part.replace("-", "_")
    result = {"step_time": step_time, "search": search_budgets, "table": table}[part](args)
    target = args.results / f"dints_{part}{'_smoke' if args.smoke else ''}.json"
    write_result(target, result)
    print(f"results: {target}")


if __name__ == "__main__":
    main()

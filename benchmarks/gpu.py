"""CUDA figures: what segnas measures and runs on a GPU, set against its CPU paths, on Hippocampus fold 0.

Parts (each merges its figures into ``benchmarks/results/gpu.json`` under its name and the device's):

* ``memory``: measured peak training memory (batch 2, the plan's patch, 3 AdamW steps) of a fixed set of
  networks of every kind segnas builds, by the cost module's method for ``--device``: CUDA's allocator peak, or
  the CPU substitute (saved tensors + weights, gradients, optimiser state). Run it with ``--device cuda`` on a
  GPU and ``--device cpu`` anywhere; ``table`` then sets them side by side (ratio, rank correlation).
* ``steps``: seconds per training step of a sampled architecture inside HyperSegNAS's super-net against the
  same architecture derived (the foundation benchmark's comparison, on the device), at the plan's patch and at
  the paper's 96^3; and Scalable NAS's search-step memory, sampling against the full relaxation.
* ``amp``: the trainer with and without automatic mixed precision (segnas's default on CUDA), 2 networks x 2
  seeds: seconds per step, allocator peak, validation Dice and NSD after the same steps.
* ``paper``: every strategy's ``paper`` profile (the paper's space, batch and patch) shortened to a few hundred
  steps, end to end through ``segnas.api``: wall-clock, and the architecture it derived with its measured cost.
* ``table``: the markdown tables of docs/benchmarks.md from the parts' figures.

    python benchmarks/gpu.py memory --device cpu      # here: about 3 minutes on 2 cores
    python benchmarks/gpu.py memory --device cuda     # on the GPU, then steps, amp, paper
    python benchmarks/gpu.py table
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy.stats import kendalltau, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, link_images, read_result, write_result  # noqa: E402
from foundation import supernet_vs_derived  # noqa: E402
from scalable_nas import part_memory as scalable_search_memory  # noqa: E402

from segnas.cost.budget import parse_budget  # noqa: E402
from segnas.cost.measure import measure_cost  # noqa: E402
from segnas.data.dataset import load_dataset  # noqa: E402
from segnas.data.plan import make_plan  # noqa: E402
from segnas.engine.evaluate import evaluate_folder  # noqa: E402
from segnas.engine.predict import predict_run  # noqa: E402
from segnas.engine.run import train_run  # noqa: E402
from segnas.engine.trainer import TrainConfig  # noqa: E402
from segnas.api import prepare_search  # noqa: E402
from segnas.networks.registry import (  # noqa: E402
    SKIP_CELL, CellUNetSpec, DynUNetSpec, ImplantedNetworkSpec, MonaiUNetSpec, NetworkSpec, TopologyNetworkSpec,
    cell_unet_host)
from segnas.spaces.cells import UNET_CELL_TYPES, CellArchitecture, random_genotype  # noqa: E402
from segnas.spaces.presets import unet_architecture  # noqa: E402
from segnas.spaces.sampler import ArchitectureSampler  # noqa: E402
from segnas.spaces.topology import TopologySpace  # noqa: E402
from segnas.strategies.base import get_strategy  # noqa: E402
from segnas.strategies.iac_lth import PROFILES as IAC_PROFILES  # noqa: E402
from segnas.strategies.scalable_nas import PROFILES as SCALABLE_PROFILES  # noqa: E402

RESULT = "gpu.json"
MIB = 2**20


def _networks(in_channels: int, out_channels: int, plan: Any) -> dict[str, NetworkSpec]:
    """One fixed set: hand-designed baselines, topology networks of HyperSegNAS's paper and cpu spaces and of
    DiNTS's, U-Nets of Scalable NAS cells and a UNet with IAC cells in its skips (random choices, fixed seeds)."""
    networks: dict[str, NetworkSpec] = {
        "monai-unet": MonaiUNetSpec(in_channels, out_channels),
        "dynunet": DynUNetSpec.for_plan(in_channels, out_channels, plan.patch_size, plan.target_spacing)}
    for space_name, space in (("hypersegnas-paper", TopologySpace()),
                              ("hypersegnas-cpu", TopologySpace(num_blocks=8, num_depths=3, channel_mul=0.25)),
                              ("dints-paper", TopologySpace.named("dints"))):
        networks[f"{space_name}/unet-path"] = TopologyNetworkSpec(in_channels, out_channels,
                                                                  unet_architecture(space), "mean")
        sampler = ArchitectureSampler(space, 0)
        for index in range(2):
            networks[f"{space_name}/random{index}"] = TopologyNetworkSpec(in_channels, out_channels,
                                                                          sampler.sample(), "mean")
    for name in ("cpu", "paper"):
        profile = SCALABLE_PROFILES[name]
        host = cell_unet_host(in_channels, out_channels, profile.channels, profile.levels)
        rng = np.random.default_rng(0)
        networks[f"scalable-{name}/random"] = CellUNetSpec(in_channels, out_channels, CellArchitecture(
            profile.space, host, {t: random_genotype(profile.space, rng) for t in UNET_CELL_TYPES}))
    profile = IAC_PROFILES["paper"]
    host = {**profile.host, "in_channels": in_channels, "out_channels": out_channels}
    networks["iac-paper/random-cells"] = ImplantedNetworkSpec(in_channels, out_channels, CellArchitecture(
        profile.space, host, {SKIP_CELL: random_genotype(profile.space, np.random.default_rng(0))}))
    return networks


def _plan(args: Any) -> tuple[Any, Any]:
    spec = load_dataset(args.data)
    return spec, make_plan(spec, stride=16)  # a patch every network above divides


def part_memory(args: Any) -> dict[str, Any]:
    _, plan = _plan(args)
    rows = {}
    networks = _networks(plan.num_channels, plan.num_classes, plan)
    for name, network in networks.items():
        if args.smoke and name not in ("monai-unet", "hypersegnas-cpu/random0", "scalable-cpu/random"):
            continue
        report = measure_cost(network, plan.patch_size, 2, args.device, use_cache=False)
        rows[name] = {"parameters": report.parameters, "memory_bytes": report.memory_bytes,
                      "memory_method": report.memory_method, "seconds_per_step": report.seconds_per_step,
                      "latency_ms": report.latency_ms, "flops_forward": report.flops_forward}
        print(f"{name}: {report.memory_bytes / MIB:.1f} MiB ({report.memory_method}), "
              f"{report.seconds_per_step:.4f} s/step", flush=True)
    return {"patch_size": plan.patch_size, "batch_size": 2, "networks": rows}


def part_steps(args: Any) -> dict[str, Any]:
    _, plan = _plan(args)
    result: dict[str, Any] = {"supernet_vs_derived": [
        supernet_vs_derived(patch, 2, 10, device=args.device)
        for patch in ([plan.patch_size] if args.smoke else [plan.patch_size, [96, 96, 96]])]}
    for row in result["supernet_vs_derived"]:
        print(f"super-net vs derived at {row['patch']}: {row['supernet_s_per_step']:.4f} vs "
              f"{row['derived_s_per_step']:.4f} s/step ({row['ratio']:.2f}x)", flush=True)
    result["scalable_search_step"] = scalable_search_memory(args, args.device)
    return result


def _peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _train_and_score(args: Any, spec: Any, plan: Any, network: NetworkSpec, run_dir: Path, amp: bool,
                     seed: int) -> dict[str, Any]:
    """Train from scratch (batch 4, AdamW 3e-3, flips: the benchmarks' recipe) on the device, predict the fold's
    validation cases there, score Dice and NSD."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    config = TrainConfig(max_steps=args.steps, batch_size=4, lr=3e-3, checkpoint_every=10**6, seed=seed, amp=amp,
                         workers=args.workers)
    record = train_run(args.data, plan, network, run_dir, 0, config, force=True, device=args.device,
                       augment="flips", spec=spec, show_progress=False)
    peak = _peak_bytes(device)
    images = link_images(spec, plan.fold(0)["val"], run_dir / "val_images")
    predict_run(run_dir, images, run_dir / "predictions", force=True, device=args.device, tta="none",
                show_progress=False)  # one pass, as the CPU figures it is set beside
    summary = evaluate_folder(run_dir / "predictions", args.data / "labelsTr", run_dir / "predictions",
                              {k: v for k, v in plan.labels.items() if k}, show_progress=False)
    return {"seconds_per_step": record["seconds_per_step"], "train_seconds": record.get("train_seconds"),
            "peak_memory_bytes": peak, "mean_dice": summary["mean"]["dice"], "mean_nsd": summary["mean"]["nsd"]}


def part_amp(args: Any) -> dict[str, Any]:
    spec, plan = _plan(args)
    networks = {"monai-unet": MonaiUNetSpec(plan.num_channels, plan.num_classes),
                "hypersegnas-paper/unet-path": TopologyNetworkSpec(plan.num_channels, plan.num_classes,
                                                                   unet_architecture(TopologySpace()), "mean")}
    rows: dict[str, Any] = {}
    for name, network in networks.items():
        for amp in (False, True):
            key = f"{name}/{'amp' if amp else 'fp32'}"
            runs = [_train_and_score(args, spec, plan, network, args.work / "amp" / f"{key}_{seed}", amp, seed)
                    for seed in args.seeds]
            rows[key] = {"runs": runs, **{f"mean_{k}": statistics.mean(r[k] for r in runs)
                                          for k in ("seconds_per_step", "mean_dice", "mean_nsd")}}
            print(f"{key}: Dice {[round(r['mean_dice'], 4) for r in runs]}, "
                  f"{rows[key]['mean_seconds_per_step']:.4f} s/step, peak "
                  f"{[r['peak_memory_bytes'] and round(r['peak_memory_bytes'] / MIB) for r in runs]} MiB", flush=True)
    return {"steps": args.steps, "seeds": args.seeds, "batch_size": 4, "patch_size": plan.patch_size,
            "networks": rows}


def _paper_search(args: Any, name: str, overrides: dict[str, Any], budget_kind: str | None,
                  options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``name``'s paper profile with ``overrides`` (its length), searched end to end on the device; a budget of
    ``budget_kind`` at the middle of the reachable range the strategy measures."""
    strategy_class = get_strategy(name)
    profile = strategy_class.profiles["tiny"] if args.smoke else strategy_class.profiles["paper"].replaced(overrides)
    started = time.perf_counter()
    strategy = prepare_search(args.data, args.work / "paper" / name, strategy_class(profile, options), None,
                              device=args.device, force=True, show_progress=False)
    budgets = []
    if budget_kind:
        low, high = strategy.budget_range(budget_kind)
        budgets = [parse_budget(f"{(low + high) / 2:.0f}B" if budget_kind == "memory" else
                                f"{(low + high) / 2 / 1e6:.3f}Mparams")]
        strategy.check_budgets(budgets)
    winners = strategy.run(budgets)
    seconds = time.perf_counter() - started
    label, arch = next(iter(winners.items()))
    cost = arch.metadata.get("cost", {})
    # No search-wide allocator peak: the cost module resets the peak statistics for each network it measures.
    row = {"overrides": overrides, "seconds": round(seconds, 1), "budget": budgets[0].text if budgets else None, "label": label,
           "derived_memory_bytes": cost.get("memory_bytes"), "derived_parameters": cost.get("parameters"),
           "patch_size": strategy.ctx.plan.patch_size, "batch_size": profile.batch_size}
    print(f"{name} paper profile {overrides}: {seconds:.0f} s; {label}: {cost}", flush=True)
    return row


PAPER_RUNS: dict[str, tuple[dict[str, Any], str | None, dict[str, Any] | None]] = {
    "dints": ({"steps": 100, "warmup_steps": 50, "val_every": 50}, None, {"ram_factor": [0.5]}),
    "scalable-nas": ({"steps": 200, "warmup_steps": 50}, None, None),
    "iac-lth": ({"backbone_steps": 200, "epochs": 3, "steps_per_epoch": 40, "warmup_epochs": 1}, None, None),
    "hypersegnas": ({"supernet_steps": 100, "anneal_steps": 20, "candidates": 8, "top_n": 1,
                     "finetune_steps": 20}, "memory", None),
}


def part_paper(args: Any) -> dict[str, Any]:
    rows = {}
    for name in args.strategies:
        overrides, budget_kind, options = PAPER_RUNS[name]
        try:
            rows[name] = _paper_search(args, name, overrides, budget_kind, options)
        except Exception as err:  # one strategy's failure is a finding; the others still run
            rows[name] = {"failed": f"{type(err).__name__}: {err}"}
            print(f"{name}: failed: {rows[name]['failed']}", flush=True)
    return {"strategies": rows}


def _memory_table(results: dict[str, Any]) -> str:
    cpu, cuda = results["memory"]["cpu"]["networks"], results["memory"]["cuda"]["networks"]
    names = [n for n in cuda if n in cpu]
    lines = ["| network | parameters | CPU substitute (MiB) | CUDA allocator peak (MiB) | CUDA / CPU | "
             "s/step CPU (2 cores) | s/step CUDA |", "|---|---|---|---|---|---|---|"]
    for name in names:
        a, b = cpu[name], cuda[name]
        lines.append(f"| {name} | {a['parameters']:,} | {a['memory_bytes'] / MIB:.0f} | {b['memory_bytes'] / MIB:.0f} "
                     f"| {b['memory_bytes'] / a['memory_bytes']:.2f} | {a['seconds_per_step']:.3f} | "
                     f"{b['seconds_per_step']:.4f} |")
    x = [cpu[n]["memory_bytes"] for n in names]
    y = [cuda[n]["memory_bytes"] for n in names]
    ratios = [b / a for a, b in zip(x, y)]
    lines.append(f"\nSpearman {spearmanr(x, y)[0]:.3f}, Kendall tau {kendalltau(x, y)[0]:.3f} over {len(names)} "
                 f"networks; CUDA / CPU from {min(ratios):.2f} to {max(ratios):.2f} (median "
                 f"{statistics.median(ratios):.2f}).")
    return "\n".join(lines)


def part_table(args: Any) -> dict[str, Any]:
    results = read_result(args.results / RESULT)
    print(_memory_table(results))
    return {}


PARTS: dict[str, Callable[[Any], dict[str, Any]]] = {"memory": part_memory, "steps": part_steps, "amp": part_amp,
                                                     "paper": part_paper, "table": part_table}


def main() -> None:
    parser = benchmark_parser(__doc__, list(PARTS), "gpu")
    parser.add_argument("--device", default="cuda", help="cuda or cpu (cuda)")
    parser.add_argument("--steps", type=int, default=500, help="amp: training steps per run (500; --smoke: 2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--workers", type=int, default=4, help="amp: batch-loading processes (4)")
    parser.add_argument("--strategies", nargs="+", default=list(PAPER_RUNS), choices=list(PAPER_RUNS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.smoke:
        args.steps, args.seeds = 2, [0]
    if args.device == "cuda" and not torch.cuda.is_available() and args.part != "table":
        parser.error("--device cuda: no CUDA device here")
    figures = PARTS[args.part](args)
    if args.part == "table":
        return
    path = args.results / (RESULT if not args.smoke else "gpu_smoke.json")
    results = read_result(path) if path.is_file() else {}
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    results.setdefault(args.part, {})[args.device] = {**figures, "device_name": device_name,
                                                      "torch": torch.__version__}
    write_result(path, results)
    print(f"written {path}")


if __name__ == "__main__":
    main()

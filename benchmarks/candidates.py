"""Does the candidate collector reach a 3% window under real measured costs? (no super-net needed)

For the default space on Task04_Hippocampus's plan (batch 2, patch 48x64x48), budgets at 25/50/75% of the
space's measured memory range; for each, collect candidates with measured memory in [budget - 3%, budget]
and count draws and measurements.

    python benchmarks/candidates.py            # writes benchmarks/results/candidates.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import read_result, write_result

from segnas.cost.budget import parse_budget
from segnas.cost.measure import measure_cost
from segnas.data.dataset import load_dataset
from segnas.data.plan import make_plan
from segnas.networks.registry import TopologyNetworkSpec
from segnas.spaces.presets import extreme_architectures
from segnas.spaces.topology import TopologySpace
from segnas.strategies.hypersegnas.candidates import collect_candidates

ROOT = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent.parent / "shared" / "data" / "Task04_Hippocampus")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--window", type=float, default=0.03)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                        help="budgets as fractions of the measured range (0.25 0.5 0.75)")
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "candidates.json")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    plan = make_plan(load_dataset(args.data), stride=16, show_progress=False)
    space = TopologySpace()

    def measure(arch):
        return measure_cost(TopologyNetworkSpec(1, plan.num_classes, arch, "mean", 0.5), plan.patch_size, 2)

    small, large = (measure(a).memory_bytes for a in extreme_architectures(space))
    rows = []
    for fraction in args.fractions:
        budget = parse_budget(f"{int(small + fraction * (large - small))}B")
        costs: list[int] = []
        start = time.perf_counter()
        state = collect_candidates(space, budget, measure, args.count, args.window, seed=0,
                                   on_accept=lambda arch, report: costs.append(report.memory_bytes))
        rows.append({"fraction_of_range": fraction, "budget_bytes": budget.value, "accepted": len(costs),
                     "drawn": state.drawn, "measured": state.measured,
                     "accepted_min_bytes": min(costs, default=None), "accepted_max_bytes": max(costs, default=None),
                     "all_inside_window": all(budget.value * (1 - args.window) <= c <= budget.value for c in costs),
                     "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"space": space.to_dict(), "patch": plan.patch_size, "batch": 2, "window": args.window,
              "range_bytes": [small, large], "budgets": rows}
    if args.results.is_file():  # keep the budgets of earlier runs, replace re-run ones
        earlier = read_result(args.results).get("budgets", [])
        rows = [r for r in earlier if r["fraction_of_range"] not in args.fractions] + rows
        result["budgets"] = sorted(rows, key=lambda r: r["fraction_of_range"])
    write_result(args.results, result)
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()

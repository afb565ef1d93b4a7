"""``segnas demo``: the whole job on a small synthetic dataset, in a minute or two on 2 CPU cores.

Steps: write a synthetic MSD task -> search it with a strategy's ``tiny`` profile under two budgets across the
range the strategy measures (none for a strategy that takes no budget) -> print the budget table -> retrain the
winner of the larger budget from scratch -> predict the fold's validation images -> evaluate.
Everything is what a real search does, at sizes that finish quickly on a CPU; the ``tiny`` profile's search is
far too short to mean anything about the data, it shows the path.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from segnas.api import network_for, prepare_search
from segnas.cost.budget import Budget, parse_budget
from segnas.data.synthetic import write_synthetic_dataset
from segnas.engine.evaluate import evaluate_folder
from segnas.engine.predict import predict_run
from segnas.engine.run import train_run
from segnas.engine.trainer import TrainConfig
from segnas.strategies.base import SearchStrategy, get_strategy
from segnas.utils.files import prepare_output_dir

#: Where the demo's two budgets sit in the measured range of the strategy's first budget kind.
BUDGET_POSITIONS = (0.4, 0.8)


def budget_text(value: float, kind: str) -> str:
    """A budget of ``kind`` at ``value`` written as ``segnas search --budget`` takes it (rounded down)."""
    if kind == "memory":
        return f"{int(value / 1e5) / 10:.1f}MB"
    if kind == "parameters":
        return f"{int(value / 100) / 10:.1f}kparams"
    if kind == "flops":
        return f"{int(value / 1e7) / 100:.2f}GFLOPs"
    return f"{int(value * 10) / 10:.1f}ms"


def demo_budgets(strategy: SearchStrategy) -> list[Budget]:
    """Two budgets across the measured range of the strategy's first budget kind; none if it takes none."""
    if not strategy.budget_kinds:
        return []
    kind = strategy.budget_kinds[0]
    low, high = strategy.budget_range(kind)
    return [parse_budget(budget_text(low + position * (high - low), kind)) for position in BUDGET_POSITIONS]


def run_demo(out: Path, force: bool = False, steps: int = 300, device: str = "auto", seed: int = 0,
             strategy: str = "hypersegnas") -> dict:
    """Run the demo under ``out`` with ``strategy``'s tiny profile; returns the evaluation summary."""
    start = time.time()
    get_strategy(strategy)  # refuse an unknown strategy before writing anything
    out = prepare_output_dir(out, force, "demo folder")
    data_dir = write_synthetic_dataset(out / "data", num_cases=20, seed=seed)
    print(f"[1/5] synthetic dataset: {data_dir} (20 cases, 40^3 voxels, labels 1 and 2)")
    searcher = prepare_search(data_dir, out / "search", strategy, None, profile="tiny", seed=seed, device=device)
    budgets = demo_budgets(searcher)
    searcher.check_budgets(budgets)
    winners = searcher.run(budgets)
    print(f"[2/5] {strategy} search (tiny profile) under "
          f"{', '.join(b.text for b in budgets) if budgets else 'no budget'} -> {out / 'search'}")
    for label, arch in winners.items():
        print("      " + searcher.describe(label, arch))
    label, arch = list(winners.items())[-1]
    plan = searcher.ctx.plan
    config = TrainConfig(max_steps=steps, batch_size=2, lr=3e-3, checkpoint_every=50, seed=seed)
    record = train_run(data_dir, plan, network_for(arch, plan), out / "run", 0, config, device=device,
                       augment="flips", spec=searcher.ctx.dataset)
    print(f"[3/5] retrained the {label} winner from scratch: {record['steps']} steps "
          f"({record['seconds_per_step']} s/step), validation Dice "
          f"{record['validation'].get('val_dice', float('nan')):.3f} -> {out / 'run'}")
    val_images = out / "val_images"
    val_images.mkdir()
    for case_id in plan.fold(0)["val"]:
        (val_images / f"{case_id}.nii.gz").symlink_to(searcher.ctx.dataset.case(case_id).images[0])
    predict_run(out / "run", val_images, out / "predictions", device=device)
    print(f"[4/5] predicted {len(plan.fold(0)['val'])} validation cases (mirror TTA, the default) -> "
          f"{out / 'predictions'}")
    summary = evaluate_folder(out / "predictions", data_dir / "labelsTr", out / "predictions",
                              {k: v for k, v in plan.labels.items() if k}, show_progress=False)
    print(f"[5/5] evaluation -> {out / 'predictions' / 'metrics.csv'}, {out / 'predictions' / 'summary.json'}")
    print(json.dumps(summary["per_label"], indent=1))
    print(f"demo finished in {time.time() - start:.0f} s; everything is under {out}")
    return summary

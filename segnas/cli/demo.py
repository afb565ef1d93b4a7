"""``segnas demo``: the whole pipeline on a small synthetic dataset, in a few minutes on 2 CPU cores.

Steps: write a synthetic MSD task -> plan it -> sample an architecture of a small topology space and draw
it -> measure its cost -> train on fold 0 -> predict the fold's validation images -> evaluate.
The demo space is the paper's space scaled down (8 blocks, 3 scales, 16..64 channels) so that training
finishes quickly on a CPU; everything else is what a real run does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from segnas.cost.measure import measure_cost
from segnas.data.dataset import load_dataset
from segnas.data.plan import make_plan
from segnas.data.synthetic import write_synthetic_dataset
from segnas.engine.evaluate import evaluate_folder
from segnas.engine.predict import predict_run
from segnas.engine.run import train_run
from segnas.engine.trainer import TrainConfig
from segnas.networks.registry import TopologyNetworkSpec
from segnas.report.draw import draw_architecture
from segnas.spaces.sampler import ArchitectureSampler
from segnas.spaces.topology import TopologySpace
from segnas.utils.files import prepare_output_dir

DEMO_SPACE = TopologySpace(num_blocks=8, num_depths=3, base_channels=32, channel_mul=0.25)


def run_demo(out: Path, force: bool = False, steps: int = 300, device: str = "auto", seed: int = 0) -> dict:
    """Run the demo under ``out``; returns the evaluation summary."""
    start = time.time()
    out = prepare_output_dir(out, force, "demo folder")
    data_dir = write_synthetic_dataset(out / "data", num_cases=20, seed=seed)
    print(f"[1/6] synthetic dataset: {data_dir} (20 cases, 40^3 voxels, labels 1 and 2)")
    spec = load_dataset(data_dir)
    plan = make_plan(spec, stride=DEMO_SPACE.total_stride, show_progress=False)
    plan.save(out / "plan.json")
    print(f"[2/6] plan: spacing {plan.target_spacing}, patch {plan.patch_size}, {len(plan.folds)} folds "
          f"-> {out / 'plan.json'}")
    arch = ArchitectureSampler(DEMO_SPACE, seed).sample()
    arch.save(out / "arch.json")
    draw_architecture(arch, out / "arch.png", title="demo: sampled architecture")
    network = TopologyNetworkSpec(plan.num_channels, plan.num_classes, arch, "mean")
    cost = measure_cost(network, plan.patch_size, batch_size=2, use_cache=False)
    arch.metadata["cost"] = cost.to_dict()
    arch.save(out / "arch.json")
    print(f"[3/6] architecture: {int(arch.edges.sum())} active edges, {cost.parameters:,} parameters, "
          f"{cost.memory_bytes / 2**20:.0f} MiB measured training memory ({cost.memory_method}) "
          f"-> {out / 'arch.json'}, {out / 'arch.png'}")
    config = TrainConfig(max_steps=steps, batch_size=2, lr=3e-3, checkpoint_every=50, seed=seed)
    record = train_run(data_dir, plan, network, out / "run", 0, config, device=device, augment="flips", spec=spec)
    print(f"[4/6] trained {record['steps']} steps ({record['seconds_per_step']} s/step), validation Dice "
          f"{record['validation'].get('val_dice', float('nan')):.3f} -> {out / 'run'}")
    val_images = out / "val_images"
    val_images.mkdir()
    for case_id in plan.fold(0)["val"]:
        (val_images / f"{case_id}.nii.gz").symlink_to(spec.case(case_id).images[0])
    predict_run(out / "run", val_images, out / "predictions", device=device)
    print(f"[5/6] predicted {len(plan.fold(0)['val'])} validation cases -> {out / 'predictions'}")
    summary = evaluate_folder(out / "predictions", data_dir / "labelsTr", out / "predictions",
                              {k: v for k, v in plan.labels.items() if k}, show_progress=False)
    print(f"[6/6] evaluation -> {out / 'predictions' / 'metrics.csv'}, {out / 'predictions' / 'summary.json'}")
    print(json.dumps(summary["per_label"], indent=1))
    print(f"demo finished in {time.time() - start:.0f} s; everything is under {out}")
    return summary

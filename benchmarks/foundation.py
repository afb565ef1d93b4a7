"""Foundation benchmark: MONAI's UNet and the U-Net-shaped topology architecture, side by side.

Both train on Task04_Hippocampus fold 0 for the same wall-clock budget through the same pipeline (plan,
transforms, trainer), then predict the fold's validation cases and are scored with Dice and NSD (1 mm).
It also times one training step of a sampled architecture run inside the super-net against the same
architecture derived as a standalone network.

    python benchmarks/foundation.py --minutes 20            # the recorded run (about 45 minutes)
    python benchmarks/foundation.py --minutes 1 --quick     # a smoke run

Figures go to stdout and ``benchmarks/results/foundation.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from common import link_images, write_result

from segnas.data.dataset import load_dataset
from segnas.data.plan import make_plan
from segnas.engine.evaluate import evaluate_folder
from segnas.engine.predict import predict_run
from segnas.engine.run import train_run
from segnas.engine.trainer import TrainConfig
from segnas.networks.registry import MonaiUNetSpec, NetworkSpec, TopologyNetworkSpec
from segnas.networks.topology_net import TopologyNet, derive
from segnas.spaces.presets import unet_architecture
from segnas.spaces.sampler import ArchitectureSampler
from segnas.spaces.topology import TopologySpace
from segnas.utils.runtime import configure_torch

ROOT = Path(__file__).resolve().parent
DEFAULT_DATA = ROOT.parent.parent / "shared" / "data" / "Task04_Hippocampus"


def supernet_vs_derived(patch: list[int], batch: int, repeats: int, seed: int = 0,
                        device: str = "cpu") -> dict:
    """Median seconds per training step of one sampled architecture inside the super-net and derived."""
    space = TopologySpace()
    arch = ArchitectureSampler(space, seed).sample()
    supernet = TopologyNet(space, 1, 3).to(device)
    derived = derive(supernet, arch)
    image = torch.randn(batch, 1, *patch, device=device)
    label = torch.randint(0, 3, (batch, *patch), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(run) -> float:
        start = time.perf_counter()
        loss_fn(run(image), label).backward()
        if image.is_cuda:
            torch.cuda.synchronize(image.device)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"supernet": [], "derived": []}
    for index in range(repeats + 1):  # interleaved, first round is warm-up
        for name, run in (("supernet", lambda x: supernet(x, arch)), ("derived", derived)):
            seconds = step(run)
            if index:
                times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"architecture_edges": int(arch.edges.sum()), "patch": patch, "batch": batch, "repeats": repeats,
            "device": device,
            "supernet_s_per_step": medians["supernet"], "derived_s_per_step": medians["derived"],
            "ratio": medians["supernet"] / medians["derived"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per network (20)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--nets", default="monai-unet,topology-unet")
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "foundation")
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "foundation.json")
    parser.add_argument("--quick", action="store_true", help="few repeats for the step-time comparison")
    args = parser.parse_args()
    configure_torch()

    spec = load_dataset(args.data)
    plan = make_plan(spec, stride=16)
    val_ids = plan.fold(0)["val"]
    results = {"dataset": spec.name, "fold": 0, "train_cases": len(plan.fold(0)["train"]),
               "val_cases": len(val_ids), "patch": plan.patch_size, "batch": args.batch,
               "minutes": args.minutes, "torch_threads": torch.get_num_threads(), "machine": platform.processor()
               or platform.machine(), "networks": {}}
    val_images = link_images(spec, val_ids, args.work / "val_images")
    for name in args.nets.split(","):
        if name == "monai-unet":
            network: NetworkSpec = MonaiUNetSpec(1, plan.num_classes)
        else:
            network = TopologyNetworkSpec(1, plan.num_classes, unet_architecture(TopologySpace()), "mean")
        config = TrainConfig(max_steps=None, max_seconds=args.minutes * 60, batch_size=args.batch,
                             optimizer="adamw", lr=3e-3, checkpoint_every=500, log_every=50, seed=0)
        run_dir = args.work / name
        record = train_run(args.data, plan, network, run_dir, 0, config, force=True, augment="flips", spec=spec)
        predict_run(run_dir, val_images, run_dir / "predictions", force=True, tta="none")  # as recorded
        summary = evaluate_folder(run_dir / "predictions", args.data / "labelsTr", run_dir / "predictions",
                                  {k: v for k, v in plan.labels.items() if k}, nsd_tolerance_mm=[1.0])
        results["networks"][name] = {
            "parameters": record["parameters"], "iterations": record["steps"],
            "train_seconds": record["train_seconds"], "seconds_per_iteration": record["seconds_per_step"],
            "dice": {k: v["dice"] for k, v in summary["per_label"].items()},
            "nsd_1mm": {k: v["nsd"] for k, v in summary["per_label"].items()},
            "hd95_mm": {k: v["hd95"] for k, v in summary["per_label"].items()},
            "mean_dice": summary["mean"]["dice"], "mean_nsd_1mm": summary["mean"]["nsd"],
        }
        print(json.dumps({name: results["networks"][name]}, indent=1), flush=True)
    results["supernet_vs_derived"] = supernet_vs_derived(plan.patch_size, 2, 3 if args.quick else 10)
    print(json.dumps({"supernet_vs_derived": results["supernet_vs_derived"]}, indent=1))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.results, results)
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()

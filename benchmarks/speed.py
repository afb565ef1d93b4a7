"""Where a training step's time goes: what loader workers buy, and what durable writes cost (issue 46's speed
benchmark, its first parts).

``loader``: on one dataset's fold 0 (ACDC in the command below: large thick-slice volumes, where batch sampling
and augmentation are a large share of a step), with ``segnas train``'s defaults (MONAI UNet 16..256 on the plan's
per-axis strides, batch 2, ``--augment full``, mixed precision where the CPU runs it natively):

* each transform of the augmentation chain timed on its own, per sample, over ``--batches`` batches;
* a whole batch (sampling + augmentation) alone, and the network's training step alone on a fixed batch;
* the trainer's step with 0 and with 1 loader worker (``segnas train --workers``), ``--steps`` steps each after
  a warm-up, in one run: the ratio is what the option buys on these cores.

``fsync``: a small training that checkpoints at every step, with segnas's durable writes (``fsync`` of each
file before its rename and of its folder after) and with the syncs switched off, alternating, ``--repeats``
times each: what durability costs per checkpoint on this disk.

    python benchmarks/speed.py loader --data ../shared/data/Task27_ACDC --group-by 'patient\\d+'
    python benchmarks/speed.py fsync
    python benchmarks/speed.py loader --smoke          # seconds, synthetic data: the script runs

Results: ``benchmarks/results/speed_loader_<dataset>.json``, ``speed_fsync.json``.
"""

from __future__ import annotations

import statistics
import sys
import time
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from monai.losses import DiceCELoss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, write_result  # noqa: E402

from segnas.api import train  # noqa: E402
from segnas.data.dataset import load_dataset  # noqa: E402
from segnas.data.plan import make_plan  # noqa: E402
from segnas.data.synthetic import write_synthetic_dataset  # noqa: E402
from segnas.data.transforms import TrainingBatches, augmentation, cached_cases  # noqa: E402
from segnas.utils.runtime import mixed_precision  # noqa: E402
from segnas.engine.run import read_run  # noqa: E402
from segnas.networks.registry import MonaiUNetSpec  # noqa: E402


def _median_ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 2)


def time_transforms(cases: Any, chain: Any, samples: int) -> dict[str, float]:
    """Median milliseconds of each transform of ``chain`` per sample (drawn cases, fixed seeds)."""
    per_transform: dict[str, list[float]] = {}
    for index in range(samples):
        chain.set_random_state(seed=index)
        data: Any = deepcopy(dict(cases[index % len(cases)]))
        for position, transform in enumerate(chain.transforms):
            start = time.perf_counter()
            data = transform(data)
            per_transform.setdefault(f"{position}: {type(transform).__name__}", []).append(time.perf_counter() - start)
            data = data[0] if isinstance(data, list) else data
    return {name: _median_ms(times) for name, times in per_transform.items()}


def time_network_step(network: MonaiUNetSpec, batch: dict[str, torch.Tensor], num_classes: int, steps: int) -> float:
    """Median seconds of one training step (forward, loss, backward, AdamW) on a fixed batch, mixed precision
    as the trainer uses it."""
    model = network.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    device = torch.device("cpu")
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with mixed_precision(device, True):
            logits = model(batch["image"])
        loss = loss_fn(logits.float(), batch["label"].long())
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times[2:]), 4)


def part_loader(args: Any) -> dict[str, Any]:
    spec = load_dataset(args.data)
    plan = make_plan(spec, show_progress=False, group_by=args.group_by)
    train_ids = plan.fold(0)["train"]
    cases = cached_cases(spec, plan, train_ids[: args.cases], show_progress=False)
    chain = augmentation(plan, "full")
    batches = TrainingBatches(cases, chain, 2, seed=0, num_steps=args.batches)
    transforms = time_transforms(cases, chain, 2 * args.batches)
    batch_times = []
    for step in range(args.batches):
        start = time.perf_counter()
        batch = batches[step]
        batch_times.append(time.perf_counter() - start)
    network = MonaiUNetSpec.for_plan(plan.num_channels, plan.num_classes, plan.patch_size, plan.target_spacing,
                                     plan.pool_strides)
    network_step = time_network_step(network, batch, plan.num_classes, args.network_steps)
    trainer = {}
    for workers in (0, 1):
        folder = args.work / f"workers_{workers}"
        train(args.data, network, folder, plan=plan, steps=args.steps, device="cpu", force=True, workers=workers,
              show_progress=False)
        record = read_run(folder)
        trainer[f"workers_{workers}"] = {"steps": record["steps"], "train_seconds": record["train_seconds"],
                                         "seconds_per_step": record["seconds_per_step"]}
        print(f"workers {workers}: {record['seconds_per_step']:.3f} s/step over {record['steps']} steps", flush=True)
    result = {"dataset": spec.name, "patch_size": plan.patch_size, "batch_size": 2, "cached_cases": len(cases),
              "transform_ms_per_sample": transforms, "batch_seconds": round(statistics.median(batch_times), 4),
              "network_step_seconds": network_step, "trainer": trainer,
              "workers_speedup": round(trainer["workers_0"]["seconds_per_step"]
                                       / trainer["workers_1"]["seconds_per_step"], 3),
              "torch_threads": torch.get_num_threads()}
    print(f"per transform (ms/sample): {transforms}\nbatch alone {result['batch_seconds']} s, network step alone "
          f"{network_step} s; workers 1 against 0: {result['workers_speedup']}x", flush=True)
    return result


def part_fsync(args: Any) -> dict[str, Any]:
    """Seconds per checkpointing step with and without the syncs, on a tiny network and synthetic data."""
    import segnas.utils.files as files

    data = args.work / "data" / "Task99_Tiny"
    if not (data / "dataset.json").is_file():
        write_synthetic_dataset(data, num_cases=6, shape=(24, 24, 24))
    network = MonaiUNetSpec(1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    real_sync = files.fsync_path
    timings: dict[str, list[float]] = {"durable": [], "no_sync": []}
    for _ in range(args.repeats):
        for mode in ("durable", "no_sync"):
            files.fsync_path = real_sync if mode == "durable" else (lambda path, directory=False: None)
            folder = args.work / f"fsync_{mode}"
            start = time.perf_counter()
            train(data, network, folder, steps=args.steps, batch_size=1, checkpoint_every=1, device="cpu",
                  force=True, show_progress=False)
            timings[mode].append((time.perf_counter() - start) / args.steps)
    files.fsync_path = real_sync
    checkpoint_bytes = (args.work / "fsync_durable" / "checkpoint_last.pt").stat().st_size
    durable, plain = statistics.median(timings["durable"]), statistics.median(timings["no_sync"])
    large = _large_checkpoint_writes(args, files, real_sync)
    files.fsync_path = real_sync
    result = {"steps": args.steps, "repeats": args.repeats, "checkpoint_bytes": checkpoint_bytes,
              "seconds_per_checkpointing_step": {"durable": round(durable, 5), "no_sync": round(plain, 5)},
              "sync_cost_ms_per_checkpoint": round(1000 * (durable - plain), 2), "timings": timings,
              "monai_unet_16_checkpoint": large}
    print(f"per checkpointing step: {durable:.4f} s durable, {plain:.4f} s without syncs "
          f"({result['sync_cost_ms_per_checkpoint']} ms per checkpoint of {checkpoint_bytes:,} bytes); a MONAI UNet "
          f"16..256 checkpoint ({large['bytes']:,} bytes): {large['seconds']}", flush=True)
    return result


def _large_checkpoint_writes(args: Any, files: Any, real_sync: Any) -> dict[str, Any]:
    """Seconds to write MONAI UNet 16..256's weights and AdamW state (a real checkpoint's size) atomically, with
    and without the syncs (medians of ``--repeats`` alternating writes)."""
    model = MonaiUNetSpec(1, 4).build()
    optimizer = torch.optim.AdamW(model.parameters())
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    target = args.work / "large_checkpoint.pt"
    seconds: dict[str, list[float]] = {"durable": [], "no_sync": []}
    for _ in range(max(args.repeats, 3)):
        for mode in seconds:
            files.fsync_path = real_sync if mode == "durable" else (lambda path, directory=False: None)
            start = time.perf_counter()
            files.atomic_write(target, lambda tmp: torch.save(state, tmp))
            seconds[mode].append(time.perf_counter() - start)
    return {"bytes": target.stat().st_size, "seconds": {mode: round(statistics.median(v), 4)
                                                        for mode, v in seconds.items()}}


def main() -> None:
    parser = benchmark_parser(__doc__, ["loader", "fsync"], "speed")
    parser.add_argument("--group-by", metavar="REGEX", help="a case's subject, as `segnas plan --group-by`")
    parser.add_argument("--cases", type=int, default=32, help="training cases held in memory (32)")
    parser.add_argument("--batches", type=int, default=20, help="batches timed alone (20)")
    parser.add_argument("--network-steps", type=int, default=8, help="network steps timed alone (8)")
    parser.add_argument("--steps", type=int, default=60, help="trainer steps per setting (60)")
    parser.add_argument("--repeats", type=int, default=3, help="fsync: alternating repeats of each mode (3)")
    args = parser.parse_args()
    if args.smoke:
        args.data = args.work / "data" / "Task98_Thick"
        if not (args.data / "dataset.json").is_file():
            write_synthetic_dataset(args.data, num_cases=6, shape=(32, 32, 8), radius=(2, 3), spacing=(1.0, 1.0, 4.0))
        args.cases, args.batches, args.network_steps, args.steps, args.repeats = 4, 2, 1, 3, 1
    if args.part == "fsync":
        result, name = part_fsync(args), "speed_fsync"
    else:
        result = part_loader(args)
        name = f"speed_loader_{result['dataset'].lower()}"
    name += "_smoke" if args.smoke else ""
    print(f"written {write_result(args.results / f'{name}.json', result)}")


if __name__ == "__main__":
    main()

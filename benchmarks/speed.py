"""Where a training step's time goes: what loader workers buy, and what durable writes cost (issue 46's speed
benchmark, its first parts).

``loader``: on one dataset's fold 0 (ACDC in the command below: large thick-slice volumes, where batch sampling
and augmentation are a large share of a step), with ``segnas train``'s defaults (MONAI UNet 16..256 on the plan's
per-axis strides, batch 2, ``--augment full``, mixed precision where the CPU runs it natively):

* each transform of the augmentation chain timed on its own, per sample, over ``--batches`` batches;
* a whole batch (sampling + augmentation) alone, and the network's training step alone on a fixed batch;
* the trainer's step with 0 and with 1 loader worker (``segnas train --workers``), ``--steps`` steps each after
  a warm-up, in one run: the ratio is what the option buys on these cores.

``networks``: how fast each network runs its FLOPs, in every execution mode a user can pick, ratios in one run:
the hand-designed family and the searched winners of ``results/pareto.json`` (``--networks`` picks; issue 46's
table by default) at the Pareto benchmark's patch, a training step at batch 4 (forward, DiceCE, backward, AdamW)
and a forward pass at batch 2, each as float32 eager, float32 with ``channels_last_3d`` memory, and the CPU's
native reduced precision (``amp``: bfloat16 autocast) with and without it where the CPU has one; ``--plain-kernels``
adds float32 without the cell operations' channels-last kernels (their before), ``--compile`` float32 under
``torch.compile``. The modes run interleaved in
``--rounds`` rounds (each the median of ``--network-steps`` steps) and each figure is the rounds' median: this
machine's speed drifts by 10-20% over minutes, which one pass per mode would put on the ratios. Achieved GFLOP/s
is forward FLOPs over forward latency, and 3x forward FLOPs (backward about twice the forward) over the step.

``profile``: where a network's training step spends its time: ``torch.profiler`` over ``--network-steps`` float32
steps of each ``--networks`` network (issue 46's winners by default) at the same patch and batch, the operators
with the most self CPU time, and the count of operator calls per step (a cell network's many small operations).

``fsync``: a small training that checkpoints at every step, with segnas's durable writes (``fsync`` of each
file before its rename and of its folder after) and with the syncs switched off, alternating, ``--repeats``
times each: what durability costs per checkpoint on this disk.

    python benchmarks/speed.py loader --data ../shared/data/Task27_ACDC --group-by 'patient\\d+'
    python benchmarks/speed.py fsync
    python benchmarks/speed.py networks --plain-kernels  # Hippocampus, issue 46's networks (about 10 minutes)
    python benchmarks/speed.py profile --networks scalable-nas/budget-568MiB monai-unet-32
    python benchmarks/speed.py loader --smoke          # seconds, synthetic data: the script runs

Results: ``benchmarks/results/speed_loader_<dataset>.json``, ``speed_networks_<dataset>.json`` (with
``--compile``: ``speed_networks_<dataset>_compile.json``),
``speed_profile_<dataset>.json``, ``speed_fsync.json`` (each with the CPU it ran on: figures of two machines are never compared).
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import torch
from monai.losses import DiceCELoss
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, machine, read_result, write_result  # noqa: E402

from segnas.api import train  # noqa: E402
from segnas.data.dataset import load_dataset  # noqa: E402
from segnas.data.plan import make_plan  # noqa: E402
from segnas.data.synthetic import write_synthetic_dataset  # noqa: E402
from segnas.data.transforms import TrainingBatches, augmentation, cached_cases  # noqa: E402
from segnas.engine.run import read_run  # noqa: E402
from segnas.networks import cells  # noqa: E402
from segnas.networks.registry import MonaiUNetSpec  # noqa: E402
from segnas.utils.runtime import autocast_dtype, mixed_precision  # noqa: E402


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


def time_network_step(model: torch.nn.Module, image: torch.Tensor, label: torch.Tensor, steps: int,
                      amp: bool = True) -> float:
    """Median seconds of one training step (forward, loss, backward, AdamW) on a fixed batch, the forward under
    ``amp``'s autocast as the trainer runs it; two warm-up steps are not counted."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with mixed_precision(image.device, amp):
            logits = model(image)
        loss = loss_fn(logits.float(), label)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times[2:]), 4)


def time_forward(model: torch.nn.Module, image: torch.Tensor, repeats: int, amp: bool) -> float:
    """Median seconds of one inference forward pass (no gradients) after one warm-up."""
    model.eval()
    times = []
    with torch.no_grad(), mixed_precision(image.device, amp):
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model(image)
            times.append(time.perf_counter() - start)
    model.train()
    return round(statistics.median(times[1:]), 4)


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
    network_step = time_network_step(network.build(), batch["image"], batch["label"].long(), args.network_steps)
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


#: Issue 46's table: the hand-designed UNets and the strategies' Hippocampus winners (results/pareto.json).
SPEED_NETWORKS = ("monai-unet-16", "monai-unet-32", "hypersegnas@cpu-light/budget-251MiB", "dints/budget-251MiB",
                  "thrifty/budget-251MiB", "scalable-nas/budget-568MiB")
TRAIN_BATCH, FORWARD_BATCH = 4, 2


def execution_modes(plain_kernels: bool = False, compiled: bool = False) -> dict[str, dict[str, bool]]:
    """Every execution mode this CPU offers: float32 and, where the CPU runs one natively, ``amp``; each with the
    default (contiguous) and ``channels_last_3d`` memory. With ``plain_kernels``, float32 once more with the cell
    operations' channels-last kernels switched off (:func:`plain_kernels`): the before of that lever; with
    ``compiled``, float32 under ``torch.compile`` (inductor; its compilation falls in the warm-up steps)."""
    modes = {"float32": {"amp": False, "channels_last": False},
             "float32 channels_last": {"amp": False, "channels_last": True}}
    if plain_kernels:
        modes["float32 plain kernels"] = {"amp": False, "channels_last": False, "plain_kernels": True}
    if compiled:
        modes["float32 compiled"] = {"amp": False, "channels_last": False, "compile": True}
    if autocast_dtype("cpu") is not None:
        modes.update({"amp": {"amp": True, "channels_last": False},
                      "amp channels_last": {"amp": True, "channels_last": True}})
    return modes


@contextmanager
def plain_kernels(active: bool) -> Iterator[None]:
    """The cell operations (depthwise convolutions, max pooling) on the input's own memory layout, as before
    issue 46's channels-last kernels (:func:`segnas.networks.cells._on_channels_last`)."""
    original = cells._on_channels_last
    if active:
        cells._on_channels_last = lambda x, compute: compute(x)
    try:
        yield
    finally:
        cells._on_channels_last = original


def _speed_networks(args: Any) -> tuple[Any, dict[str, Any]]:
    """The plan and the networks ``--networks`` names (issue 46's by default), as the Pareto benchmark builds them:
    the hand-designed family and the winners recorded in ``results/pareto.json``."""
    import pareto

    pareto_args = SimpleNamespace(data=args.data, group_by=args.group_by, smoke=args.smoke)
    _, plan = pareto._plan(pareto_args)
    winners = args.results / "pareto.json"  # the Hippocampus searches' record (absent: the family alone)
    networks = {**pareto._hand_family(pareto_args, plan),
                **(pareto._searched_networks(read_result(winners), plan) if winners.is_file() else {})}
    names = args.networks or (list(networks)[:2] if args.smoke else SPEED_NETWORKS)
    unknown = sorted(set(names) - set(networks))
    if unknown:
        raise SystemExit(f"--networks: unknown {unknown}; known: {sorted(networks)}")
    return plan, {name: networks[name] for name in names}


def part_profile(args: Any) -> dict[str, Any]:
    """The operators with the most self CPU time in a float32 training step of each network (module doc)."""
    plan, networks = _speed_networks(args)
    rows: dict[str, Any] = {}
    for name, network in networks.items():
        torch.manual_seed(0)
        model = network.build()
        image = torch.randn(TRAIN_BATCH, plan.num_channels, *plan.patch_size)
        label = torch.randint(0, plan.num_classes, (TRAIN_BATCH, 1, *plan.patch_size))
        time_network_step(model, image, label, 1, amp=False)  # warm-up outside the profile
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            step = time_network_step(model, image, label, args.network_steps, amp=False)
        events = profiler.key_averages()
        total = sum(event.self_cpu_time_total for event in events)
        top = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:args.top]
        rows[name] = {"step_seconds": step, "operator_calls_per_step": round(
            sum(event.count for event in events) / (args.network_steps + 2)),
            "top": [{"operator": event.key, "share": round(event.self_cpu_time_total / total, 3),
                     "calls_per_step": round(event.count / (args.network_steps + 2))} for event in top]}
        print(f"{name}: {rows[name]['operator_calls_per_step']} operator calls a step; " + ", ".join(
            f"{row['operator']} {row['share']:.0%}" for row in rows[name]["top"][:6]), flush=True)
    return {"dataset": plan.dataset_name, "patch_size": plan.patch_size, "train_batch": TRAIN_BATCH, **machine(),
            "networks": rows}


def part_networks(args: Any) -> dict[str, Any]:
    """Step time, forward latency and achieved GFLOP/s of each network in each execution mode (module doc)."""
    plan, networks = _speed_networks(args)
    channels, patch = plan.num_channels, plan.patch_size
    rows: dict[str, Any] = {}
    for name in networks:
        torch.manual_seed(0)
        model = networks[name].build()
        forward_image = torch.randn(FORWARD_BATCH, channels, *patch)
        with FlopCounterMode(display=False) as counter:
            model(forward_image, **networks[name].forward_kwargs())
        flops = float(counter.get_total_flops())
        row: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters()), "forward_gflops": flops / 1e9,
                               "modes": {}}
        modes = execution_modes(args.plain_kernels, args.compile)
        timings: dict[str, dict[str, list[float]]] = {mode: {"step": [], "forward": []} for mode in modes}
        for _ in range(args.rounds):  # the modes interleaved, so that the machine's drift falls on all of them
            for mode, setting in modes.items():
                memory = torch.channels_last_3d if setting["channels_last"] else torch.contiguous_format
                torch.manual_seed(0)
                model = networks[name].build().to(memory_format=memory)
                model = torch.compile(model) if setting.get("compile") else model
                image = torch.randn(TRAIN_BATCH, channels, *patch).contiguous(memory_format=memory)
                label = torch.randint(0, plan.num_classes, (TRAIN_BATCH, 1, *patch))
                with plain_kernels(setting.get("plain_kernels", False)):
                    timings[mode]["step"].append(time_network_step(model, image, label, args.network_steps,
                                                                   setting["amp"]))
                    timings[mode]["forward"].append(time_forward(model, forward_image.contiguous(memory_format=memory),
                                                                 args.network_steps, setting["amp"]))
        for mode, timing in timings.items():
            step, latency = statistics.median(timing["step"]), statistics.median(timing["forward"])
            row["modes"][mode] = {"step_seconds": step, "forward_seconds": latency, "rounds": timing,
                                  "forward_gflops_per_second": round(flops / 1e9 / latency, 1),
                                  "training_gflops_per_second": round(3 * flops * TRAIN_BATCH / FORWARD_BATCH
                                                                      / 1e9 / step, 1)}
            print(f"{name} [{mode}]: step {step:.3f} s, forward {latency * 1000:.0f} ms, "
                  f"{row['modes'][mode]['training_gflops_per_second']} training GFLOP/s", flush=True)
        rows[name] = row
    return {"dataset": plan.dataset_name, "patch_size": patch, "train_batch": TRAIN_BATCH, "forward_batch": FORWARD_BATCH,
            **machine(),
            "networks": rows}


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
    parser = benchmark_parser(__doc__, ["loader", "networks", "profile", "fsync"], "speed", subjects=True)
    parser.add_argument("--cases", type=int, default=32, help="training cases held in memory (32)")
    parser.add_argument("--batches", type=int, default=20, help="batches timed alone (20)")
    parser.add_argument("--network-steps", type=int, default=8, help="network steps (and forwards) timed alone (8)")
    parser.add_argument("--networks", nargs="+", help="networks, profile: these, as results/pareto.json names them")
    parser.add_argument("--rounds", type=int, default=3,
                        help="networks: rounds over the modes, interleaved; the median of the rounds (3)")
    parser.add_argument("--plain-kernels", action="store_true",
                        help="networks: also float32 without the cell operations' channels-last kernels (the before)")
    parser.add_argument("--compile", action="store_true",
                        help="networks: also float32 under torch.compile (minutes of compilation per network)")
    parser.add_argument("--top", type=int, default=12, help="profile: operators listed per network (12)")
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
    elif args.part in ("networks", "profile"):
        result = part_networks(args) if args.part == "networks" else part_profile(args)
        name = f"speed_{args.part}_{result['dataset'].lower()}" + ("_compile" if args.compile else "")
    else:
        result = part_loader(args)
        name = f"speed_loader_{result['dataset'].lower()}"
    name += "_smoke" if args.smoke else ""
    print(f"written {write_result(args.results / f'{name}.json', result)}")


if __name__ == "__main__":
    main()

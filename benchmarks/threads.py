"""Why one segnas process per set of cores: training-step time alone, and two processes at once on the same cores.

Each worker trains MONAI's default UNet (batch 2, patch 48x64x48, DiceCE, AdamW) for a few steps and prints its
median seconds per step. Settings: one worker with every core's thread; two workers at once, each with every
core's thread (oversubscribed, what two default runs do); two workers at once splitting the cores
(``--threads``).

    python benchmarks/threads.py          # about 3 minutes on 2 cores; writes benchmarks/results/threads.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result  # noqa: E402


def worker(threads: int, steps: int) -> None:
    import torch
    from monai.losses import DiceCELoss

    from segnas.networks.registry import MonaiUNetSpec
    from segnas.utils.runtime import configure_threads, configure_torch

    configure_torch()
    configure_threads(threads)
    model = MonaiUNetSpec(1, 3).build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    image = torch.randn(2, 1, 48, 64, 48)
    label = torch.randint(0, 3, (2, 1, 48, 64, 48))
    times = []
    for _ in range(steps + 1):  # the first step is warm-up
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(image), label).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"threads": threads, "seconds_per_step": statistics.median(times[1:])}))


def run_together(threads: list[int], steps: int) -> list[float]:
    """Start one worker per entry of ``threads`` at once; their median seconds per step."""
    processes = [subprocess.Popen([sys.executable, __file__, "--worker", str(n), "--steps", str(steps)],
                                  stdout=subprocess.PIPE, text=True) for n in threads]
    return [json.loads(process.communicate()[0].strip().splitlines()[-1])["seconds_per_step"]
            for process in processes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps)
        return
    from segnas.utils.runtime import available_cores

    cores = available_cores()
    settings = {"alone": [cores], "two_oversubscribed": [cores, cores],
                "two_split": [max(1, cores // 2)] * 2}
    result = {"cores": cores, "steps": args.steps, "network": "MONAI UNet 16..256, batch 2, 48x64x48"}
    for name, threads in settings.items():
        result[name] = {"threads": threads, "seconds_per_step": run_together(threads, args.steps)}
        print(f"{name} (threads {threads}): {result[name]['seconds_per_step']} s/step", flush=True)
    alone = result["alone"]["seconds_per_step"][0]
    for name in ("two_oversubscribed", "two_split"):
        result[name]["slowdown"] = max(result[name]["seconds_per_step"]) / alone
    print(f"written {write_result(RESULTS / 'threads.json', result)}")


if __name__ == "__main__":
    main()

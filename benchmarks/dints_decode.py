"""DiNTS decode: segnas's per-block dynamic programme against MONAI's Dijkstra over a dense graph.

    python benchmarks/dints_decode.py          # writes benchmarks/results/dints_decode.json

Same random logits for both; the results must be identical; time and peak memory of each are recorded.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from common import write_result
from monai.networks.nets import TopologySearch

from segnas.spaces.sampler import FeasiblePatterns
from segnas.spaces.topology import TopologySpace
from segnas.strategies.dints import decode

ROOT = Path(__file__).resolve().parent


def timed(work) -> tuple[object, float, float]:
    """Result, seconds and peak traced Python-heap MiB (numpy buffers included) of ``work()``."""
    tracemalloc.start()
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def main() -> None:
    rows = []
    for blocks, depths in ((12, 4), (8, 3)):
        space = TopologySpace.named("dints", num_blocks=blocks, num_depths=depths)
        reference = TopologySearch(channel_mul=0.0625, num_blocks=blocks, num_depths=depths, use_downsample=True)
        table = FeasiblePatterns(space)
        generator = torch.Generator().manual_seed(0)
        log_alpha_a = torch.randn(blocks, space.num_edges, generator=generator) * 2
        log_alpha_c = torch.randn(blocks, space.num_edges, 5, generator=generator)
        with torch.no_grad():
            reference.log_alpha_a.copy_(log_alpha_a)
            reference.log_alpha_c.copy_(log_alpha_c)
        (_, monai_a, _, _), monai_seconds, monai_mib = timed(reference.decode)
        ours, our_seconds, our_mib = timed(lambda: decode(space, log_alpha_a, log_alpha_c, table))
        rows.append({"num_blocks": blocks, "num_depths": depths, "identical": bool(np.array_equal(
            ours.edges.astype(int), monai_a.astype(int))), "monai_seconds": round(monai_seconds, 3),
            "segnas_seconds": round(our_seconds, 5), "speedup": round(monai_seconds / our_seconds, 1),
            "monai_peak_mib": round(monai_mib, 1), "segnas_peak_mib": round(our_mib, 2)})
        print(json.dumps(rows[-1]), flush=True)
    write_result(ROOT / "results" / "dints_decode.json", {"rows": rows})


if __name__ == "__main__":
    main()

"""Uniform sampling of feasible architectures with HyperSegNAS's heuristics (paper section 4).

* every block gets at least one edge, so every architecture has all L blocks;
* block 0 draws uniformly among all non-empty edge patterns;
* block b > 0 draws uniformly among the edge patterns that leave exactly the scales block b-1 activated
  (no edge from an inactive node, no dead end), so feasibility holds by construction;
* each active edge draws its operation uniformly.
Seeded with a NumPy ``Generator``: the same seed gives the same sequence of architectures.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator

import numpy as np

from segnas.spaces.architecture import Architecture
from segnas.spaces.topology import TopologySpace


class FeasiblePatterns:
    """All non-empty edge patterns of one block, grouped by the set of scales they leave from.

    ``patterns`` is ``(2**E - 1, E)`` bool; ``by_sources[mask]`` lists pattern indices whose source scales,
    as a bit mask, equal ``mask``; ``targets[i]`` is the bit mask of scales pattern ``i`` activates.
    """

    def __init__(self, space: TopologySpace):
        e = space.num_edges
        codes = np.arange(1, 2**e, dtype=np.int64)
        self.patterns = ((codes[:, None] >> np.arange(e)) & 1).astype(bool)
        source_bits = np.array([1 << space.edge_source(i) for i in range(e)])
        target_bits = np.array([1 << space.edge_target(i) for i in range(e)])
        self.sources = np.array([np.bitwise_or.reduce(source_bits[p]) for p in self.patterns])
        self.targets = np.array([np.bitwise_or.reduce(target_bits[p]) for p in self.patterns])
        groups: dict[int, list[int]] = defaultdict(list)
        for index, mask in enumerate(self.sources):
            groups[int(mask)].append(index)
        self.by_sources = {mask: np.array(indices) for mask, indices in groups.items()}


class ArchitectureSampler:
    """Draws feasible architectures of ``space`` uniformly under the heuristics above."""

    def __init__(self, space: TopologySpace, seed: int | np.random.Generator = 0):
        self.space = space
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.patterns = FeasiblePatterns(space)

    def sample(self) -> Architecture:
        space, table = self.space, self.patterns
        edges = np.zeros((space.num_blocks, space.num_edges), dtype=bool)
        choice = int(self.rng.integers(len(table.patterns)))
        edges[0] = table.patterns[choice]
        for block in range(1, space.num_blocks):
            candidates = table.by_sources[int(table.targets[choice])]
            choice = int(candidates[self.rng.integers(len(candidates))])
            edges[block] = table.patterns[choice]
        ops = np.where(edges, self.rng.integers(space.num_ops, size=edges.shape), -1)
        return Architecture(space, edges, ops, {"strategy": "random"})

    def __iter__(self) -> Iterator[Architecture]:
        while True:
            yield self.sample()

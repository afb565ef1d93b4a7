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
    """Draws feasible architectures of ``space``: uniformly under the heuristics above by default.

    ``edge_probability`` q biases the draw towards sparse (q < 0.5) or dense (q > 0.5) architectures:
    each feasible pattern is drawn with probability proportional to ``q^k (1 - q)^(E - k)`` for its k
    active edges. q = 0.5 is the uniform draw. ``skip_probability`` (default: uniform over operations)
    sets the chance that an active edge is a skip connection; the other operations share the rest.
    A budgeted search moves both to reach the small and large ends of the space, where uniform sampling
    (and so rejection sampling) almost never lands.
    """

    def __init__(self, space: TopologySpace, seed: int | np.random.Generator = 0, edge_probability: float = 0.5,
                 skip_probability: float | None = None):
        if not 0 < edge_probability < 1:
            raise ValueError("edge_probability must lie strictly between 0 and 1")
        if skip_probability is not None and not 0 <= skip_probability <= 1:
            raise ValueError("skip_probability must lie in [0, 1]")
        self.space = space
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.patterns = FeasiblePatterns(space)
        counts = self.patterns.patterns.sum(axis=1)
        log_q, log_not_q = np.log(edge_probability), np.log1p(-edge_probability)
        self._log_weights = counts * log_q + (space.num_edges - counts) * log_not_q
        self.uniform = edge_probability == 0.5
        self.op_probabilities: np.ndarray | None = None
        if skip_probability is not None:
            skip = space.ops.index("skip_connect")
            others = (1 - skip_probability) / (space.num_ops - 1)
            self.op_probabilities = np.full(space.num_ops, others)
            self.op_probabilities[skip] = skip_probability

    def _draw(self, candidates: np.ndarray) -> int:
        if self.uniform:
            return int(candidates[self.rng.integers(len(candidates))])
        weights = np.exp(self._log_weights[candidates] - self._log_weights[candidates].max())
        return int(self.rng.choice(candidates, p=weights / weights.sum()))

    def sample(self) -> Architecture:
        space, table = self.space, self.patterns
        edges = np.zeros((space.num_blocks, space.num_edges), dtype=bool)
        choice = self._draw(np.arange(len(table.patterns)))
        edges[0] = table.patterns[choice]
        for block in range(1, space.num_blocks):
            choice = self._draw(table.by_sources[int(table.targets[choice])])
            edges[block] = table.patterns[choice]
        if self.op_probabilities is None:
            drawn = self.rng.integers(space.num_ops, size=edges.shape)
        else:
            drawn = self.rng.choice(space.num_ops, size=edges.shape, p=self.op_probabilities)
        ops = np.where(edges, drawn, -1)
        return Architecture(space, edges, ops, {"strategy": "random"})

    def __iter__(self) -> Iterator[Architecture]:
        while True:
            yield self.sample()

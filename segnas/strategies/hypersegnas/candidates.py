"""Collecting candidate architectures whose *measured* cost lies in a window just under a budget.

Uniform sampling concentrates around the space's middle, so rejection sampling starves at small and
large budgets. The collector instead:

1. measures the space's extremes (one skip edge per block at the coarsest scale; every edge a 3x3x3
   convolution): the range a budget must lie in;
2. bisects one knob q, the sampler's edge probability and its non-skip operation probability (see
   :class:`ArchitectureSampler`), until architectures drawn at q cost about the budget;
3. draws at q (jittered), predicts each draw's cost from a cheap analytic proxy calibrated by least
   squares on every measurement so far, measures only draws predicted near the window, and keeps those
   measured inside it.

Every measurement goes through the cost module (and its cache); counts of drawn, measured and accepted
architectures are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from segnas.cost.budget import Budget
from segnas.cost.measure import CostReport
from segnas.spaces.architecture import Architecture
from segnas.spaces.sampler import ArchitectureSampler
from segnas.spaces.topology import TopologySpace
from segnas.utils.progress import progress_bar

Measure = Callable[[Architecture], CostReport]


def cost_proxy(arch: Architecture) -> float:
    """Activation volume of an architecture in units of the finest grid node: per active edge, its output
    channels times voxels at its target scale, counted once for a resolution change and three times for a
    convolution (activation, convolution, normalisation outputs)."""
    space = arch.space
    total = 0.0
    for block, edge in zip(*arch.edges.nonzero()):
        target = space.edge_target(edge)
        size = space.node_channels[target] / 8.0**target
        op_factor = 0 if space.ops[arch.ops[block, edge]] == "skip_connect" else 3
        total += size * (op_factor + (2 if space.edge_rate(edge) else 0))
    return total


@dataclass
class CandidateSearch:
    """State and counts of one budget's candidate collection (JSON-able, so a search can resume it)."""

    drawn: int = 0
    measured: int = 0
    accepted: list[str] = field(default_factory=list)
    edge_probability: float = 0.5
    measurements: list[tuple[float, float]] = field(default_factory=list)  # (proxy, cost)


def _sampler(space: TopologySpace, rng: np.random.Generator, q_logit: float) -> ArchitectureSampler:
    """Sampler at knob q = sigmoid(q_logit): dense and convolution-heavy as q -> 1, sparse and skip-heavy as q -> 0."""
    q = float(np.clip(1 / (1 + np.exp(-q_logit)), 1e-4, 1 - 1e-4))
    return ArchitectureSampler(space, rng, edge_probability=q, skip_probability=1 - q)


def collect_candidates(space: TopologySpace, budget: Budget, measure: Measure, count: int,
                       window: float = 0.03, seed: int = 0, max_measurements: int | None = None,
                       state: CandidateSearch | None = None,
                       on_accept: Callable[[Architecture, CostReport], None] | None = None,
                       show_progress: bool = True) -> CandidateSearch:
    """Collect ``count`` architectures with cost in ``[budget * (1 - window), budget]``.

    ``on_accept`` is called with each accepted architecture and its report (the caller records them).
    ``state`` resumes an earlier collection. Stops early after ``max_measurements`` (default 20 x count).
    """
    state = state or CandidateSearch()
    reporter = progress_bar(count, f"collecting candidates ({budget.text})", initial=len(state.accepted),
                            enabled=show_progress, unit="arch")
    low_target, high_target = budget.value * (1 - window), budget.value
    limit = max_measurements or 20 * count
    rng = np.random.default_rng([seed, len(state.measurements)])
    seen = set(state.accepted)

    def measure_and_record(arch: Architecture) -> float:
        cost = budget.cost_of(report := measure(arch))
        state.measured += 1
        state.measurements.append((cost_proxy(arch), cost))
        if low_target <= cost <= high_target and arch.key() not in seen:
            seen.add(arch.key())
            state.accepted.append(arch.key())
            if on_accept is not None:
                on_accept(arch, report)
            reporter.set_postfix(measured=state.measured)
            reporter.update(1)
        return cost

    # Bisection of q on logit scale, three draws per probe, until the probe's median cost is near the budget.
    if len(state.measurements) == 0:
        lo, hi = -8.0, 8.0
        for _ in range(7):
            q_logit = (lo + hi) / 2
            sampler = _sampler(space, rng, q_logit)
            costs = [measure_and_record(sampler.sample()) for _ in range(3)]
            state.drawn += 3
            median = float(np.median(costs))
            if median > high_target:
                hi = q_logit
            elif median < low_target:
                lo = q_logit
            else:
                break
        state.edge_probability = float(1 / (1 + np.exp(-(lo + hi) / 2)))

    while len(state.accepted) < count and state.measured < limit:
        proxies, costs = np.array(state.measurements).T
        slope, intercept = np.polyfit(proxies, costs, 1)
        residual = float(np.std(costs - (slope * proxies + intercept))) if len(costs) > 2 else budget.value
        logit = np.log(state.edge_probability / (1 - state.edge_probability)) + rng.normal(0, 0.3)
        sampler = _sampler(space, rng, logit)
        for _ in range(200):  # cheap draws until one is predicted near the window
            arch = sampler.sample()
            state.drawn += 1
            predicted = slope * cost_proxy(arch) + intercept
            if low_target - residual <= predicted <= high_target + residual and arch.key() not in seen:
                break
        measure_and_record(arch)
    reporter.close()
    return state

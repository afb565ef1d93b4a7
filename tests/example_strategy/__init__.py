"""The smallest complete strategy: random search under a measured budget.

It is the example of docs/design.md ("Adding a strategy"): copied into ``segnas/strategies/random_search/``
it is found, listed by ``segnas search --help``, run by ``segnas search --strategy random-search`` and by the
registry-driven tests, with no other file touched. ``tests/test_strategies.py`` loads it that way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from segnas.cost.budget import Budget, cost_of
from segnas.cost.measure import measure_cost
from segnas.networks.registry import TopologyNetworkSpec
from segnas.spaces.architecture import Architecture
from segnas.spaces.sampler import ArchitectureSampler
from segnas.spaces.topology import TopologySpace
from segnas.strategies.base import SearchStrategy, StrategyOption, StrategyProfile, register_strategy
from segnas.strategies.hypersegnas.candidates import measured_range


@dataclass(frozen=True)
class RandomProfile(StrategyProfile):
    draws: int


@register_strategy
class RandomSearch(SearchStrategy):
    name = "random-search"
    summary = "draw architectures uniformly, keep the costliest one inside the budget"
    profiles = {"tiny": RandomProfile("tiny", TopologySpace(num_blocks=3, num_depths=2, channel_mul=0.125), 1, 8)}
    budget_kinds = ("memory", "parameters")
    options = (StrategyOption("--draws", "architectures drawn per budget", type=int),)

    def measure(self, arch: Architecture):
        plan = self.ctx.plan
        return measure_cost(TopologyNetworkSpec(plan.num_channels, plan.num_classes, arch), plan.patch_size,
                            self.profile.batch_size, self.ctx.device)

    def budget_range(self, kind: str) -> tuple[float, float]:
        return measured_range(self.space, kind, self.measure)

    def run(self, budgets: Sequence[Budget]) -> dict[str, Architecture]:
        results = {}
        for budget in budgets:
            sampler = ArchitectureSampler(self.space, self.ctx.seed)
            drawn = [(arch, self.measure(arch)) for arch in (sampler.sample() for _ in range(self.profile.draws))]
            fitting = [(cost_of(report, budget.kind), arch, report) for arch, report in drawn
                       if cost_of(report, budget.kind) <= budget.value] or [min(
                           (cost_of(report, budget.kind), arch, report) for arch, report in drawn)]
            _, best, report = max(fitting, key=lambda item: item[0])
            best.metadata = {"strategy": self.name, "budget": budget.text, "cost": report.to_dict()}
            self.ctx.folder.save_result(budget.label(), best, f"random search, {budget.text}")
            results[budget.label()] = best
        return results

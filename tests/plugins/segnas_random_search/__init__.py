"""The smallest complete strategy (random search under a measured budget) and a network kind, as a plugin.

It is the example of docs/design.md ("Adding a strategy"). Installed as a package that declares it under the
``segnas.strategies`` and ``segnas.networks`` entry points (``tests/plugins/``), segnas lists it in
``segnas search --help``, runs it with ``segnas search --strategy random-search`` and runs its network kind
(``example-basic-unet``, MONAI's BasicUNet) wherever a network kind goes; the registry-driven tests cover both.
Copied into ``segnas/strategies/random_search/`` instead, the strategy is found as a folder of segnas
(``tests/test_strategies.py::test_a_strategy_is_one_folder``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch.nn as nn
from monai.networks.nets import BasicUNet

from segnas.cost.budget import Budget, cost_of
from segnas.cost.measure import measure_cost
from segnas.networks.registry import NetworkSpec, TopologyNetworkSpec
from segnas.spaces.architecture import Architecture
from segnas.spaces.sampler import ArchitectureSampler
from segnas.spaces.topology import TopologySpace
from segnas.strategies.base import SearchStrategy, StrategyOption, StrategyProfile, measured_range, register_strategy


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
    per_axis_strides = True  # its space (``self.space``) pools thick slices as the plan does

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
            fitting = [(budget.cost_of(report), arch, report) for arch, report in drawn
                       if budget.cost_of(report) <= budget.value] or [min(
                           (budget.cost_of(report), arch, report) for arch, report in drawn)]
            _, best, report = max(fitting, key=lambda item: item[0])
            best.metadata = {"strategy": self.name, "budget": budget.text, "cost": report.to_dict()}
            self.ctx.folder.save_result(budget.label(), best, f"random search, {budget.text}")
            results[budget.label()] = best
        return results


@dataclass(frozen=True, eq=False)
class BasicUNetSpec(NetworkSpec):
    """MONAI's BasicUNet (four poolings, every axis) as a network kind of a plugin."""

    kind: ClassVar[str] = "example-basic-unet"
    summary: ClassVar[str] = "MONAI BasicUNet (a plugin's network kind)"

    features: tuple[int, ...] = (4, 4, 8, 16, 32, 4)

    def build(self) -> nn.Module:
        return BasicUNet(spatial_dims=3, in_channels=self.in_channels, out_channels=self.out_channels,
                         features=self.features)

    def stride(self) -> list[int]:
        return [16, 16, 16]

    @classmethod
    def example(cls, in_channels: int = 1, out_channels: int = 3) -> "BasicUNetSpec":
        return cls(in_channels, out_channels)

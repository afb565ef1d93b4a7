"""``segnas search --strategy dints``: one DiNTS search per budget or ram factor, on the shared super-net.

Search folder (:class:`segnas.strategies.folder.SearchFolder`) plus, per label, ``LABEL/supernet/`` (a run
folder of the one trainer: checkpoints, logs with arch losses and both validations) and
``LABEL/monai_codes.json`` (``node_a``, ``arch_code_a``, ``arch_code_c`` for
``monai.networks.nets.TopologyInstance``). ``arch.json`` holds the decoded architecture with DiNTS's estimated
and the measured memory side by side; under a budget it is the budget-aware decode (the most probable topology
whose measured memory lands inside the budget's window, :func:`segnas.strategies.dints.decode.budget_decode`)
and ``arch_plain.json`` DiNTS's own, so both can be trained (``--decode plain`` makes the plain one the result).

An absolute memory budget is mapped onto DiNTS's relative ``ram_factor`` through the cost module: a few
architectures across the space's density are measured, DiNTS's estimate ratio of each (its relaxed
estimate with the logits saturated on that architecture) is computed, and the budget is placed on the
least-squares line between the two. A budget whose factor falls outside (0, 1] cannot be reached.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn

from segnas.cost.budget import Budget, budget_fit
from segnas.cost.measure import CostReport, measure_cost
from segnas.data.transforms import TrainingBatches, augmentation, cached_cases
from segnas.engine.run import train_or_resume
from segnas.engine.trainer import TrainConfig
from segnas.errors import SegnasInputError
from segnas.networks.registry import SuperNetSpec, TopologyNetworkSpec, register_network
from segnas.networks.topology_net import TopologyNet
from segnas.spaces.architecture import Architecture
from segnas.spaces.sampler import ArchitectureSampler
from segnas.spaces.topology import DINTS_OPS, TopologySpace
from segnas.strategies.base import (SearchStrategy, StrategyOption, StrategyProfile, measured_range,
                                   register_strategy)
from segnas.strategies.bilevel import split_fold
from segnas.strategies.dints.decode import budget_decode, decode_within
from segnas.strategies.dints.relaxation import edge_ram_costs, path_probabilities, ram_cost_usage
from segnas.strategies.dints.search import DintsHook, check_ram_factor
from segnas.utils.files import atomic_write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DintsProfile(StrategyProfile):
    """Sizes of one DiNTS search (DiNTS's optimiser settings: SGD lr 0.025, momentum 0.9, wd 4e-5)."""

    steps: int
    warmup_steps: int
    val_every: int
    lr: float = 0.025
    calibration_architectures: int = 8
    #: "budget": the most probable topology whose measured memory lands inside the budget's window (segnas's
    #: budget-aware decode); "plain": DiNTS's and MONAI's most probable topology (both are recorded either way).
    decode: str = "budget"


PROFILES = {
    "paper": DintsProfile("paper", TopologySpace.named("dints"), batch_size=8, steps=40_000, warmup_steps=20_000,
                          val_every=2000),
    # The HyperSegNAS cpu profile's topology (8 blocks, 3 scales, grid channels 16..64) with DiNTS's five
    # operations, so the two strategies search the same graph on CPU; half the steps are warm-up, as in DiNTS.
    "cpu": DintsProfile("cpu", TopologySpace.named("dints", num_blocks=8, num_depths=3, channel_mul=0.25),
                        batch_size=2, steps=600, warmup_steps=300, val_every=150),
    "tiny": DintsProfile("tiny", TopologySpace.named("dints", num_blocks=3, num_depths=2, channel_mul=0.125),
                         batch_size=1, steps=4, warmup_steps=2, val_every=2, calibration_architectures=3),
}
# The cpu profile with the light stem (as HyperSegNAS's cpu-light; docs/benchmarks.md, "The space's stem").
PROFILES["cpu-light"] = PROFILES["cpu"].replaced({"name": "cpu-light",
                                                  "space": replace(PROFILES["cpu"].space, stem="light")})


def saturated_logits(arch: Architecture, strength: float = 12.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that put (almost) all probability on ``arch``: DiNTS's view of a discrete architecture."""
    log_alpha_a = torch.where(torch.as_tensor(arch.edges), strength, -strength).float()
    one_hot = torch.as_tensor(arch.one_hot())
    log_alpha_c = torch.where(one_hot > 0, strength, 0.0).float()
    return log_alpha_a, log_alpha_c


def estimate_ratio(arch: Architecture, input_size: tuple[int, ...]) -> float:
    """DiNTS's ``usage / usage_full`` for a discrete architecture."""
    a, c = saturated_logits(arch)
    usage = ram_cost_usage(arch.space, a, c, input_size)
    return float(usage / ram_cost_usage(arch.space, a, c, input_size, full=True))


@register_network
@dataclass(frozen=True, eq=False)
class DintsSuperNetSpec(SuperNetSpec):
    """The relaxed super-net of one DiNTS search (``LABEL/supernet/`` of a search folder)."""

    kind: ClassVar[str] = "dints-supernet"
    summary: ClassVar[str] = "DiNTS's relaxed super-net (every edge runs every operation)"

    ram_factor: float = 1.0

    def build(self) -> nn.Module:
        return TopologyNet(self.space, self.in_channels, self.out_channels, merge="sum")

    @classmethod
    def example(cls, in_channels: int = 1, out_channels: int = 3) -> "DintsSuperNetSpec":
        return cls(in_channels, out_channels, PROFILES["tiny"].space, 0.5)

    def forward_kwargs(self) -> dict[str, Any]:
        space = self.space
        log_alpha_a = torch.zeros(space.num_blocks, space.num_edges)
        op_weights = torch.full((space.num_blocks, space.num_edges, space.num_ops), 1 / space.num_ops)
        return {"relaxation": (path_probabilities(log_alpha_a), op_weights)}


@register_strategy
class DintsStrategy(SearchStrategy):
    """DiNTS searches on one dataset, one per budget or ram factor."""

    name = "dints"
    summary = ("differentiable topology search with a memory-usage loss and topology loss on the relaxed "
               "super-net (He et al., CVPR 2021; MONAI-equal)")
    profiles = PROFILES
    budget_kinds = ("memory",)
    per_axis_strides = True
    options = (StrategyOption("--ram-factor", "DiNTS's relative memory target in (0, 1], repeatable; instead of "
                                              "or beside --budget", type=float, repeatable=True),
               StrategyOption("--decode", "with --budget: 'budget' decodes the most probable topology whose measured "
                                          "memory lands inside the budget's window, 'plain' DiNTS's most probable "
                                          "one, which may miss the budget (both are written either way)",
                              choices=("budget", "plain")))
    resume_may_change = ("decode",)
    profile: DintsProfile

    def configure(self, profile: StrategyProfile, options: dict[str, Any]) -> StrategyProfile:
        self.ram_factors: list[float] = [check_ram_factor(f) for f in options["ram_factor"] or []]
        self._calibration: dict[str, Any] | None = None
        return super().configure(profile, options)

    def validate_request(self, budgets: Sequence[Budget]) -> None:
        if not budgets and not self.ram_factors:
            raise SegnasInputError("give --budget (absolute memory) or --ram-factor (DiNTS's relative budget)",
                                   "--budget")
        if budgets:
            super().validate_request(budgets)

    @property
    def input_size(self) -> tuple[int, ...]:
        plan = self.ctx.plan
        return (self.profile.batch_size, plan.num_channels, *plan.patch_size)

    def network(self, arch: Architecture) -> TopologyNetworkSpec:
        return TopologyNetworkSpec(self.ctx.plan.num_channels, self.ctx.plan.num_classes, arch, "sum")

    def measure(self, arch: Architecture) -> CostReport:
        return measure_cost(self.network(arch), self.ctx.plan.patch_size, self.profile.batch_size, self.ctx.device)

    def estimate(self, arch: Architecture) -> float:
        """DiNTS's memory estimate (MB) of a discrete architecture: the sum over its active edges."""
        return float(edge_ram_costs(self.space, arch.ops, self.input_size)[arch.edges].sum())

    # ----- absolute budgets onto ram factors ------------------------------------------------------------------
    def calibration(self) -> dict[str, Any]:
        """The least-squares line from DiNTS's estimate ratio to measured memory (measured once, then cached)."""
        if self._calibration is None:
            ratios, estimates, measured = [], [], []
            count = self.profile.calibration_architectures
            for index in range(count):
                q = (index + 1) / (count + 1)
                arch = ArchitectureSampler(self.space, self.ctx.seed + index, edge_probability=q).sample()
                ratios.append(estimate_ratio(arch, self.input_size))
                estimates.append(self.estimate(arch))
                measured.append(self.measure(arch).memory_bytes)
            slope, intercept = np.polyfit(ratios, measured, 1)
            self._calibration = {"ratios": ratios, "estimates_mb": estimates, "measured_bytes": measured,
                                 "slope": float(slope), "intercept": float(intercept)}
        return self._calibration

    def budget_range(self, kind: str) -> tuple[float, float]:
        """Memory reachable with ram factors in (0, 1] on the calibration line; another kind (a combined budget's
        ceiling) measured on the space's smallest and largest architectures."""
        if kind != "memory":
            return measured_range(self.space, kind, self.measure)
        line = self.calibration()
        ends = (line["intercept"] + line["slope"] * 1e-3, line["intercept"] + line["slope"])
        return min(ends), max(ends)

    def ram_factor_for(self, budget: Budget) -> tuple[float, dict[str, Any]]:
        """Map an absolute memory budget onto DiNTS's ram factor (see the module docstring)."""
        line = self.calibration()
        factor = float((budget.value - line["intercept"]) / line["slope"])
        return check_ram_factor(factor), {**line, "factor": factor}

    # ----- the search ------------------------------------------------------------------------------------------
    def run(self, budgets: Sequence[Budget]) -> dict[str, Architecture]:
        runs = []
        for budget in budgets:
            factor, calibration = self.ram_factor_for(budget)
            runs.append((budget.label(), factor, {"budget": budget.text, "budget_value": budget.value,
                                                  "calibration": calibration}, budget))
        runs += [(f"ram-{factor:g}", factor, {}, None) for factor in self.ram_factors]
        return {label: self.run_one(label, factor, extra, budget) for label, factor, extra, budget in runs}

    def run_one(self, label: str, ram_factor: float, extra: dict[str, Any] | None = None,
                budget: Budget | None = None) -> Architecture:
        """Search with ``ram_factor`` into ``LABEL/``; returns the decoded architecture (also written there):
        with a ``budget`` and the profile's ``decode`` "budget", the budget-aware decode, the plain one beside it
        as ``arch_plain.json``."""
        check_ram_factor(ram_factor)
        ctx, profile = self.ctx, self.profile
        space = self.space  # the plan's per-axis pooling (thick slices pooled fewer times)
        folder = ctx.folder.budget_dir(label)
        plan, arch_ids = split_fold(ctx.plan, ctx.fold, ctx.seed)
        arch_batches = TrainingBatches(cached_cases(ctx.dataset, plan, arch_ids, show_progress=False),
                                       augmentation(plan, "full"), profile.batch_size, ctx.seed + 1, profile.steps)
        hook = DintsHook(space, arch_batches, profile.warmup_steps, profile.steps, ram_factor,
                         self.input_size, ctx.seed)
        torch.manual_seed(ctx.seed)
        supernet = TopologyNet(space, plan.num_channels, plan.num_classes, merge="sum")
        config = TrainConfig(max_steps=profile.steps, batch_size=profile.batch_size, optimizer="sgd", lr=profile.lr,
                             momentum=0.9, weight_decay=4e-5, val_every=profile.val_every, seed=ctx.seed,
                             checkpoint_every=max(profile.val_every, 1))
        network = DintsSuperNetSpec(plan.num_channels, plan.num_classes, space, ram_factor)
        record = train_or_resume(ctx.data_dir, plan, network, folder / "supernet", ctx.fold, config,
                                 device=str(ctx.device), augment="full", hooks=[hook], model=supernet,
                                 spec=ctx.dataset, show_progress=ctx.show_progress)
        estimate = float(ram_cost_usage(space, hook.log_alpha_a.detach(), hook.log_alpha_c.detach(),
                                        self.input_size))
        facts = {**(extra or {}), "estimated_memory_mb": estimate,
                 "val_dice_decoded": record["validation"].get("val_dice"),
                 "val_dice_relaxed": record["validation"].get("val_dice_relaxed"),
                 "search_seconds": record["train_seconds"]}
        plain = self._described(hook.decoded(), facts, "plain", budget)
        arch = plain
        if budget is not None and profile.decode == "budget":
            arch = self.budget_decoded(hook, budget, facts, plain)
            plain.save(folder / "arch_plain.json")
        ctx.folder.save_result(label, arch, f"DiNTS, {label}" + (f" ({arch.metadata['decode']} decode)"
                                                                  if budget is not None else ""))
        node_a, code_a, code_c = arch.to_monai_codes()
        atomic_write_text(folder / "monai_codes.json", json.dumps(
            {"node_a": node_a.tolist(), "arch_code_a": code_a.astype(int).tolist(), "arch_code_c": code_c.tolist(),
             "monai_ops": list(DINTS_OPS), "num_blocks": space.num_blocks,
             "num_depths": space.num_depths, "channel_mul": space.channel_mul,
             "use_downsample": space.stem_downsample,
             "stem": space.stem}, indent=1) + "\n")  # MONAI's DiNTS has only the "dints" stem
        return arch

    def _described(self, arch: Architecture, facts: dict[str, Any], decode: str,
                   budget: Budget | None) -> Architecture:
        """``arch`` with the search's facts, its measured cost and how it met the budget in its metadata."""
        cost = self.measure(arch)
        arch.metadata.update(facts, decode=decode, estimated_ratio=estimate_ratio(arch, self.input_size),
                             estimated_arch_mb=self.estimate(arch), cost=cost.to_dict(),
                             measured_memory_mb=cost.memory_bytes / 2**20)
        if budget is not None:
            arch.metadata["budget_fit"] = budget_fit(budget, cost)
        return arch

    def budget_decoded(self, hook: DintsHook, budget: Budget, facts: dict[str, Any],
                       plain: Architecture) -> Architecture:
        """The most probable topology whose measured memory lands inside ``budget``'s window
        (:func:`budget_decode` over :func:`decode_within`, calibrated on the calibration architectures and the
        plain decode); the plain decode when it already does; when nothing measures under the budget, the cheapest
        decode measured (a trial or the plain one), recorded as over it."""
        plain_fit = plain.metadata["budget_fit"]
        summary = {"key": plain.key(), "measured": plain_fit["measured"], "ratio": plain_fit["ratio"],
                   "inside_window": plain_fit["inside_window"]}
        if plain_fit["inside_window"]:
            plain.metadata.update(decode_trials=[], plain_decode=summary)
            return plain
        line = self.calibration()
        points = [*zip(line["estimates_mb"], line["measured_bytes"]),
                  (plain.metadata["estimated_arch_mb"], plain_fit["measured"])]
        ops = hook.log_alpha_c.detach().cpu().numpy().argmax(-1)
        edge_cost = edge_ram_costs(self.space, ops, self.input_size)

        def between(low: float, high: float) -> Architecture | None:
            return decode_within(self.space, hook.log_alpha_a, hook.log_alpha_c, edge_cost, low, high, hook.patterns)

        found, trials = budget_decode(between, self.estimate, lambda a: budget.cost_of(self.measure(a)), points, budget)
        found_cost = math.inf if found is None else budget.cost_of(self.measure(found))
        if found_cost > budget.value:  # nothing under the budget: the cheapest decode measured, trial or plain
            log.warning("%s: no decoded topology measured inside or under the budget; the cheapest one measured is "
                        "kept (%.0f%% of the budget)", budget.text,
                        100 * min(found_cost, plain_fit["measured"]) / budget.value)
            if found_cost >= plain_fit["measured"]:
                plain.metadata.update(decode="plain (budget-aware decode found nothing under the budget)",
                                      decode_trials=trials, plain_decode=summary)
                return plain
        decode = "budget" if found_cost <= budget.value else \
            "cheapest (budget-aware decode found nothing under the budget)"
        arch = self._described(found, facts, decode, budget)
        arch.metadata.update(ram_factor=plain.metadata["ram_factor"], decode_trials=trials, plain_decode=summary)
        return arch

    def describe(self, label: str, arch: Architecture) -> str:
        meta = arch.metadata
        return (f"{label}: ram factor {meta['ram_factor']:.3f}, DiNTS estimate {meta['estimated_memory_mb']:.0f} MB, "
                f"measured {meta['measured_memory_mb']:.0f} MiB, validation Dice decoded "
                f"{meta['val_dice_decoded']:.3f} / relaxed {meta['val_dice_relaxed']:.3f}")

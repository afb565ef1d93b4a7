"""``segnas search --strategy scalable-nas``: every layer of a U-Net searched as a cell (operations and
connections), by stochastic sampling over the continuous relaxation (Kim et al. 2019).

Search folder (:class:`segnas.strategies.folder.SearchFolder`), per label (``cells``, or ``budget-...``)::

    LABEL/supernet/          the search: a run folder of the one trainer (weights and logits trained jointly)
    LABEL/cost_table.json    the measured per-edge cost model behind a budget (budgeted searches)
    LABEL/arch.json          the derived U-Net of cells (the ``cells`` architecture kind, placement
                             ``encoder-decoder``), trained from scratch by ``segnas train --arch``
    LABEL/arch.png           its four cells
    LABEL/probabilities.png  each cell type's final operation probabilities per edge

Budgets (``parameters`` or ``memory``, optional): a penalty on the expected cost during the search and a
constraint on the derivation (the most probable cells, then swaps at the cheapest loss of probability per unit
of cost moved: up while the *measured* cost is under the budget's window ``[b - 3%, b]``, down while it is over
``b``); the measured cost is reported against that window.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn

from segnas.cost.budget import BUDGET_WINDOW, Budget, budget_fit, cost_of
from segnas.cost.measure import CostReport, measure_cost
from segnas.engine.evaluator import Evaluator
from segnas.engine.run import FINAL_MODEL, load_model, train_or_resume
from segnas.engine.trainer import TrainConfig
from segnas.errors import SegnasInputError
from segnas.networks.cell_unet import CellUNet
from segnas.data.plan import LevelStrides, level_scale
from segnas.networks.registry import OMIT_IF_NONE, CellUNetSpec, NetworkSpec, cell_unet_host, register_network, spec_strides
from segnas.report.plots import cell_probabilities_figure
from segnas.spaces.cells import CELL_OPS, UNET_CELL_TYPES, CellArchitecture, CellSpace, Genotype, uniform_genotype
from segnas.strategies.base import SearchStrategy, StrategyOption, StrategyProfile, register_strategy
from segnas.strategies.scalable_nas.sampling import SAMPLINGS, CostTable, SamplingSearchHook, masked_ops
from segnas.utils.distributed import is_main
from segnas.utils.files import atomic_write_text

log = logging.getLogger(__name__)

LABEL = "cells"


@dataclass(frozen=True)
class ScalableProfile(StrategyProfile):
    """Sizes of one Scalable NAS search: the U-Net of cells (``channels`` at the first of ``levels``), the
    joint search's ``steps`` (the first ``warmup_steps`` train weights only, on uniform draws), the weights'
    ``lr`` (AdamW, the trainer's), the logits' ``arch_lr`` (Adam), the temperature's decay, the budget
    ``penalty`` and how the discretisation gap is measured (``gap_samples`` draws on ``score_cases`` cases)."""

    channels: int = 8
    levels: int = 3
    steps: int = 600
    warmup_steps: int = 150
    lr: float = 3e-3
    arch_lr: float = 1e-2
    sampling: str = "gumbel"
    tau_start: float = 5.0
    tau_end: float = 0.5
    penalty: float = 1.0
    val_every: int = 150
    score_cases: int | None = 20
    gap_samples: int = 4

    def __post_init__(self) -> None:
        problems = []
        if self.sampling not in SAMPLINGS:
            problems.append(f"--sampling must be one of {list(SAMPLINGS)}, got {self.sampling!r}")
        if self.space.inputs != 2 or self.space.placement != "encoder-decoder":
            problems.append("the space must have 2-input cells placed 'encoder-decoder'")
        if min(self.channels, self.levels - 1, self.steps, self.gap_samples) < 1:
            problems.append("channels, steps and gap samples must be >= 1 and levels >= 2")
        if not 0 <= self.warmup_steps < self.steps:
            problems.append(f"warm-up steps must lie in [0, steps), got {self.warmup_steps} of {self.steps}")
        if not 0 < self.tau_end <= self.tau_start:
            problems.append(f"the temperature must decay: 0 < tau_end <= tau_start, got {self.tau_start} -> "
                            f"{self.tau_end}")
        if problems:
            raise SegnasInputError("; ".join(problems), "--profile")


def _space(nodes: int, ops: tuple[str, ...] = CELL_OPS) -> CellSpace:
    return CellSpace(ops, nodes=nodes, placement="encoder-decoder")


PROFILES = {
    # The paper's scale where it says it (a 3D U-Net of four resolution levels whose every layer is a cell, DARTS
    # cells of 4 nodes); the step counts are segnas's choice (docs/design.md, "Scalable NAS").
    "paper": ScalableProfile("paper", _space(4), batch_size=2, channels=16, levels=4, steps=40_000,
                             warmup_steps=10_000, arch_lr=3e-4, val_every=2000, score_cases=None, gap_samples=8),
    # About 6 minutes on 2 CPU cores at Hippocampus's patch (36x52x36): 8..32 channels over 3 levels, 2-node cells,
    # 600 steps. Without the 5x5x5 separable convolution: CPUs have no fast depthwise 3D kernel, and it took 327 ms
    # forward and backward on 8 channels of that patch against 22 ms for a dense 3x3x3 convolution.
    "cpu": ScalableProfile("cpu", _space(2, tuple(op for op in CELL_OPS if op != "sep_conv_5x5x5")), batch_size=2,
                           steps=600, warmup_steps=150, val_every=150),
    "tiny": ScalableProfile("tiny", _space(2, ("zero", "skip_connect", "conv_3x3x3", "avg_pool_3x3x3")),
                            batch_size=1, channels=4, levels=2, steps=4, warmup_steps=1, val_every=2, score_cases=1,
                            gap_samples=2),
}


@register_network
@dataclass(frozen=True, eq=False)
class ScalableSearchNetSpec(NetworkSpec):
    """Scalable NAS's search network: a U-Net of relaxed cells (every candidate operation's weights)."""

    kind: ClassVar[str] = "scalable-search-net"
    summary: ClassVar[str] = "Scalable NAS's search network: a U-Net of relaxed cells, run on drawn networks"

    space: CellSpace
    channels: int
    levels: int
    strides: LevelStrides | None = field(default=None, metadata={OMIT_IF_NONE: True})

    def __post_init__(self) -> None:
        object.__setattr__(self, "strides", spec_strides(self.strides, self.levels - 1, self.kind))

    def build(self) -> nn.Module:
        return CellUNet(self.space, self.in_channels, self.out_channels, self.channels, self.levels,
                        strides=self.strides)

    def stride(self) -> list[int]:
        return list(level_scale(self.strides, self.levels - 1))

    @classmethod
    def example(cls, in_channels: int = 1, out_channels: int = 3) -> "ScalableSearchNetSpec":
        tiny = PROFILES["tiny"]
        return cls(in_channels, out_channels, tiny.space, tiny.channels, tiny.levels)

    def forward_kwargs(self) -> dict[str, Any]:
        """The full relaxation at uniform weights."""
        weights = masked_ops(self.space).float() / int(masked_ops(self.space).sum())
        op_weights = weights.expand(self.space.num_edges, -1)
        edge_weights = torch.cat([torch.full((len(self.space.node_edges(n)),), 1 / len(self.space.node_edges(n)))
                                  for n in range(self.space.nodes)])
        return {"cells": {t: {"op_weights": op_weights, "edge_weights": edge_weights} for t in UNET_CELL_TYPES}}


def uniform_genotypes(space: CellSpace, op: str) -> dict[str, Genotype]:
    """Every cell type's nodes keep their first ``keep`` candidate edges, all running ``op``."""
    return {t: uniform_genotype(space, op) for t in UNET_CELL_TYPES}


@register_strategy
class ScalableNasStrategy(SearchStrategy):
    """A U-Net of cells searched by stochastic sampling; optionally under a parameter or memory budget."""

    name = "scalable-nas"
    summary = ("every U-Net layer a searched cell (operations and connections), stochastic sampling over the "
               "continuous relaxation (Kim et al. 2019)")
    profiles = PROFILES
    budget_kinds = ("parameters", "memory")
    budget_optional = True  # no budget is fine: the search then finds the most probable network
    options = (
        StrategyOption("--sampling", "gumbel: one drawn network per step (the paper's); full: every candidate "
                                     "run, DARTS's relaxation (the baseline)", choices=SAMPLINGS),
        StrategyOption("--steps", "search steps (weights and logits jointly)", type=int),
        StrategyOption("--warmup-steps", "weight-only steps first, on uniformly drawn networks", type=int),
        StrategyOption("--arch-lr", "Adam's learning rate on the logits", type=float),
        StrategyOption("--penalty", "weight of the budget penalty max(0, E[cost]/budget - 1)", type=float),
    )
    per_axis_strides = True
    profile: ScalableProfile

    def plan_stride(self) -> int:
        return 2 ** (self.profile.levels - 1)

    # ----- cost ---------------------------------------------------------------------------------------------
    def network(self, genotypes: dict[str, Genotype]) -> CellUNetSpec:
        plan, profile = self.ctx.plan, self.profile
        host = cell_unet_host(plan.num_channels, plan.num_classes, profile.channels, profile.levels,
                              self.level_strides(profile.levels - 1))
        return CellUNetSpec(plan.num_channels, plan.num_classes, CellArchitecture(profile.space, host, genotypes))

    def measure(self, genotypes: dict[str, Genotype]) -> CostReport:
        return measure_cost(self.network(genotypes), self.ctx.plan.patch_size, self.profile.batch_size,
                            self.ctx.device)

    def cost_table(self, kind: str) -> CostTable:
        """The measured per-edge cost of every (cell type, operation): the network with every kept edge
        ``skip_connect`` against the one whose cells of that type run the operation on every kept edge."""
        base_cells = uniform_genotypes(self.space, "skip_connect")
        base = cost_of(self.measure(base_cells), kind)
        kept = sum(len(node) for node in base_cells[UNET_CELL_TYPES[0]])
        per_edge: dict[str, dict[str, float]] = {}
        for cell_type in UNET_CELL_TYPES:
            per_edge[cell_type] = {"skip_connect": 0.0}
            for op in self.space.ops:
                if op not in ("zero", "skip_connect"):
                    cells = {**base_cells, cell_type: uniform_genotypes(self.space, op)[cell_type]}
                    per_edge[cell_type][op] = (cost_of(self.measure(cells), kind) - base) / kept
        return CostTable(kind, base, per_edge)

    def extreme_genotypes(self, table: CostTable, cheapest: bool) -> dict[str, Genotype]:
        """Every kept edge of each type running its cheapest (or costliest) operation by ``table``."""
        pick = min if cheapest else max
        return {t: uniform_genotypes(self.space, pick(table.per_edge[t], key=table.per_edge[t].get))[t]
                for t in UNET_CELL_TYPES}

    def budget_range(self, kind: str) -> tuple[float, float]:
        table = self.cost_table(kind)
        return tuple(sorted(cost_of(self.measure(self.extreme_genotypes(table, cheapest)), kind)
                            for cheapest in (True, False)))  # type: ignore[return-value]

    def fit_budget(self, hook: SamplingSearchHook, budget: Budget, table: CostTable
                   ) -> tuple[dict[str, Genotype], CostReport, dict[str, int]]:
        """The most probable cells, made to land in the budget's window ``[b - 3%, b]`` by measured cost.

        Up: while the measured cost is under the window, swap one kept edge's operation for a costlier one, the
        swap that loses the least log-probability per unit of modelled cost added among those the room left
        (``b`` minus the measured cost) admits, and measure again. The search's expected cost sits at the
        budget while each edge's most probable operation is often the cheapest (measured at 568 MiB: 66% of
        the budget), so without this step the derivation wastes the budget the search was given.
        Down: while the measured cost exceeds ``b``, swap operations for cheaper ones, each time the swap that
        loses the least log-probability per unit of modelled cost saved, until the model predicts the measured
        overshoot is gone. Returns the cells, their measured cost and the swaps made each way."""
        editable = {t: [list(map(list, kept)) for kept in g] for t, g in hook.genotypes().items()}

        def frozen() -> dict[str, Genotype]:
            return {t: tuple(tuple((s, op) for s, op in kept) for kept in g) for t, g in editable.items()}

        log_probs = {t: np.log(p + 1e-12) for t, p in hook.probabilities().items()}
        ops = list(self.space.ops)

        def best_swap(up: bool, room: float = float("inf")) -> tuple[str, int, int, str] | None:
            """The swap (type, node, slot, operation) losing the least log-probability per unit of modelled
            cost moved in the wanted direction, moving at most ``room``; None when no swap qualifies."""
            best = None  # (log-probability lost per unit of cost moved, type, node, slot, operation)
            for t, cells in editable.items():
                for node, kept in enumerate(cells):
                    for slot, (source, op) in enumerate(kept):
                        edge = self.space.node_edges(node)[source]
                        for other, cost in table.per_edge[t].items():
                            moved = (cost - table.per_edge[t][op]) * (1 if up else -1)
                            lost = log_probs[t][edge, ops.index(op)] - log_probs[t][edge, ops.index(other)]
                            if 0 < moved <= room and (best is None or lost / moved < best[0]):
                                best = (lost / moved, t, node, slot, other)
            return None if best is None else best[1:]

        swaps = {"up": 0, "down": 0}
        report = self.measure(frozen())
        while budget.cost_of(report) < budget.value * (1 - BUDGET_WINDOW):
            swap = best_swap(up=True, room=budget.value - budget.cost_of(report))
            if swap is None:
                break
            t, node, slot, other = swap
            editable[t][node][slot][1] = other
            swaps["up"] += 1
            report = self.measure(frozen())
        while budget.cost_of(report) > budget.value:
            target = table.of(frozen()) - (budget.cost_of(report) - budget.value)
            while table.of(frozen()) > target:
                swap = best_swap(up=False)
                if swap is None:
                    raise SegnasInputError(f"budget {budget.text} cannot be met: every edge already runs its "
                                           "cheapest operation", "--budget")
                t, node, slot, other = swap
                editable[t][node][slot][1] = other
                swaps["down"] += 1
            report = self.measure(frozen())
        log.info("derivation for %s: %d swaps up, %d down; measured %.4g of %.4g", budget.text, swaps["up"],
                 swaps["down"], budget.cost_of(report), budget.value)
        return frozen(), report, swaps

    # ----- the search ---------------------------------------------------------------------------------------
    def run(self, budgets: Sequence[Budget]) -> dict[str, CellArchitecture]:
        return {label: self.search_one(label, budget)
                for label, budget in ([(b.label(), b) for b in budgets] or [(LABEL, None)])}

    def search_one(self, label: str, budget: Budget | None) -> CellArchitecture:
        ctx, profile = self.ctx, self.profile
        folder = ctx.folder.budget_dir(label)
        table = self.cost_table(budget.kind) if budget else None
        if table is not None and is_main():
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / "cost_table.json", json.dumps(table.to_dict(), indent=1) + "\n")
        hook = SamplingSearchHook(profile.space, profile.steps, profile.warmup_steps, profile.sampling,
                                  profile.tau_start, profile.tau_end, profile.arch_lr, ctx.seed,
                                  budget.value if budget else None, table, profile.penalty)
        spec = ScalableSearchNetSpec(ctx.plan.num_channels, ctx.plan.num_classes, profile.space, profile.channels,
                                     profile.levels, self.level_strides(profile.levels - 1))
        config = TrainConfig(max_steps=profile.steps, batch_size=profile.batch_size, lr=profile.lr, seed=ctx.seed,
                             val_every=profile.val_every, checkpoint_every=max(profile.steps // 20, 1))
        record = train_or_resume(ctx.data_dir, ctx.plan, spec, folder / "supernet", ctx.fold, config,
                                 device=str(ctx.device), augment="full", hooks=[hook], spec=ctx.dataset,
                                 show_progress=ctx.show_progress)
        if budget is not None:
            genotypes, cost, swaps = self.fit_budget(hook, budget, table)
        else:
            genotypes, swaps = hook.genotypes(), {"up": 0, "down": 0}
            cost = self.measure(genotypes)
        arch = self.network(genotypes).architecture
        arch.metadata.update(strategy=self.name, sampling=profile.sampling, steps=record["steps"],
                             search_seconds=record["train_seconds"], cost=cost.to_dict(),
                             derivation_swaps=swaps, **self.discretisation_gap(hook, folder))
        if budget is not None:
            arch.metadata["budget"] = budget_fit(budget, cost)
        ctx.folder.save_result(label, arch, f"Scalable NAS ({profile.sampling}), {record['steps']} steps")
        if is_main():
            cell_probabilities_figure(profile.space, hook.probabilities(), hook.genotypes(),
                                      folder / "probabilities.png")
        return arch

    def discretisation_gap(self, hook: SamplingSearchHook, folder: Any) -> dict[str, float]:
        """Foreground Dice of the search net as it was trained (``gumbel``: the mean of ``gap_samples`` draws at
        the final temperature; ``full``: the relaxed mixture) and of the derived network inside it (inherited
        weights, no retraining): the discretisation gap is their difference."""
        ctx, profile = self.ctx, self.profile
        model, _ = load_model(folder / "supernet" / FINAL_MODEL, ctx.device)
        evaluator = Evaluator(ctx.data_dir, ctx.dataset, ctx.plan, ctx.fold, ctx.device, profile.batch_size,
                              profile.lr, ctx.seed, profile.score_cases, show_progress=False)
        derived = evaluator.score(model, forward_kwargs={"cells": hook.derived_kwargs(ctx.device)})
        hook.generator.manual_seed(ctx.seed + 99)  # the same draws whenever the gap is measured again
        draws = 1 if profile.sampling == "full" else profile.gap_samples
        with torch.no_grad():
            trained = float(np.mean([evaluator.score(model, forward_kwargs={
                "cells": hook.cells_kwargs(profile.steps - 1, ctx.device)}) for _ in range(draws)]))
        return {"score_as_trained": trained, "score_derived_inherited": derived, "discretisation_gap": trained - derived}

    def describe(self, label: str, arch: CellArchitecture) -> str:  # type: ignore[override]
        meta = arch.metadata
        budget = meta.get("budget")
        fit = "" if not budget else (f", {budget['ratio']:.1%} of {budget['text']}"
                                     f"{' (inside the window)' if budget['inside_window'] else ''}")
        return (f"{label}: {meta['cost']['parameters']:,} parameters, measured memory "
                f"{meta['cost']['memory_bytes']:,} B{fit}; discretisation gap {meta['discretisation_gap']:+.3f}\n"
                f"{arch.summary()}")


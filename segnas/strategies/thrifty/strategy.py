"""``segnas search --strategy thrifty``: Thrifty NAS (Chen et al., AAAI 2022): one cell (micro level) and the path
of cells over resolutions (macro level), searched jointly, then made to spend a parameter or memory budget.

Only the paper's abstract is public; the rest follows the field (docs/design.md, "Thrifty NAS"): DARTS's
relaxation of one cell on a cheap operation set, Auto-DeepLab's relaxation of the path over a trimmed lattice,
first-order bilevel optimisation, a thrift term on a cost model, and (as DARTS evaluates a wider network than
it searched) the derived network's widths fitted to the budget by measuring it.

Search folder (:class:`segnas.strategies.folder.SearchFolder`)::

    search/supernet/        the joint search (a run folder of the one trainer), shared by every budget
    search/path.png         where the path may run (visit probabilities) and the decoded path
    search/probabilities.png  the cell's operation probabilities, the derived cell framed
    LABEL/arch.json         the cell and path at the widths that spend the budget (``cells`` kind, ``cell-path``)
    LABEL/arch.png          its drawing
    LABEL/width_fit.json    every width tried and its cost: how the budget was met

Without ``--budget`` the profile's default budget is used (the paper's 0.6M parameters for ``cpu`` and
``paper``) and recorded as such in ``arch.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from segnas.cost.budget import BUDGET_WINDOW, Budget, budget_fit, cost_of, parse_budget
from segnas.cost.measure import CostReport, measure_cost
from segnas.data.transforms import TrainingBatches, augmentation, cached_cases
from segnas.engine.run import train_or_resume
from segnas.engine.trainer import TrainConfig
from segnas.errors import SegnasInputError
from segnas.report.plots import cell_probabilities_figure
from segnas.spaces.cells import CellArchitecture, CellSpace, Genotype
from segnas.strategies.base import SearchStrategy, StrategyOption, StrategyProfile, register_strategy
from segnas.strategies.bilevel import split_fold
from segnas.strategies.thrifty.network import NORMAL_CELL, CellPathSpec, ThriftySearchNetSpec, cell_path_host
from segnas.strategies.thrifty.path import u_path
from segnas.strategies.thrifty.plots import path_figure
from segnas.strategies.thrifty.search import SEARCHES, ThriftCostModel, ThriftySearchHook, reference_genotype
from segnas.utils.distributed import is_main
from segnas.utils.files import atomic_write_text

log = logging.getLogger(__name__)

SEARCH_LABEL = "search"
#: The cheap candidate operations of Thrifty NAS's cell (its abstract: "minuscule" models): separable and
#: dilated convolutions, identity, pooling, and zero (lets DARTS's relaxation weigh dropping an edge).
THRIFTY_OPS = ("zero", "skip_connect", "max_pool_3x3x3", "avg_pool_3x3x3", "sep_conv_3x3x3", "dil_conv_3x3x3")
#: Bisection steps on the level-0 width before the per-level fill.
BISECTION_STEPS = 16
#: The fit may widen a network up to this many times ``max_channels`` (which bounds the reference's range).
WIDEST_FIT = 8


@dataclass(frozen=True)
class ThriftyProfile(StrategyProfile):
    """Sizes of one Thrifty NAS search: the lattice (``layers`` cells over ``levels`` resolutions), the search
    network's level-0 ``channels`` (level ``s`` has ``channels * 2**s``; PC-DARTS's ``partial`` channels on its
    relaxed edges), the bilevel search's ``steps`` (weights only for ``warmup_steps``), the thrift term's weight,
    which levels are searched, the default budget, and the widest level-0 width the budget fit may use."""

    layers: int = 6
    levels: int = 3
    channels: int = 8
    partial: int = 1
    steps: int = 600
    warmup_steps: int = 200
    lr: float = 3e-3
    arch_lr: float = 3e-3
    thrift: float = 1.0
    search: str = "both"
    val_every: int = 200
    default_budget: str = "0.6Mparams"
    max_channels: int = 128

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.space, CellSpace) or self.space.inputs != 2 or self.space.placement != "cell-path":
            problems.append("the space must have 2-input cells placed 'cell-path'")
        if self.search not in SEARCHES:
            problems.append(f"--search must be one of {list(SEARCHES)}, got {self.search!r}")
        if min(self.layers, self.channels, self.partial, self.steps) < 1 or self.levels < 2:
            problems.append("layers, channels, partial channels and steps must be >= 1, levels >= 2")
        if self.layers < 2 * (self.levels - 1):
            problems.append(f"{self.layers} layers cannot reach level {self.levels - 1} and come back")
        if self.channels % self.partial:
            problems.append(f"{self.channels} channels cannot be split in {self.partial} partial-channel groups")
        if not 0 <= self.warmup_steps < self.steps:
            problems.append(f"warm-up steps must lie in [0, steps), got {self.warmup_steps} of {self.steps}")
        if self.thrift < 0 or self.max_channels < 2:
            problems.append("the thrift weight must be >= 0 and the widest width >= 2")
        if problems:
            raise SegnasInputError("; ".join(problems), "--profile")

    @property
    def search_widths(self) -> tuple[int, ...]:
        return tuple(self.channels * 2**level for level in range(self.levels))


def _space(nodes: int, ops: tuple[str, ...] = THRIFTY_OPS) -> CellSpace:
    return CellSpace(ops, nodes=nodes, placement="cell-path")

PROFILES = {
    # Auto-DeepLab's lattice depth scaled to 3D (8 layers over 4 resolutions), DARTS's 4-node cell, PC-DARTS's
    # quarter channels; the step counts are segnas's choice (docs/design.md, "Thrifty NAS").
    "paper": ThriftyProfile("paper", _space(4), batch_size=2, layers=8, levels=4, channels=8, partial=4,
                            steps=20_000, warmup_steps=5000, val_every=2000),
    # About an hour on 2 CPU cores at Hippocampus's patch (36x52x36): 5 layers over 3 resolutions (21 relaxed
    # cells), 2-node cells on 4..16 channels, half of them through the mixed operations, 600 steps (about 3 s
    # forward and backward on a batch of 2; each step runs one for the weights and one for the logits). Without
    # max pooling: average pooling is the space's cheaper pooling already. It searches the cell on the U-Net path
    # (``micro``) by default: at 0.6M parameters that network trained to 0.833 +- 0.001 Dice against 0.788 +- 0.002
    # for the joint search's (2 seeds, 300 steps; docs/benchmarks.md, "What each level contributes"); ``--search
    # both`` is the paper's joint search.
    "cpu": ThriftyProfile("cpu", _space(2, tuple(op for op in THRIFTY_OPS if op != "max_pool_3x3x3")), batch_size=2,
                          layers=5, levels=3, channels=4, partial=2, steps=600, warmup_steps=200, val_every=200,
                          search="micro"),
    "tiny": ThriftyProfile("tiny", _space(2, ("zero", "skip_connect", "avg_pool_3x3x3", "sep_conv_3x3x3")),
                           batch_size=1, layers=3, levels=2, channels=2, steps=4, warmup_steps=1, val_every=4,
                           default_budget="3kparams", max_channels=8),
}


def level_widths(channels: float, levels: int) -> list[int]:
    """The widths of a network ``channels`` wide at level 0, doubling per level (at least 2 each)."""
    return [max(2, round(channels * 2**level)) for level in range(levels)]


@register_strategy
class ThriftyStrategy(SearchStrategy):
    """One cell and its path over resolutions, searched jointly, fitted to a parameter or memory budget."""

    name = "thrifty"
    summary = ("one cell (micro) and its path over resolutions (macro) searched jointly, fitted to a parameter "
               "or memory budget for very small networks (Thrifty NAS, Chen et al. 2022)")
    profiles = PROFILES
    budget_kinds = ("parameters", "memory")
    budget_optional = True  # no budget is fine: the profile's default is used
    #: Settings of the derivation only: a resumed search may change them (it derives again, without searching).
    resume_may_change = ("default_budget", "max_channels")
    options = (
        StrategyOption("--search", "both: cell and path (Thrifty NAS; the paper and tiny profiles' default); micro: "
                                   "the cell on the U-Net path (the cpu profile's default, measured better at its "
                                   "scale); macro: the path of a fixed separable-convolution cell", choices=SEARCHES),
        StrategyOption("--steps", "search steps", type=int),
        StrategyOption("--warmup-steps", "weight-only steps first", type=int),
        StrategyOption("--thrift", "weight of the thrift term max(0, E[cost] / reference cost - 1)", type=float),
        StrategyOption("--arch-lr", "Adam's learning rate on the logits", type=float),
    )
    profile: ThriftyProfile

    def default_budget(self) -> Budget:
        return parse_budget(self.profile.default_budget)

    def check_budgets(self, budgets: Sequence[Budget]) -> None:
        super().check_budgets(list(budgets) or [self.default_budget()])

    per_axis_strides = True

    def plan_stride(self) -> int:
        return 2 ** self.profile.levels  # the stem's halving, then levels - 1 more

    # ----- networks and their cost ----------------------------------------------------------------------------
    def network(self, path: Sequence[int], genotype: Genotype, widths: Sequence[int]) -> CellPathSpec:
        plan = self.ctx.plan
        host = cell_path_host(plan.num_channels, plan.num_classes, widths, path, self.level_strides(len(widths)))
        return CellPathSpec(plan.num_channels, plan.num_classes,
                            CellArchitecture(self.space, host, {NORMAL_CELL: genotype}))

    def measure(self, network: CellPathSpec) -> CostReport:
        return measure_cost(network, self.ctx.plan.patch_size, self.profile.batch_size, self.ctx.device)

    def cost(self, network: CellPathSpec, kind: str) -> float:
        """The figure a budget of ``kind`` limits: parameters counted on the built module (exactly what the
        measurement reports, without its training steps), any other kind measured."""
        if kind == "parameters":
            return float(sum(p.numel() for p in network.build().parameters()))
        return cost_of(self.measure(network), kind)

    def budget_range(self, kind: str) -> tuple[float, float]:
        """The reference network's cost (the U-Net path, every kept edge a separable convolution) from the
        narrowest widths to the widest (``max_channels`` at level 0): the budgets whose width a searched network
        is fitted to. A searched network's own range differs; a budget outside it is refused after the search,
        with its range (the search is kept: ``--resume`` with another budget derives again without searching)."""
        profile = self.profile
        reference = u_path(profile.layers, profile.levels), reference_genotype(self.space)
        return tuple(sorted(self.cost(self.network(*reference, level_widths(channels, profile.levels)), kind)
                            for channels in (1, profile.max_channels)))  # type: ignore[return-value]

    def fit_widths(self, path: Sequence[int], genotype: Genotype, budget: Budget
                   ) -> tuple[list[int], list[dict[str, Any]]]:
        """The widths at which the network of ``path`` and ``genotype`` spends ``budget``: bisection on the
        level-0 width (levels doubling; up to ``WIDEST_FIT * max_channels``), then, while the cost is below the
        window, the step that spends the most within the budget among one channel more on a level, or one more on
        a level and one fewer on another. Returns the widths and every trial."""
        levels = self.profile.levels
        trials: list[dict[str, Any]] = []

        def cost_at(widths: list[int]) -> float:
            for trial in trials:
                if trial["widths"] == widths:
                    return trial["cost"]
            network = self.network(path, genotype, widths)
            value = budget.cost_of(self.measure(network)) if budget.ceilings else self.cost(network, budget.kind)
            trials.append({"widths": widths, "cost": value})
            # each trial measures training steps (seconds to minutes at a large patch): say how the fit goes
            log.info("fitting widths to %s: trial %d, widths %s cost %s of %s", budget.text, len(trials), widths,
                     f"{value:,.0f}", f"{budget.value:,.0f}")
            return value

        low, high = 1.0, float(self.profile.max_channels)
        while cost_at(level_widths(high, levels)) < budget.value and high < WIDEST_FIT * self.profile.max_channels:
            high *= 2  # a network cheaper than the reference may need more than max_channels to spend the budget
        narrowest, widest = cost_at(level_widths(low, levels)), cost_at(level_widths(high, levels))
        if not narrowest <= budget.value or widest < budget.value * (1 - BUDGET_WINDOW):
            raise SegnasInputError(
                f"budget {budget.text} cannot be spent by the searched network (path {list(path)}): from its "
                f"narrowest to its widest widths it costs {narrowest:,.0f} to {widest:,.0f} {budget.kind}; the search "
                "is kept, run again with --resume and a budget in that range", "--budget")
        best = level_widths(low, levels)
        if widest <= budget.value:
            best, low = level_widths(high, levels), high
        for _ in range(BISECTION_STEPS):
            if high - low < 0.25:
                break
            middle = (low + high) / 2
            if cost_at(level_widths(middle, levels)) <= budget.value:
                low, best = middle, level_widths(middle, levels)
            else:
                high = middle
        used = range(max(path) + 1)
        while cost_at(best) < budget.value * (1 - BUDGET_WINDOW):
            moves = [(grow, shrink) for grow in used for shrink in [None, *used] if shrink != grow]
            neighbours = [[w + (level == grow) - (level == shrink) for level, w in enumerate(best)]
                          for grow, shrink in moves]
            fitting = [n for n in neighbours
                       if min(n) >= 2 and cost_at(best) < cost_at(n) <= budget.value]
            if not fitting:
                break
            best = max(fitting, key=cost_at)
        return best, trials

    # ----- the search ---------------------------------------------------------------------------------------
    def run(self, budgets: Sequence[Budget]) -> dict[str, CellArchitecture]:
        chosen = list(budgets) or [self.default_budget()]
        hook, record = self.search()
        return {budget.label(): self.derive(hook, record, budget, default=not budgets) for budget in chosen}

    def search(self) -> tuple[ThriftySearchHook, dict[str, Any]]:
        """The joint search (resumed or returned as it is when it has run): the hook holds its final logits."""
        ctx, profile = self.ctx, self.profile
        folder = ctx.folder.budget_dir(SEARCH_LABEL)
        plan, arch_ids = split_fold(ctx.plan, ctx.fold, ctx.seed)
        arch_batches = TrainingBatches(cached_cases(ctx.dataset, plan, arch_ids, show_progress=False),
                                       augmentation(plan, "full"), profile.batch_size, ctx.seed + 1, profile.steps)
        cost_kind = "parameters"  # the thrift term steers by parameters: the paper's measure of a thrifty model
        strides = self.level_strides(profile.levels)
        model = ThriftCostModel.build(cost_kind, self.space, profile.search_widths, ctx.plan.patch_size,
                                      profile.batch_size, strides)
        hook = ThriftySearchHook(self.space, profile.layers, profile.levels, arch_batches, profile.warmup_steps,
                                 profile.search, model, profile.thrift, ctx.seed, profile.arch_lr)
        fixed_path = tuple(hook.reference_path) if profile.search == "micro" else None
        spec = ThriftySearchNetSpec(plan.num_channels, plan.num_classes, self.space, profile.search_widths,
                                    profile.layers, profile.partial, fixed_path, strides)
        config = TrainConfig(max_steps=profile.steps, batch_size=profile.batch_size, lr=profile.lr, seed=ctx.seed,
                             val_every=profile.val_every, checkpoint_every=max(profile.steps // 20, 1))
        record = train_or_resume(ctx.data_dir, plan, spec, folder / "supernet", ctx.fold, config,
                                 device=str(ctx.device), augment="full", hooks=[hook], spec=ctx.dataset,
                                 show_progress=ctx.show_progress)
        if is_main():
            path_figure(hook, folder / "path.png")
            cell_probabilities_figure(self.space, {NORMAL_CELL: hook.op_probabilities().detach().numpy()},
                                      {NORMAL_CELL: hook.genotype()}, folder / "probabilities.png")
        return hook, record

    def derive(self, hook: ThriftySearchHook, record: dict[str, Any], budget: Budget,
               default: bool) -> CellArchitecture:
        """The searched cell and path at the widths that spend ``budget``, measured and written to its folder."""
        ctx, profile = self.ctx, self.profile
        path, genotype = hook.path(), hook.genotype()
        widths, trials = self.fit_widths(path, genotype, budget)
        network = self.network(path, genotype, widths)
        cost = self.measure(network)
        arch = network.architecture
        with torch.no_grad():
            cost_ratio = float(hook.cost_ratio())
        arch.metadata.update(
            strategy=self.name, search=profile.search, steps=record["steps"], search_seconds=record["train_seconds"],
            val_dice_relaxed=record["validation"].get("val_dice"), path=path, widths=widths,
            model_cost_ratio=cost_ratio, cost=cost.to_dict(), budget={**budget_fit(budget, cost), "default": default},
            width_trials=len(trials))
        ctx.folder.save_result(budget.label(), arch, f"Thrifty NAS ({profile.search}), path {path}, widths {widths}")
        if is_main():
            atomic_write_text(ctx.folder.budget_dir(budget.label()) / "width_fit.json",
                              json.dumps({"budget": budget.text, "kind": budget.kind, "trials": trials}, indent=1)
                              + "\n")
        return arch

    def describe(self, label: str, arch: CellArchitecture) -> str:  # type: ignore[override]
        meta = arch.metadata
        budget = meta["budget"]
        default = " (the default budget)" if budget["default"] else ""
        window = " inside the window" if budget["inside_window"] else " outside the window"
        return (f"{label}{default}: path {meta['path']}, widths {meta['widths']}, "
                f"{meta['cost']['parameters']:,} parameters, measured memory {meta['cost']['memory_bytes']:,} B, "
                f"{budget['ratio']:.1%} of {budget['text']}{window}\n{arch.summary()}")

"""HyperSegNAS end to end: one super-net training, then a coarse-to-fine search per budget (paper 3.2).

Search folder (:class:`segnas.strategies.folder.SearchFolder`) plus::

    SEARCH_DIR/supernet/                a run folder of the one trainer (checkpoints, logs, weights)
    SEARCH_DIR/budget-4GB/finetune/KEY  the fine-tuning runs of the top candidates

Per budget: collect K candidates whose measured cost lies in ``[budget (1 - window), budget]``, score
each with the super-net (mean Dice over the foreground regions of validation cases, patch-wise), fine-tune
the top N from inherited weights, score again, keep the best. Scoring and fine-tuning are the shared
:class:`segnas.engine.evaluator.Evaluator`'s.

A resumed search may change the search-stage settings (``SearchProfile.SEARCH_STAGE``: candidates, window,
top N, fine-tuning, scoring cases, the preset candidate) without training the super-net again: a budget
searched with other settings is searched anew, its measurements read back from the cost cache.

With ``preset_candidate`` the space's U-Net preset joins every budget's candidates when its measured cost fits
the budget, however far under the window, and is always fine-tuned: the winner is then the preset unless a
searched candidate beats it under the same estimate (a departure from the paper; docs/design.md).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from segnas.cost.budget import Budget, cost_of
from segnas.cost.measure import CostReport, measure_cost
from segnas.engine.evaluator import Evaluator
from segnas.engine.run import train_run
from segnas.engine.trainer import TrainConfig
from segnas.errors import SegnasInputError
from segnas.networks.registry import EXAMPLE_SPACE, SuperNetSpec, TopologyNetworkSpec, register_network
from segnas.networks.topology_net import derive
from segnas.spaces.architecture import Architecture
from segnas.spaces.presets import unet_architecture
from segnas.spaces.sampler import ArchitectureSampler
from segnas.spaces.topology import TopologySpace
from segnas.strategies.base import (SearchContext, SearchStrategy, StrategyOption, StrategyProfile,
                                    measured_range, register_strategy)
from segnas.strategies.hypersegnas.candidates import CandidateSearch, collect_candidates
from segnas.strategies.hypersegnas.meta_assistant import FIXED_WEIGHT
from segnas.strategies.hypersegnas.supernet import VARIANTS, HyperSuperNet, SupernetTrainingHook
from segnas.utils.distributed import broadcast_object, is_main

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchProfile(StrategyProfile):
    """Sizes of one HyperSegNAS search.

    ``finetune_lr_factor`` scales ``lr`` for fine-tuning candidates; ``score_cases=None`` scores on every
    validation case of the fold; ``preset_candidate`` adds the space's U-Net preset to every budget's candidates
    that it fits. The fields in ``SEARCH_STAGE`` affect only the per-budget search.
    """

    SEARCH_STAGE: ClassVar[tuple[str, ...]] = ("candidates", "top_n", "finetune_steps", "finetune_lr_factor",
                                               "window", "score_cases", "preset_candidate")

    supernet_steps: int
    anneal_steps: int
    candidates: int
    top_n: int
    finetune_steps: int
    lr: float = 3e-3
    finetune_lr_factor: float = 0.1
    window: float = 0.03
    score_cases: int | None = None
    preset_candidate: bool = False

    def search_stage(self) -> dict[str, Any]:
        """The settings of the per-budget search (kept in each budget's state)."""
        return {name: getattr(self, name) for name in self.SEARCH_STAGE}


PROFILES = {
    # The paper's configuration (section 4): for GPUs.
    "paper": SearchProfile("paper", TopologySpace(), batch_size=8, supernet_steps=160_000, anneal_steps=20_000,
                           candidates=2000, top_n=10, finetune_steps=5000, window=0.05,
                           patch_size=(96, 96, 96)),
    # Scaled for 2 CPU cores and small data such as Hippocampus (see docs/design.md, "Profiles"): a smaller
    # space (8 blocks, 3 scales, 8..32 channels) so that the super-net gets the ~2,400 steps it needs on CPU
    # before uniformly sampled sub-nets segment at all; 0.26 s per step at batch 2 and 40x56x40 patches (stride 8).
    # Fine-tuning at the full learning rate for 1,000 steps, scored on every validation case: the estimator that
    # ranked a fresh set of architectures above Kendall tau 0.55 under a rule stated before it ran
    # (docs/benchmarks.md, "Ranking"; 300 steps before).
    "cpu": SearchProfile("cpu", TopologySpace(num_blocks=8, num_depths=3, channel_mul=0.25), batch_size=2,
                         supernet_steps=2400, anneal_steps=600, candidates=16, top_n=3, finetune_steps=1000,
                         finetune_lr_factor=1.0, score_cases=None),
    # For tests: a 3-block, 2-scale space and a handful of steps.
    "tiny": SearchProfile("tiny", TopologySpace(num_blocks=3, num_depths=2, channel_mul=0.125), batch_size=1,
                          supernet_steps=4, anneal_steps=2, candidates=3, top_n=1, finetune_steps=2, window=0.5,
                          score_cases=2),
}
# The cpu profile's space with the light stem: DiNTS's stem spends ~50 MiB at full resolution before any edge;
# without it the space's own U-Net preset beats MONAI's UNet 8..128 (0.864 against 0.856 Dice at 65 against
# 73 MiB at the yardstick; docs/benchmarks.md, "The space's stem"), and beat the search's 110 MiB winner, so
# the preset is a candidate of every budget it fits.
PROFILES["cpu-light"] = PROFILES["cpu"].replaced({"name": "cpu-light", "preset_candidate": True,
                                                  "space": replace(PROFILES["cpu"].space, stem="light")})


@register_network
@dataclass(frozen=True, eq=False)
class HyperSuperNetSpec(SuperNetSpec):
    """The super-net of a HyperSegNAS search, with its Meta-Assistant (``supernet/`` of a search folder)."""

    kind: ClassVar[str] = "hypersegnas-supernet"
    summary: ClassVar[str] = "HyperSegNAS super-net with its Meta-Assistant HyperNet"

    variant: str = "hypersegnas"

    def build(self) -> nn.Module:
        return HyperSuperNet(self.space, self.in_channels, self.out_channels, self.variant)

    @classmethod
    def example(cls, in_channels: int = 1, out_channels: int = 3) -> "HyperSuperNetSpec":
        return cls(in_channels, out_channels, EXAMPLE_SPACE)

    def forward_kwargs(self) -> dict[str, Any]:
        return {"architecture": ArchitectureSampler(self.space, 0).sample(), "anneal_progress": 0.0}


@contextmanager
def _phase_clock(state: dict[str, Any], phase: str) -> Iterator[None]:
    """Add the wall-clock of one search phase (this process's) to ``state["seconds"][phase]``: summed over
    resumed runs, so a budget's record says what its search cost however often it was interrupted."""
    start = time.perf_counter()
    yield
    seconds = state.setdefault("seconds", {})
    seconds[phase] = round(seconds.get(phase, 0.0) + time.perf_counter() - start, 1)


@register_strategy
class HyperSegNASStrategy(SearchStrategy):
    """One super-net training serving any number of budgets (only the search stage depends on a budget)."""

    name = "hypersegnas"
    summary = ("one-shot super-net with a Meta-Assistant HyperNet annealed away, then a coarse-to-fine search "
               "under measured cost (Peng et al., CVPR 2022)")
    profiles = PROFILES
    budget_kinds = ("memory", "parameters", "flops", "latency", "step")
    per_axis_strides = True
    options = (
        StrategyOption("--variant", "ablation variant of paper Table 1", choices=VARIANTS, default="hypersegnas"),
        StrategyOption("--supernet-steps", "override the profile's super-net steps", type=int),
        StrategyOption("--anneal-steps", "override the profile's annealing steps", type=int),
        StrategyOption("--candidates", "override the profile's candidates per budget", type=int),
        StrategyOption("--top-n", "override the profile's number of fine-tuned candidates", type=int),
        StrategyOption("--finetune-steps", "override the profile's fine-tuning steps", type=int),
        StrategyOption("--finetune-lr-factor", "override the profile's fine-tuning learning rate, as a factor of "
                                               "its training lr", type=float),
        StrategyOption("--score-cases", "override the profile's validation cases that score a candidate (the "
                                        "fold's first N; cpu: all): fewer make scoring cheaper", type=int),
        StrategyOption("--window", "override the profile's candidate window: candidates cost between "
                                   "(1 - WINDOW) x budget and the budget (cpu: 0.03; paper: 0.05)", type=float),
        StrategyOption("--preset-candidate", "override the profile: the space's U-Net preset joins the candidates "
                                             "of every budget it fits and is always fine-tuned", choices=("on", "off")),
    )
    analyses = ("ranking", "hypernet")
    resume_may_change = SearchProfile.SEARCH_STAGE
    profile: SearchProfile

    def configure(self, profile: StrategyProfile, options: dict[str, Any]) -> StrategyProfile:
        if options["variant"] not in VARIANTS:
            raise SegnasInputError(f"unknown variant {options['variant']!r}; choose one of {list(VARIANTS)}",
                                   "--variant")
        self.variant: str = options["variant"]
        self.model: HyperSuperNet | None = None
        if options.get("window") is not None and not 0 < options["window"] < 1:
            raise SegnasInputError(f"window {options['window']} is not a fraction of the budget in (0, 1)",
                                   "--window")
        if options.get("score_cases") is not None and options["score_cases"] < 1:
            raise SegnasInputError(f"score cases {options['score_cases']} is not a positive number of cases",
                                   "--score-cases")
        if options.get("preset_candidate") is not None:
            options = {**options, "preset_candidate": options["preset_candidate"] == "on"}
        return super().configure(profile, options)

    def settings(self) -> dict[str, Any]:
        return {**self.profile.to_dict(), "variant": self.variant}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "HyperSegNASStrategy":
        profile = {k: v for k, v in settings.items() if k != "variant"}
        return cls(SearchProfile.from_dict(profile), {"variant": settings.get("variant", "hypersegnas")})

    def initialize(self, context: SearchContext) -> None:
        super().initialize(context)
        profile = self.profile
        self.evaluator = Evaluator(context.data_dir, context.dataset, context.plan, context.fold, context.device,
                                   profile.batch_size, profile.lr, context.seed, profile.score_cases,
                                   context.show_progress)

    # ----- networks and their cost ----------------------------------------------------------------------------
    def network(self, arch: Architecture) -> TopologyNetworkSpec:
        """The derived network of ``arch`` as this search trains and measures it (0.5 weights once the
        HyperNet is removed)."""
        removes_hypernet = self.variant in ("noanneal", "hypersegnas")
        plan = self.ctx.plan
        return TopologyNetworkSpec(plan.num_channels, plan.num_classes, arch, "mean",
                                   FIXED_WEIGHT if removes_hypernet else None)

    def measure(self, arch: Architecture) -> CostReport:
        return measure_cost(self.network(arch), self.ctx.plan.patch_size, self.profile.batch_size, self.ctx.device)

    def budget_range(self, kind: str) -> tuple[float, float]:
        return measured_range(self.space, kind, self.measure)

    # ----- stage 1 and 2: super-net training with the Meta-Assistant and annealing -------------------------------
    def train_supernet(self) -> HyperSuperNet:
        """Train (or resume, or load) the search's super-net; kept as ``self.model`` in eval mode."""
        if self.model is not None:
            return self.model
        ctx, profile = self.ctx, self.profile
        torch.manual_seed(ctx.seed)
        model = HyperSuperNet(self.space, ctx.plan.num_channels, ctx.plan.num_classes, self.variant)
        run_dir = ctx.folder.path / "supernet"
        if not (run_dir / "model_final.pt").is_file():
            hook = SupernetTrainingHook(model, profile.supernet_steps, profile.anneal_steps, ctx.seed,
                                        unet_architecture(self.space))
            config = TrainConfig(max_steps=profile.supernet_steps + profile.anneal_steps, batch_size=profile.batch_size,
                                 lr=profile.lr, seed=ctx.seed, checkpoint_every=max(10, profile.supernet_steps // 20))
            network = HyperSuperNetSpec(ctx.plan.num_channels, ctx.plan.num_classes, self.space, self.variant)
            # The search owns supernet/: without a checkpoint (interrupted before the first one) start it anew.
            resumable = (run_dir / "checkpoint_last.pt").is_file()
            train_run(ctx.data_dir, ctx.plan, network, run_dir, ctx.fold, config, resume=resumable,
                      force=not resumable, device=str(ctx.device), hooks=[hook], model=model, spec=ctx.dataset,
                      show_progress=ctx.show_progress)
        state = torch.load(run_dir / "model_final.pt", map_location=ctx.device, weights_only=False)["state_dict"]
        model.load_state_dict(state)
        if not model.keeps_hypernet:
            model.remove_hypernet()
        self.model = model.to(ctx.device).eval()
        return self.model

    # ----- estimates ------------------------------------------------------------------------------------------
    def score_supernet(self, arch: Architecture, cases: Sequence[dict] | None = None) -> float:
        """The super-net's raw estimate of ``arch`` on ``cases`` (default: the profile's scoring cases)."""
        return self.evaluator.score(self.train_supernet(), cases, {"architecture": arch})

    def finetuned_network(self, arch: Architecture, run_dir: Path, steps: int | None = None,
                          lr_factor: float | None = None, resume: bool = False) -> nn.Module:
        """``arch`` cut out of the super-net (weights inherited) and trained ``steps`` at ``lr_factor`` times
        the profile's learning rate (both default to the profile's fine-tuning); returned in eval mode.
        ``resume`` continues (or, when finished, just reloads) the checkpoint in ``run_dir``: only for folders
        that name their steps and learning rate, since the search's own folders outlive a change of both."""
        steps = steps or self.profile.finetune_steps
        lr_factor = self.profile.finetune_lr_factor if lr_factor is None else lr_factor
        net = derive(self.train_supernet().supernet, arch)
        return self.evaluator.finetune(net, run_dir, steps, self.profile.lr * lr_factor, resume)

    def finetune(self, arch: Architecture, run_dir: Path) -> float:
        """The search's fine-tuned estimate: the profile's fine-tuning, scored on the profile's cases."""
        return self.evaluator.score(self.finetuned_network(arch, run_dir))

    # ----- stage 3: coarse-to-fine search per budget ----------------------------------------------------------
    def run(self, budgets: Sequence[Budget]) -> dict[str, Architecture]:
        self.train_supernet()
        return {budget.label(): self.search_budget(budget) for budget in budgets}

    def search_budget(self, budget: Budget) -> Architecture:
        """Collect, score, fine-tune and choose for one budget; resumes from the budget folder's state."""
        profile, folder, label = self.profile, self.ctx.folder, budget.label()
        state = folder.load_state(label)
        if state.get("settings") != profile.search_stage():
            if state:
                log.info("%s: searched before with other settings (%s); searching this budget again",
                         budget.text, state.get("settings"))
            state = {"budget": budget.text, "settings": profile.search_stage(), "candidates": {}}
        # Measuring is rank 0's job (parallel processes would disturb latency and timing figures).
        if is_main():
            with _phase_clock(state, "collection"):
                self._collect(budget, state)
        state = broadcast_object(state)
        candidates: dict[str, dict[str, Any]] = state["candidates"]
        if not candidates:
            raise SegnasInputError(f"no architecture measured inside [{1 - profile.window:.0%}, 100%] of budget "
                                   f"{budget.text} after {state['collection']['measured']} measurements; widen the "
                                   "window", "--budget")

        def architecture(key: str) -> Architecture:
            return Architecture.from_dict(candidates[key]["architecture"])

        show = self.ctx.show_progress
        with _phase_clock(state, "scoring"):
            folder.fill(label, state, list(candidates), "supernet_score", f"{budget.text}: scoring",
                        lambda key: self.score_supernet(architecture(key)), show)
        ranked = sorted(candidates, key=lambda k: -candidates[k]["supernet_score"])
        finetuned = ranked[: profile.top_n] + [key for key in ranked[profile.top_n:] if "preset" in candidates[key]]
        with _phase_clock(state, "finetuning"):
            folder.fill(label, state, finetuned, "finetuned_score", f"{budget.text}: fine-tuning",
                        lambda key: self.finetune(architecture(key), folder.budget_dir(label) / "finetune" / key), show)
        folder.save_state(label, state)
        collection = CandidateSearch(**state["collection"])
        best_key = max(finetuned, key=lambda k: candidates[k]["finetuned_score"])
        best = architecture(best_key)
        best.metadata = {"strategy": self.name, "variant": self.variant, "budget": budget.text,
                         "budget_kind": budget.kind, "budget_value": budget.value,
                         "cost": candidates[best_key]["cost"],
                         "supernet_score": candidates[best_key]["supernet_score"],
                         "finetuned_score": candidates[best_key]["finetuned_score"],
                         "candidates_drawn": collection.drawn, "candidates_measured": collection.measured,
                         "candidates_accepted": len(candidates), "space_range": state["range"],
                         "search_seconds": state["seconds"],
                         **({"preset": candidates[best_key]["preset"]} if "preset" in candidates[best_key] else {})}
        folder.save_result(label, best, f"HyperSegNAS, budget {budget.text}")
        folder.write_leaderboard(label, [self._leaderboard_row(position, key, candidates[key], budget)
                                         for position, key in enumerate(ranked, 1)])
        return best

    def _collect(self, budget: Budget, state: dict[str, Any]) -> None:
        """Measure the space's range and collect the budget's candidates into ``state`` (saved as it goes)."""
        profile = self.profile
        if "range" not in state:
            state["range"] = list(self.budget_range(budget.kind))

        def accept(arch: Architecture, report: CostReport) -> None:
            state["candidates"][arch.key()] = {"architecture": arch.to_dict(), "cost": report.to_dict()}

        collection = CandidateSearch(**state["collection"]) if "collection" in state else None
        collection = collect_candidates(self.space, budget, self.measure, profile.candidates, profile.window,
                                        self.ctx.seed, state=collection, on_accept=accept,
                                        show_progress=self.ctx.show_progress)
        state["collection"] = asdict(collection)
        if profile.preset_candidate:
            self._add_preset(budget, state)
        self.ctx.folder.save_state(budget.label(), state)

    def _add_preset(self, budget: Budget, state: dict[str, Any]) -> None:
        """The space's U-Net preset as one more candidate of ``state`` (marked ``"preset"``) when its measured
        cost fits the budget: below the window too, since a sparse hand-designed path may beat every candidate
        that spends the budget."""
        preset = unet_architecture(self.space)
        item = state["candidates"].get(preset.key())
        if item is None:
            report = self.measure(preset)
            if (cost := budget.cost_of(report)) > budget.value:
                log.info("%s: the U-Net preset (%s %s) does not fit; not a candidate", budget.text, f"{cost:,.0f}",
                         budget.kind)
                return
            item = state["candidates"][preset.key()] = {"architecture": preset.to_dict(), "cost": report.to_dict()}
        item["preset"] = "unet"

    @staticmethod
    def _leaderboard_row(position: int, key: str, item: dict[str, Any], budget: Budget) -> dict[str, Any]:
        report = item["cost"]
        return {"rank": position, "key": key, "active_edges": int(np.sum(item["architecture"]["edges"])),
                "cost": budget.cost_of(CostReport(**report)), "memory_bytes": report["memory_bytes"],
                "parameters": report["parameters"], "flops_forward": report["flops_forward"],
                "latency_ms": report["latency_ms"], "supernet_score": item["supernet_score"],
                "finetuned_score": item.get("finetuned_score", ""), "preset": item.get("preset", "")}

    def describe(self, label: str, arch: Architecture) -> str:
        meta = arch.metadata
        measured = cost_of(CostReport(**meta["cost"]), meta["budget_kind"])
        chosen = f" (the space's {meta['preset']} preset)" if "preset" in meta else ""
        return (f"{label}{chosen}: measured {meta['budget_kind']} {measured:,}"
                f" (budget {meta['budget_value']:,.0f}), super-net Dice {meta['supernet_score']:.3f}, fine-tuned "
                f"{meta['finetuned_score']:.3f}, {meta['candidates_accepted']} candidates from "
                f"{meta['candidates_measured']} measured / {meta['candidates_drawn']} drawn")

"""The search-strategy interface, its registry, and opening a search folder with the strategy that wrote it.

A strategy is one folder under ``segnas/strategies/`` whose ``__init__.py`` imports a subclass of
:class:`SearchStrategy` decorated with :func:`register_strategy`. Every package in that folder is imported
by :func:`load_strategies`, so a new folder is found without editing anything else: ``segnas search
--strategy`` and ``--profile`` choices, ``segnas search --help``, ``segnas demo --strategy`` and the tests
that run every strategy all read the registry.

The life of a strategy (NNI's split: a cheap constructor, then the work):

1. ``Strategy(profile, options)``: checks the profile name and the strategy's own options. No data is read.
2. :meth:`SearchStrategy.validate_request`: refuses budgets of a kind it cannot search, before any data is read.
3. :meth:`SearchStrategy.initialize`: receives the :class:`SearchContext` (dataset, plan, folder, device).
4. :meth:`SearchStrategy.check_budgets`: refuses, with the reachable range in the message, budgets outside
   :meth:`SearchStrategy.budget_range` (measured through the cost module) before any training or writing.
5. :meth:`SearchStrategy.run`: one architecture per budget, each also written into the search folder.

A strategy's resumable state lives in its folder (:class:`SearchFolder`: per-budget ``state.json`` saved
after each unit of work, the trainer's checkpoints), so a killed search resumes where it stopped.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

import torch

from segnas.cost.budget import Budget, cost_of
from segnas.cost.measure import CostReport
from segnas.data.dataset import DatasetSpec, load_dataset
from segnas.data.plan import LevelStrides, Plan, first_levels, make_plan
from segnas.engine.run import check_patch
from segnas.errors import SegnasInputError
from segnas.plugins import STRATEGY_GROUP, load_entry_points
from segnas.spaces.architecture import Architecture, space_from_dict
from segnas.spaces.cells import CellSpace
from segnas.spaces.presets import extreme_architectures
from segnas.spaces.topology import TopologySpace
from segnas.strategies.folder import SearchFolder
from segnas.utils.runtime import pick_device

log = logging.getLogger(__name__)

_STRATEGIES: dict[str, type["SearchStrategy"]] = {}
T = TypeVar("T", bound=type["SearchStrategy"])


def measured_range(space: TopologySpace, kind: str, measure: Callable[[Architecture], CostReport]
                   ) -> tuple[float, float]:
    """The measured cost of ``kind`` of a topology space's smallest and largest architectures, lowest first (two
    step times of similar networks can measure in either order): :meth:`SearchStrategy.budget_range` of the
    strategies that search a topology space."""
    small, large = extreme_architectures(space)
    low, high = sorted((cost_of(measure(small), kind), cost_of(measure(large), kind)))
    return low, high


@dataclass(frozen=True)
class StrategyOption:
    """One ``segnas search`` option of a strategy. Given options reach the strategy as ``options[dest]``;
    options left out take ``default``. An option given to a strategy that does not declare it is refused."""

    flag: str
    help: str
    type: Callable[[str], Any] | None = None
    choices: tuple[Any, ...] | None = None
    repeatable: bool = False
    default: Any = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class StrategyProfile:
    """Sizes of one strategy's search: ``paper`` (the paper's settings), ``cpu`` (about an hour on 2 cores),
    ``tiny`` (tests). Subclasses add their fields; ``to_dict``/``from_dict`` round-trip through search.json.

    ``patch_size`` replaces the plan's patch (``None``: the plan's own), e.g. one patch for networks of several
    strategies compared under the same memory budget; every side must be a multiple of the plan's stride.
    """

    name: str
    space: TopologySpace | CellSpace
    batch_size: int
    patch_size: tuple[int, int, int] | None = field(default=None, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        data = {item.name: getattr(self, item.name) for item in fields(self)}
        data["space"] = self.space.to_dict()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StrategyProfile":
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        values["space"] = space_from_dict(data["space"])
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SegnasInputError(f"unknown profile settings {unknown} for {cls.__name__}")
        return cls(**values)

    def replaced(self, overrides: Mapping[str, Any]) -> "StrategyProfile":
        """A copy with the given (non-``None``) fields replaced: what ``--supernet-steps 100`` does."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class SearchContext:
    """What a strategy searches with (given to :meth:`SearchStrategy.initialize`)."""

    data_dir: Path
    dataset: DatasetSpec
    plan: Plan
    folder: SearchFolder
    fold: int = 0
    seed: int = 0
    device: torch.device = torch.device("cpu")
    show_progress: bool = True


class SearchStrategy(ABC):
    """Base of every search method. Subclasses set the class attributes and implement ``budget_range``
    and ``run``; the rest has defaults that suit a strategy whose settings are its profile.

    Class attributes:
        name: the ``--strategy`` value.
        summary: one line for ``segnas search --help``.
        profiles: profile name -> :class:`StrategyProfile` (``tiny`` is required: the tests run it).
        budget_kinds: the :class:`Budget` kinds it spends (``memory``, ``parameters``, ``flops``, ``latency``,
            ``step``): a budget's first limit must be one of them; the ceilings of a combined budget may be of
            any kind, since the strategy checks them on the measured cost (:meth:`Budget.cost_of`).
        budget_optional: it also searches without a budget (its result then needs none, or it has a default).
        options: its own ``segnas search`` options.
        analyses: the ``segnas analyze`` analyses it supports.
        resume_may_change: settings keys a resumed search may change (the rest must match).
        per_axis_strides: its space follows a plan's per-axis pooling (thick slices pooled fewer times); a
            strategy without it searches on a plan that pools every axis alike.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    profiles: ClassVar[Mapping[str, StrategyProfile]]
    budget_kinds: ClassVar[tuple[str, ...]] = ("memory",)
    budget_optional: ClassVar[bool] = False
    options: ClassVar[tuple[StrategyOption, ...]] = ()
    analyses: ClassVar[tuple[str, ...]] = ()
    resume_may_change: ClassVar[tuple[str, ...]] = ()
    per_axis_strides: ClassVar[bool] = False

    @classmethod
    def budget_words(cls) -> str:
        """What it takes, in words: ``budgets: memory, parameters (optional)``, or ``takes no budget``."""
        if not cls.budget_kinds:
            return "takes no budget"
        return (f"budgets: {', '.join(cls.budget_kinds)}, each with ceilings of any kind (250MiB+1.2s/step)"
                + (" (optional)" if cls.budget_optional else ""))

    def __init__(self, profile: str | StrategyProfile = "cpu", options: Mapping[str, Any] | None = None):
        if isinstance(profile, str):
            if profile not in self.profiles:
                raise SegnasInputError(f"strategy {self.name} has no profile {profile!r}; choose one of "
                                       f"{sorted(self.profiles)}", "--profile")
            profile = self.profiles[profile]
        given = {k: v for k, v in (options or {}).items() if v is not None}
        declared = {option.dest: option for option in self.options}
        foreign = sorted(set(given) - set(declared))
        if foreign:
            flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
            raise SegnasInputError(f"{flags}: not an option of strategy {self.name} (its options: "
                                   f"{', '.join(o.flag for o in self.options) or 'none'})", flags.split(",")[0])
        self.option_values = {dest: given.get(dest, option.default) for dest, option in declared.items()}
        self.profile = self.configure(profile, self.option_values)
        self.context: SearchContext | None = None

    # ----- settings (what search.json records and resume compares) ------------------------------------------
    def configure(self, profile: StrategyProfile, options: dict[str, Any]) -> StrategyProfile:
        """The profile this search runs with, given the options (default: options that name a profile field
        override it, e.g. ``--top-n``). Check option values here: it runs before any data is read."""
        names = {item.name for item in fields(profile)}
        return profile.replaced({k: v for k, v in options.items() if k in names})

    def settings(self) -> dict[str, Any]:
        """Everything that defines this search, JSON-able (default: the profile)."""
        return self.profile.to_dict()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "SearchStrategy":
        """The strategy :meth:`settings` describes (how a search folder is reopened)."""
        profile_type = type(next(iter(cls.profiles.values())))
        return cls(profile_type.from_dict(settings))

    @property
    def space(self) -> TopologySpace:
        """The profile's space; once initialised on a plan that pools axes differently, with the plan's per-level
        strides (a strategy with :attr:`per_axis_strides` only)."""
        space = self.profile.space
        strides = self.level_strides(space.levels) if isinstance(space, TopologySpace) else None
        return space if strides is None else replace(space, strides=strides)

    def level_strides(self, levels: int) -> LevelStrides | None:
        """The first ``levels`` levels of the plan's per-axis pooling for this strategy's networks; ``None`` (every
        axis halved) before initialisation, on isotropic plans and without :attr:`per_axis_strides`."""
        if self.context is None or not self.per_axis_strides:
            return None
        return first_levels(self.context.plan.pool_strides, levels)

    def search_plan(self, dataset: DatasetSpec, show_progress: bool = True, group_by: str | None = None) -> Plan:
        """The plan a new search runs on (default: the dataset's, the finest axes' patch sides multiples of
        :meth:`plan_stride`, thick-slice axes pooled fewer times where :attr:`per_axis_strides`, the patch replaced
        by the profile's ``patch_size`` where it has one). ``group_by`` names each case's subject (as ``segnas
        plan --group-by``): the search's training and validation cases never share a subject."""
        return self.apply_profile_patch(make_plan(dataset, stride=self.plan_stride(), show_progress=show_progress,
                                                  isotropic=not self.per_axis_strides, group_by=group_by))

    def apply_profile_patch(self, plan: Plan) -> Plan:
        """``plan`` with its patch replaced by the profile's ``patch_size`` (if any: a profile's own, or
        ``--patch``); every side must be a positive multiple of the plan's stride on its axis."""
        patch = self.profile.patch_size
        if patch:
            named = self.profiles.get(self.profile.name)
            given_by = "--profile" if named is not None and named.patch_size == patch else "--patch"
            check_patch(patch, plan.stride, given_by, taker=f"the networks of strategy {self.name}")
            plan.patch_size = list(patch)
        return plan

    def search_at_patch(self, patch: Sequence[int]) -> None:
        """Search (and measure every budget) at ``patch`` instead of the plan's: the patch training will use,
        so that a budget measured by the search is the one training meets (``segnas search --patch``)."""
        self.profile = self.profile.replaced({"patch_size": tuple(int(side) for side in patch)})

    def plan_stride(self) -> int:
        """Every patch side of the plan is a multiple of this."""
        return self.space.total_stride

    # ----- budgets ------------------------------------------------------------------------------------------
    def validate_request(self, budgets: Sequence[Budget]) -> None:
        """Refuse a request this strategy cannot serve, before any data is read (default: at least one budget
        unless ``budget_optional``, each of an accepted kind)."""
        if not budgets and not self.budget_optional:
            raise SegnasInputError(f"give at least one --budget (strategy {self.name} searches under budgets)",
                                   "--budget")
        for budget in budgets:
            if budget.kind not in self.budget_kinds:
                raise SegnasInputError(f"strategy {self.name} searches under {' or '.join(self.budget_kinds)} "
                                       f"budgets; {budget.text} is a {budget.kind} budget first", "--budget")

    @abstractmethod
    def budget_range(self, kind: str) -> tuple[float, float]:
        """The lowest and highest cost of ``kind`` this strategy can reach in its space (after initialize), lowest
        first: every kind the cost module measures, since a combined budget's ceilings may be of any kind."""

    def check_budgets(self, budgets: Sequence[Budget]) -> None:
        """Refuse budgets outside :meth:`budget_range`, with the range in the message; a combined budget's ceiling
        only under the range (above it, it never binds)."""
        for budget in budgets:
            for position, limit in enumerate(budget.limits()):
                low, high = self.budget_range(limit.kind)
                if not low <= limit.value <= (high if position == 0 else float("inf")):
                    raise SegnasInputError(f"budget {limit.text} is outside the {limit.kind} range that strategy "
                                           f"{self.name} can reach in this space: [{format_cost(low, limit.kind)}, "
                                           f"{format_cost(high, limit.kind)}] (measured)", "--budget")

    # ----- the work -----------------------------------------------------------------------------------------
    def initialize(self, context: SearchContext) -> None:
        """Receive the dataset, plan and folder (strategies that load more extend this)."""
        self.context = context

    @property
    def ctx(self) -> SearchContext:
        if self.context is None:
            raise RuntimeError(f"strategy {self.name} is not initialised: call initialize(context) first")
        return self.context

    @abstractmethod
    def run(self, budgets: Sequence[Budget]) -> dict[str, Architecture]:
        """Search; one architecture per folder label (``budget.label()``), each written into the folder."""

    def check_analysis(self, analysis: str) -> None:
        """Refuse an analysis this strategy does not offer, naming its folder."""
        if analysis not in self.analyses:
            offered = ", ".join(self.analyses) or "none"
            raise SegnasInputError(f"strategy {self.name} offers no '{analysis}' analysis (its analyses: {offered})",
                                   self.ctx.folder.path)

    def describe(self, label: str, arch: Architecture) -> str:
        """One line about a result, for the command's table."""
        cost = arch.metadata.get("cost", {})
        return f"{label}: {int(arch.edges.sum())} active edges, measured memory {cost.get('memory_bytes', 0):,} B"


def format_help_default(value: Any) -> str:
    """`` (default X)`` for an option's help, or nothing when it has no default."""
    return "" if value is None else f" (default {value})"


def format_cost(value: float, kind: str) -> str:
    if kind == "memory":
        return f"{value / 2**20:.1f} MiB"
    if kind == "latency":
        return f"{value:.1f} ms"
    if kind == "step":
        return f"{value:.1f} ms/step"
    return f"{value:,.0f} {kind}"


# ----- registry ---------------------------------------------------------------------------------------------
def register_strategy(cls: T) -> T:
    """Class decorator: list ``cls`` under ``cls.name`` (``tiny`` profile required)."""
    if cls.name in _STRATEGIES and _STRATEGIES[cls.name] is not cls:
        raise ValueError(f"strategy {cls.name!r} is registered twice")
    if "tiny" not in cls.profiles:
        raise ValueError(f"strategy {cls.name!r} needs a 'tiny' profile (the tests run it)")
    _STRATEGIES[cls.name] = cls
    return cls


def load_strategies() -> None:
    """Import every package under ``segnas/strategies/`` (each registers its strategy and networks), then the
    strategies other packages declare as ``segnas.strategies`` entry points (:mod:`segnas.plugins`)."""
    import segnas.strategies as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.ispkg:
            importlib.import_module(f"{package.__name__}.{module.name}")
    for name, loaded in load_entry_points(STRATEGY_GROUP).items():
        if not (isinstance(loaded, type) and issubclass(loaded, SearchStrategy)):
            log.warning("entry point %r of group %s is not a search strategy; skipped", name, STRATEGY_GROUP)
        elif loaded.name in _STRATEGIES and _STRATEGIES[loaded.name] is not loaded:
            log.warning("plugin strategy %r (%s) has the name of another strategy; skipped", loaded.name,
                        loaded.__module__)
        else:
            register_strategy(loaded)


def list_strategies() -> list[str]:
    load_strategies()
    return sorted(_STRATEGIES)


def get_strategy(name: str, source: str | Path = "--strategy") -> type[SearchStrategy]:
    load_strategies()
    if name not in _STRATEGIES:
        raise SegnasInputError(f"unknown strategy {name!r}; this segnas has {sorted(_STRATEGIES)}", source)
    return _STRATEGIES[name]


def search_record(strategy: SearchStrategy, dataset: DatasetSpec, data_dir: Path, fold: int,
                  seed: int, group_by: str | None = None) -> dict[str, Any]:
    """What ``search.json`` holds (besides its header); ``group_by`` only where subjects were named (records of
    searches before subjects compare equal on resume)."""
    record = {"strategy": strategy.name, "profile": strategy.profile.name, "dataset": dataset.name,
              "data_dir": str(Path(data_dir).resolve()), "fold": fold, "seed": seed, "settings": strategy.settings()}
    return record | ({"group_by": group_by} if group_by is not None else {})


def open_search(search_dir: str | Path, device: str = "auto", show_progress: bool = True) -> SearchStrategy:
    """The strategy that wrote ``search_dir``, initialised with the settings it last ran with."""
    folder = SearchFolder(search_dir)
    record = folder.record()
    cls = get_strategy(record.get("strategy", ""), folder.record_path)
    if not record.get("data_dir"):
        raise SegnasInputError("this search record does not say where its dataset is (written by an older "
                               "segnas); run the search again", folder.record_path)
    strategy = cls.from_settings(record["settings"])
    context = SearchContext(Path(record["data_dir"]), load_dataset(record["data_dir"]), folder.plan(), folder,
                            record["fold"], record["seed"], pick_device(device), show_progress)
    strategy.initialize(context)
    return strategy

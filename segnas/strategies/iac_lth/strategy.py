"""``segnas search --strategy iac-lth``: Implantable Adaptive Cells searched into a trained U-Net's skip
connections (Benedykciuk et al. 2024), stopped early by Jensen-Shannon stability (IAC-LTH, 2026).

Search folder (:class:`segnas.strategies.folder.SearchFolder`)::

    backbone/            the host's run folder when no --backbone is given (trained first, resumable)
    cells/supernet/      the search: a run folder of the one trainer (host frozen, relaxed cells, logits)
    cells/arch.json      host + discrete cells (the ``cells`` architecture kind), trained by
                         ``segnas train --arch`` and used by ``segnas predict``
    cells/arch.png       the cell
    cells/stability.json per epoch: each edge's distribution and JS divergence, pruning events, lead epochs
    cells/stability.png  JS traces per edge with the pruning events, and the lead epochs against the stop

Budgets: none. IAC refines a given network; the cells' cost is reported in ``arch.json``, not searched for.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
import torch.nn as nn

from segnas.cost.budget import Budget
from segnas.cost.measure import measure_cost
from segnas.data.dataset import DatasetSpec
from segnas.data.plan import Plan, strides_to_json
from segnas.data.transforms import TrainingBatches, augmentation, cached_cases
from segnas.engine.run import FINAL_MODEL, load_model, read_run, run_network, train_or_resume
from segnas.engine.trainer import TrainConfig
from segnas.errors import SegnasInputError
from segnas.networks.implant import ImplantedNet
from segnas.networks.registry import (SKIP_CELL, ImplantedNetworkSpec, NetworkSpec, implanted_network,
                                      network_from_dict, register_network)
from segnas.spaces.cells import CELL_OPS, CellArchitecture, CellSpace
from segnas.strategies.base import SearchStrategy, StrategyOption, StrategyProfile, register_strategy
from segnas.strategies.bilevel import split_fold
from segnas.strategies.iac_lth.plots import stability_figure
from segnas.strategies.iac_lth.search import CellSearchHook
from segnas.strategies.iac_lth.stability import StabilityRule
from segnas.utils.distributed import is_main
from segnas.utils.files import atomic_write_text

log = logging.getLogger(__name__)

LABEL = "cells"
#: Hosts segnas can implant cells into (the kinds whose skip connections :mod:`segnas.networks.implant` knows).
HOST_KINDS = ("monai-unet", "dynunet")


@dataclass(frozen=True)
class IacProfile(StrategyProfile):
    """Sizes of one IAC(-LTH) search.

    ``host`` is the default backbone's spec without its channels (``{"kind": "monai-unet", ...}``), trained
    for ``backbone_steps`` when no ``--backbone`` is given. ``epochs`` is the full search's length (IAC: 200)
    and IAC-LTH's limit; an epoch is ``steps_per_epoch`` steps.
    """

    host: dict = None  # type: ignore[assignment]
    backbone_steps: int = 1000
    epochs: int = 200
    steps_per_epoch: int = 20
    warmup_epochs: int = 15
    partial_channels: int = 4
    lr: float = 3e-3
    arch_lr: float = 6e-4
    stopping: str = "js"
    js_threshold: float = 0.05
    patience: int = 2
    prune_below: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if self.stopping not in ("js", "full"):
            problems.append(f"--stopping must be 'js' or 'full', got {self.stopping!r}")
        if min(self.epochs, self.steps_per_epoch, self.partial_channels, self.backbone_steps) < 1:
            problems.append("epochs, steps per epoch, partial channels and backbone steps must be >= 1")
        if not 0 <= self.warmup_epochs < self.epochs:
            problems.append(f"warm-up epochs must lie in [0, epochs), got {self.warmup_epochs} of {self.epochs}")
        try:
            self.rule()
        except ValueError as err:
            problems.append(str(err))
        if problems:
            raise SegnasInputError("; ".join(problems), "--profile")

    def rule(self) -> StabilityRule | None:
        """IAC-LTH's rule, or ``None`` for the full-length search."""
        return StabilityRule(self.js_threshold, self.patience, self.prune_below) if self.stopping == "js" else None


def _unet(channels: tuple[int, ...], strides: tuple[int, ...], res_units: int) -> dict:
    return {"kind": "monai-unet", "channels": list(channels), "strides": list(strides), "num_res_units": res_units}


PROFILES = {
    # PC-DARTS's operations and proportions (8 operations, 1/4 of the channels, 4 nodes), IAC's 200 epochs,
    # and MONAI's default UNet as the backbone.
    "paper": IacProfile("paper", CellSpace(CELL_OPS, nodes=4), batch_size=2,
                        host=_unet((16, 32, 64, 128, 256), (2, 2, 2, 2), 2), backbone_steps=25_000, epochs=200,
                        steps_per_epoch=250, warmup_epochs=15),
    # About an hour on 2 CPU cores for the whole benchmark: a UNet of 8..64 channels and 3 levels (3,000 steps,
    # 2.3 min), 3-node cells, 60 epochs of 20 steps (about 9 min in full). The architecture learning rate is
    # scaled up so that the logits can move as far in 1,200 steps as PC-DARTS's 6e-4 moves them in its ~10k.
    "cpu": IacProfile("cpu", CellSpace(CELL_OPS, nodes=3), batch_size=2, host=_unet((8, 16, 32, 64), (2, 2, 2), 1),
                      backbone_steps=3000, epochs=60, steps_per_epoch=20, warmup_epochs=3, arch_lr=1e-2),
    "tiny": IacProfile("tiny", CellSpace(("zero", "skip_connect", "conv_3x3x3", "avg_pool_3x3x3"), nodes=2),
                       batch_size=1, host=_unet((4, 8, 16), (2, 2), 1), backbone_steps=4, epochs=6,
                       steps_per_epoch=2, warmup_epochs=1, partial_channels=2, arch_lr=3e-3, js_threshold=1e4,
                       patience=1),
}


@register_network
@dataclass(frozen=True, eq=False)
class IacSearchNetSpec(NetworkSpec):
    """The search network of IAC: a host with relaxed cells (PC-DARTS's ``partial`` channels) in its skips."""

    kind: ClassVar[str] = "iac-search-net"
    summary: ClassVar[str] = "IAC's search network: a host U-Net with relaxed cells in its skip connections"

    space: CellSpace
    host: dict
    partial: int = 1

    def host_spec(self) -> NetworkSpec:
        return network_from_dict(self.host, "search network host")

    def build(self) -> nn.Module:
        return implanted_network(self.host_spec(), self.space, None, self.partial)

    def stride(self) -> list[int]:
        return self.host_spec().stride()

    @classmethod
    def example(cls, in_channels: int = 1, out_channels: int = 3) -> "IacSearchNetSpec":
        tiny = PROFILES["tiny"]
        return cls(in_channels, out_channels, tiny.space, {**tiny.host, "in_channels": in_channels,
                                                            "out_channels": out_channels}, tiny.partial_channels)

    def forward_kwargs(self) -> dict[str, Any]:
        uniform = torch.full((self.space.num_edges, self.space.num_ops), 1 / self.space.num_ops)
        return {"cell_weights": (uniform, None)}


@register_strategy
class IacLthStrategy(SearchStrategy):
    """Cells for the skip connections of one trained host network."""

    name = "iac-lth"
    summary = ("implantable adaptive cells in a trained U-Net's skip connections, PC-DARTS search stopped early "
               "by Jensen-Shannon stability (Benedykciuk et al. 2024, 2026)")
    profiles = PROFILES
    budget_kinds = ()
    options = (
        StrategyOption("--backbone", "a trained run folder of a MONAI UNet or DynUNet to implant cells into "
                                     "(default: train the profile's UNet first)", type=Path),
        StrategyOption("--stopping", "js: stop when every edge is decided (IAC-LTH); full: every epoch (IAC)",
                       choices=("js", "full")),
        StrategyOption("--epochs", "search epochs (the full search's length, IAC-LTH's limit)", type=int),
        StrategyOption("--js-threshold", "an edge is calm in an epoch whose JS divergence from the last is below "
                                         "this fraction of (arch_lr x steps per epoch)^2 / (8 ln 2) bits",
                       type=float),
        StrategyOption("--patience", "calm epochs in a row that make an edge stable (then pruned)", type=int),
        StrategyOption("--prune-below", "a stable edge loses operations below this fraction of the uniform "
                                        "share of its alive ones", type=float),
        StrategyOption("--arch-lr", "Adam's learning rate on the architecture logits", type=float),
        StrategyOption("--partial-channels", "PC-DARTS: 1/K of the channels go through the mixed operations",
                       type=int),
    )
    per_axis_strides = True  # the profile's UNet host pools as the plan does
    profile: IacProfile

    def configure(self, profile: StrategyProfile, options: dict[str, Any]) -> StrategyProfile:
        self.backbone: Path | None = Path(options["backbone"]) if options.get("backbone") else None
        return super().configure(profile, options)

    def settings(self) -> dict[str, Any]:
        return {**self.profile.to_dict(), "backbone": str(self.backbone.resolve()) if self.backbone else None}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "IacLthStrategy":
        settings = dict(settings)
        backbone = settings.pop("backbone", None)
        return cls(IacProfile.from_dict(settings), {"backbone": backbone})

    def validate_request(self, budgets: Sequence[Budget]) -> None:
        if budgets:
            raise SegnasInputError(f"strategy {self.name} takes no --budget: it refines a trained network; the "
                                   "cells' cost is reported with the result", "--budget")
        if self.backbone is not None:
            self.backbone_record()  # refuse a wrong folder before any data is read

    def budget_range(self, kind: str) -> tuple[float, float]:
        raise SegnasInputError(f"strategy {self.name} searches under no budget", "--budget")

    # ----- the backbone -------------------------------------------------------------------------------------
    def backbone_record(self) -> dict[str, Any]:
        """The ``--backbone`` run record, refused unless it is a finished run of an implantable host."""
        record = read_run(self.backbone)
        kind = record["network"]["kind"]
        if kind not in HOST_KINDS:
            raise SegnasInputError(f"the backbone is a {kind!r} network; cells can be implanted into "
                                   f"{' and '.join(HOST_KINDS)} networks", self.backbone)
        if record.get("status") != "finished" or not (self.backbone / FINAL_MODEL).is_file():
            raise SegnasInputError("the backbone's training has not finished (no model_final.pt)", self.backbone)
        return record

    def plan_stride(self) -> int:
        """The profile's host's total stride (it does not depend on channels or classes)."""
        return max(self.profile_host(1, 2).stride())

    def search_plan(self, dataset: DatasetSpec, show_progress: bool = True, group_by: str | None = None) -> Plan:
        """The backbone's own plan (its patch, spacing, normalisation and subjects), or a plan for the profile's
        host; the profile's ``patch_size`` replaces either's patch. A ``group_by`` other than the backbone's is
        refused: its folds would put the backbone's training subjects among the search's validation cases."""
        if self.backbone is None:
            return super().search_plan(dataset, show_progress, group_by)
        plan = Plan.load(self.backbone / "plan.json")
        if plan.dataset_name != dataset.name:
            raise SegnasInputError(f"the backbone was trained on dataset {plan.dataset_name!r}, not "
                                   f"{dataset.name!r}", self.backbone)
        if group_by is not None and group_by != plan.group_by:
            raise SegnasInputError(f"--group-by {group_by!r}: the backbone's plan groups subjects by "
                                   f"{plan.group_by!r}; the search takes the backbone's folds (leave --group-by "
                                   "out)", self.backbone)
        return self.apply_profile_patch(plan)

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        trained_fold = self.backbone_record()["fold"] if self.backbone is not None else context.fold
        if trained_fold != context.fold:
            raise SegnasInputError(f"the backbone was trained on fold {trained_fold}, the search runs on fold "
                                   f"{context.fold}: its validation cases would not be unseen", self.backbone)

    def profile_host(self, in_channels: int, out_channels: int) -> NetworkSpec:
        """The profile's default backbone for this many input channels and classes, pooling thick slices as the
        plan does once initialised (a host with per-level ``strides``: MONAI's UNet)."""
        host = {**self.profile.host, "in_channels": in_channels, "out_channels": out_channels}
        strides = self.level_strides(len(host["strides"])) if "strides" in host else None
        if strides is not None:
            host["strides"] = strides_to_json(strides)
        return network_from_dict(host)

    def host_spec(self) -> NetworkSpec:
        """The network the cells go into: the ``--backbone`` run's, else the profile's for the plan."""
        if self.backbone is not None:
            return run_network(self.backbone)
        return self.profile_host(self.ctx.plan.num_channels, self.ctx.plan.num_classes)

    def trained_backbone(self) -> tuple[Path, dict[str, Any]]:
        """The backbone's run folder and record (trained now, or resumed, when no --backbone was given)."""
        if self.backbone is not None:
            return self.backbone, self.backbone_record()
        ctx, run_dir = self.ctx, self.ctx.folder.path / "backbone"
        config = TrainConfig(max_steps=self.profile.backbone_steps, batch_size=self.profile.batch_size,
                             seed=ctx.seed, checkpoint_every=max(self.profile.backbone_steps // 10, 1))
        if is_main():
            log.info("backbone: %s trained for %d steps in %s (trained now unless finished there)",
                     self.host_spec().kind, self.profile.backbone_steps, run_dir)
        record = train_or_resume(ctx.data_dir, ctx.plan, self.host_spec(), run_dir, ctx.fold, config,
                                 device=str(ctx.device), augment="full", spec=ctx.dataset,
                                 show_progress=ctx.show_progress)
        return run_dir, record

    # ----- the search ---------------------------------------------------------------------------------------
    def search_network(self, backbone_dir: Path) -> tuple[ImplantedNet, IacSearchNetSpec]:
        """The backbone's trained weights with relaxed cells implanted; host frozen, cells trainable."""
        host = self.host_spec()
        spec = IacSearchNetSpec(host.in_channels, host.out_channels, self.profile.space, host.to_dict(),
                                self.profile.partial_channels)
        torch.manual_seed(self.ctx.seed)
        net = spec.build()
        trained, _ = load_model(backbone_dir / FINAL_MODEL)
        missing, unexpected = net.host.load_state_dict(trained.state_dict(), strict=False)
        if unexpected or any(".cell." not in key for key in missing):
            raise SegnasInputError("the backbone's weights do not fit its implanted network", backbone_dir)
        for parameter in net.parameters():
            parameter.requires_grad_(False)
        for cell in net.cells:
            for parameter in cell.parameters():
                parameter.requires_grad_(True)
        return net, spec

    def run(self, budgets: Sequence[Budget]) -> dict[str, CellArchitecture]:
        ctx, profile = self.ctx, self.profile
        backbone_dir, backbone = self.trained_backbone()
        plan, arch_ids = split_fold(ctx.plan, ctx.fold, ctx.seed)
        steps = profile.epochs * profile.steps_per_epoch
        arch_batches = TrainingBatches(cached_cases(ctx.dataset, plan, arch_ids, show_progress=False),
                                       augmentation(plan, "full"), profile.batch_size, ctx.seed + 1, steps)
        hook = CellSearchHook(profile.space, arch_batches, profile.steps_per_epoch, profile.warmup_epochs,
                              profile.rule(), ctx.seed, profile.arch_lr)
        net, spec = self.search_network(backbone_dir)
        config = TrainConfig(max_steps=steps, batch_size=profile.batch_size, lr=profile.lr, seed=ctx.seed,
                             val_every=profile.steps_per_epoch * max(profile.epochs // 5, 1),
                             checkpoint_every=profile.steps_per_epoch)
        folder = ctx.folder.budget_dir(LABEL)
        record = train_or_resume(ctx.data_dir, plan, spec, folder / "supernet", ctx.fold, config,
                                 device=str(ctx.device), augment="full", hooks=[hook], model=net,
                                 spec=ctx.dataset, show_progress=ctx.show_progress)
        epochs_run = record["steps"] // profile.steps_per_epoch
        host = self.host_spec()
        arch = CellArchitecture(profile.space, host.to_dict(), {SKIP_CELL: hook.genotype()})
        cost = measure_cost(ImplantedNetworkSpec(host.in_channels, host.out_channels, arch), ctx.plan.patch_size,
                            profile.batch_size, ctx.device)
        host_cost = measure_cost(host, ctx.plan.patch_size, profile.batch_size, ctx.device)
        leads = hook.lead_epochs()
        arch.metadata.update(
            strategy=self.name, stopping=profile.stopping, epochs=epochs_run, epochs_limit=profile.epochs,
            stopped_early=epochs_run < profile.epochs, search_seconds=record["train_seconds"],
            backbone=str(backbone_dir.resolve()), backbone_val_dice=backbone.get("validation", {}).get("val_dice"),
            val_dice_relaxed=record["validation"].get("val_dice"), edges_decided=int(hook.tracker.decided.sum()),
            lead_epochs=leads, cost=cost.to_dict(), host_cost=host_cost.to_dict())
        ctx.folder.save_result(LABEL, arch, f"IAC cell ({profile.stopping}), {epochs_run} epochs")
        if is_main():
            atomic_write_text(folder / "stability.json", json.dumps(
                {"edges": [profile.space.edge_name(e) for e in range(profile.space.num_edges)],
                 "ops": list(profile.space.ops), "rule": asdict(profile.rule()) if profile.rule() else None,
                 "epochs_run": epochs_run, "lead_epochs": leads, "history": hook.tracker.history}) + "\n")
            rule = profile.rule()
            stability_figure(profile.space, hook.tracker.history, leads, epochs_run, folder / "stability.png",
                             rule.threshold * hook.tracker.reference if rule else None)
        return {LABEL: arch}

    def describe(self, label: str, arch: CellArchitecture) -> str:  # type: ignore[override]
        meta = arch.metadata
        extra = (meta["cost"]["parameters"] - meta["host_cost"]["parameters"])
        return (f"{label}: {meta['epochs']} of {meta['epochs_limit']} epochs ({meta['stopping']}), "
                f"{meta['edges_decided']} edges decided, +{extra:,} parameters over the host\n{arch.summary()}")

"""``segnas search --strategy dints``: one DiNTS search per budget, with the same outputs as HyperSegNAS.

Search folder: ``search.json``, ``plan.json`` and per budget ``BUDGET/supernet/`` (a run folder of the one
trainer: checkpoints, logs with arch losses and both validations), ``BUDGET/arch.json`` (decoded, with the
estimated and the measured memory in its metadata), ``BUDGET/arch.png`` and ``BUDGET/monai_codes.json``
(``node_a``, ``arch_code_a``, ``arch_code_c`` for ``monai.networks.nets.TopologyInstance``).

An absolute memory budget is mapped onto DiNTS's relative ``ram_factor`` through the cost module: a few
architectures across the space's density are measured, DiNTS's estimate ratio of each (its relaxed
estimate with the logits saturated on that architecture) is computed, and the budget is placed on the
least-squares line between the two. A budget whose factor falls outside (0, 1] cannot be reached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segnas.cost.budget import Budget
from segnas.cost.measure import measure_cost
from segnas.data.dataset import load_dataset
from segnas.data.plan import make_plan
from segnas.data.transforms import TrainingBatches, augmentation, cached_cases
from segnas.engine.run import read_run, train_run
from segnas.engine.trainer import CHECKPOINT_NAME, TrainConfig, read_checkpoint
from segnas.errors import SegnasInputError
from segnas.networks.topology_net import TopologyNet
from segnas.report.draw import draw_architecture
from segnas.spaces.architecture import Architecture
from segnas.spaces.sampler import ArchitectureSampler
from segnas.spaces.topology import DINTS_OPS, TopologySpace
from segnas.strategies.dints.relaxation import ram_cost_usage
from segnas.strategies.dints.search import DintsHook, check_ram_factor
from segnas.strategies.folders import check_resume
from segnas.utils.files import atomic_write_text, check_output_dir, prepare_output_dir
from segnas.utils.runtime import configure_torch


@dataclass(frozen=True)
class DintsProfile:
    """Sizes of one DiNTS search (DiNTS's optimiser settings: SGD lr 0.025, momentum 0.9, wd 4e-5)."""

    name: str
    space: TopologySpace
    batch_size: int
    steps: int
    warmup_steps: int
    val_every: int
    lr: float = 0.025
    calibration_architectures: int = 8


DINTS_PROFILES = {
    "paper": DintsProfile("paper", TopologySpace.named("dints"), batch_size=8, steps=40_000, warmup_steps=20_000,
                          val_every=2000),
    # The HyperSegNAS cpu profile's topology (8 blocks, 3 scales, 8..32 channels) with DiNTS's five
    # operations, so the two strategies search the same graph on CPU; half the steps are warm-up, as in DiNTS.
    "cpu": DintsProfile("cpu", TopologySpace.named("dints", num_blocks=8, num_depths=3, channel_mul=0.25),
                        batch_size=2, steps=600, warmup_steps=300, val_every=150),
    "tiny": DintsProfile("tiny", TopologySpace.named("dints", num_blocks=3, num_depths=2, channel_mul=0.125),
                         batch_size=1, steps=4, warmup_steps=2, val_every=2, calibration_architectures=3),
}


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


class DintsSearch:
    """DiNTS searches on one dataset, one per budget or ram factor."""

    def __init__(self, data_dir: str | Path, out: str | Path, profile: DintsProfile, fold: int = 0, seed: int = 0,
                 device: str = "auto", resume: bool = False, force: bool = False, show_progress: bool = True):
        configure_torch()
        self.data_dir, self.out, self.profile = Path(data_dir), Path(out), profile
        self.fold, self.seed, self.device, self.show_progress = fold, seed, device, show_progress
        self.spec = load_dataset(self.data_dir)
        self.record = {"format": "segnas.search", "version": 1, "strategy": "dints", "dataset": self.spec.name,
                       "space": profile.space.to_dict(), "profile": profile.name, "fold": fold, "seed": seed}
        if resume:
            check_resume(self.out, self.record)
        else:
            check_output_dir(self.out, force, "search folder")
        self.resume, self.force = resume, force
        self.plan = make_plan(self.spec, stride=profile.space.total_stride, show_progress=show_progress)
        self.input_size = (profile.batch_size, self.plan.num_channels, *self.plan.patch_size)

    def network_spec(self, arch: Architecture) -> dict[str, Any]:
        return {"kind": "topology", "architecture": arch.to_dict(), "merge": "sum",
                "in_channels": self.plan.num_channels, "out_channels": self.plan.num_classes}

    def measure(self, arch: Architecture):
        return measure_cost(self.network_spec(arch), self.plan.patch_size, self.profile.batch_size)

    def ram_factor_for(self, budget: Budget) -> tuple[float, dict[str, Any]]:
        """Map an absolute memory budget onto DiNTS's ram factor (see the module docstring)."""
        if budget.kind != "memory":
            raise SegnasInputError(f"DiNTS searches under a memory budget; {budget.text} is a {budget.kind} budget",
                                   "--budget")
        ratios, measured = [], []
        for index in range(self.profile.calibration_architectures):
            q = (index + 1) / (self.profile.calibration_architectures + 1)
            arch = ArchitectureSampler(self.profile.space, self.seed + index, edge_probability=q).sample()
            ratios.append(estimate_ratio(arch, self.input_size))
            measured.append(self.measure(arch).memory_bytes)
        slope, intercept = np.polyfit(ratios, measured, 1)
        factor = float((budget.value - intercept) / slope)
        calibration = {"ratios": ratios, "measured_bytes": measured, "slope": float(slope),
                       "intercept": float(intercept), "factor": factor}
        if not 0 < factor <= 1:
            reachable = (intercept + slope * 1e-3, intercept + slope)
            raise SegnasInputError(f"budget {budget.text} cannot be reached by DiNTS's relaxed space: it maps to "
                                   f"ram factor {factor:.2f}, outside (0, 1]; reachable: about "
                                   f"{min(reachable) / 2**20:.0f}-{max(reachable) / 2**20:.0f} MiB", "--budget")
        return factor, calibration

    def run_one(self, label: str, ram_factor: float, extra: dict[str, Any] | None = None) -> Architecture:
        """Search with ``ram_factor`` into ``out/label``; returns the decoded architecture (also written there)."""
        check_ram_factor(ram_factor)
        profile, folder = self.profile, self.out / label
        if not self.resume:
            if not (self.out / "search.json").is_file():
                prepare_output_dir(self.out, self.force, "search folder")
                self.plan.save(self.out / "plan.json")
                atomic_write_text(self.out / "search.json", json.dumps(self.record, indent=1) + "\n")
        train_ids = sorted(self.plan.fold(self.fold)["train"])
        order = np.random.default_rng(self.seed).permutation(len(train_ids))
        weight_ids = [train_ids[i] for i in order[0::2]]
        arch_ids = [train_ids[i] for i in order[1::2]]
        plan = replace(self.plan, folds=[dict(f) for f in self.plan.folds])
        plan.folds[self.fold] = {"train": weight_ids, "val": self.plan.fold(self.fold)["val"]}
        arch_batches = TrainingBatches(cached_cases(self.spec, plan, arch_ids, show_progress=False),
                                       augmentation(plan, "full"), profile.batch_size, self.seed + 1, profile.steps)
        hook = DintsHook(profile.space, arch_batches, profile.warmup_steps, profile.steps, ram_factor,
                         self.input_size, self.seed)
        torch.manual_seed(self.seed)
        supernet = TopologyNet(profile.space, plan.num_channels, plan.num_classes, merge="sum")
        config = TrainConfig(max_steps=profile.steps, batch_size=profile.batch_size, optimizer="sgd", lr=profile.lr,
                             momentum=0.9, weight_decay=4e-5, val_every=profile.val_every, seed=self.seed,
                             checkpoint_every=max(profile.val_every, 1))
        network = {"kind": "dints-supernet", "space": profile.space.to_dict(), "ram_factor": ram_factor,
                   "in_channels": plan.num_channels, "out_channels": plan.num_classes}
        run_dir = folder / "supernet"
        if (run_dir / "run.json").is_file() and read_run(run_dir).get("status") == "finished":
            record = read_run(run_dir)  # searched already: take the final logits from the checkpoint
            hook.load_state_dict(read_checkpoint(run_dir / CHECKPOINT_NAME)["hooks"][0])
        else:
            resumable = (run_dir / CHECKPOINT_NAME).is_file()
            record = train_run(self.data_dir, plan, network, run_dir, self.fold, config, resume=resumable,
                               force=not resumable, device=self.device, augment="full", hooks=[hook],
                               model=supernet, spec=self.spec, show_progress=self.show_progress)
        arch = hook.decoded()
        estimate = float(ram_cost_usage(profile.space, hook.log_alpha_a.detach(), hook.log_alpha_c.detach(),
                                        self.input_size))
        cost = self.measure(arch)
        arch.metadata.update(extra or {}, estimated_memory_mb=estimate,
                             estimated_ratio=estimate_ratio(arch, self.input_size), cost=cost.to_dict(),
                             measured_memory_mb=cost.memory_bytes / 2**20,
                             val_dice_decoded=record["validation"].get("val_dice"),
                             val_dice_relaxed=record["validation"].get("val_dice_relaxed"),
                             search_seconds=record["train_seconds"])
        arch.save(folder / "arch.json")
        draw_architecture(arch, folder / "arch.png", title=f"DiNTS, {label}")
        node_a, code_a, code_c = arch.to_monai_codes()
        atomic_write_text(folder / "monai_codes.json", json.dumps(
            {"node_a": node_a.tolist(), "arch_code_a": code_a.astype(int).tolist(), "arch_code_c": code_c.tolist(),
             "monai_ops": list(DINTS_OPS), "num_blocks": profile.space.num_blocks,
             "num_depths": profile.space.num_depths, "channel_mul": profile.space.channel_mul,
             "use_downsample": profile.space.stem_downsample}, indent=1) + "\n")
        return arch

"""HyperSegNAS super-net training (paper Eq. 2, 4, 5) and its ablation variants.

:class:`HyperSuperNet` puts the super-net and the Meta-Assistant Network in one module, so that
DistributedDataParallel averages the gradients of both. :class:`SupernetTrainingHook` drives it from
the one trainer: every step samples an architecture (the same on every rank: the draw depends only on
``(seed, step)``) and tells the module where in the schedule the step lies.

Schedule: ``train_steps`` of Eq. 4 (channel weights from the HyperNet), then ``anneal_steps`` of Eq. 5
(λ from 0 to 1 linearly), then the HyperNet is removed and the super-net runs alone with the constant
weight 0.5 (``TopologyNet.fixed_channel_weight``).

Variants (paper Table 1):

=====================  ==============================================  ===================================
variant                training                                         evaluation
=====================  ==============================================  ===================================
``vanilla``            sampled architectures, no HyperNet               super-net alone
``hypernet-image``     HyperNet on the image vector only                HyperNet kept
``hypernet-image-arch``HyperNet on image and architecture               HyperNet kept
``noanneal``           HyperNet on image and architecture               HyperNet removed, weights 0.5
``hypersegnas``        HyperNet, then annealing to 0.5                  HyperNet removed, weights 0.5
=====================  ==============================================  ===================================
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from segnas.engine.trainer import Trainer, TrainerHook
from segnas.networks.topology_net import TopologyNet
from segnas.spaces.architecture import Architecture
from segnas.spaces.sampler import ArchitectureSampler
from segnas.spaces.topology import TopologySpace
from segnas.strategies.hypersegnas.meta_assistant import FIXED_WEIGHT, MetaAssistant, annealed_weights

VARIANTS = ("vanilla", "hypernet-image", "hypernet-image-arch", "noanneal", "hypersegnas")


class HyperSuperNet(nn.Module):
    """Super-net plus (optionally) the Meta-Assistant Network. ``(B, C, *patch) -> (B, K, *patch)``.

    ``forward(x, architecture, anneal_progress)``: ``anneal_progress`` is λ of Eq. 5 (0 during the first
    stage); ``None`` means the HyperNet is no longer used (after removal, or for evaluation of the
    removed variants).
    """

    def __init__(self, space: TopologySpace, in_channels: int, out_channels: int, variant: str = "hypersegnas",
                 merge: str = "mean"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}")
        self.variant = variant
        removes_hypernet = variant in ("noanneal", "hypersegnas")
        self.supernet = TopologyNet(space, in_channels, out_channels, merge=merge,
                                    fixed_channel_weight=FIXED_WEIGHT if removes_hypernet else None)
        self.man: MetaAssistant | None = None
        if variant != "vanilla":
            self.man = MetaAssistant(space, in_channels, "image" if variant == "hypernet-image" else "image+arch")

    @property
    def keeps_hypernet(self) -> bool:
        """Whether the variant evaluates with its HyperNet (the two 'kept' ablations)."""
        return self.variant in ("hypernet-image", "hypernet-image-arch")

    def channel_weights(self, x: torch.Tensor, architecture: Architecture,
                        anneal_progress: float | None) -> torch.Tensor | None:
        if self.man is None or (anneal_progress is None and not self.keeps_hypernet):
            return None
        weights = self.man(x, architecture)
        if anneal_progress is not None and self.variant == "hypersegnas":
            weights = annealed_weights(weights, anneal_progress)
        return weights

    def forward(self, x: torch.Tensor, architecture: Architecture,
                anneal_progress: float | None = None) -> torch.Tensor:
        return self.supernet(x, architecture, self.channel_weights(x, architecture, anneal_progress))

    def remove_hypernet(self) -> TopologyNet:
        """The super-net alone (for the removed variants, it runs with the constant 0.5 weights)."""
        self.man = None
        return self.supernet


def sample_for_step(space: TopologySpace, seed: int, step: int) -> Architecture:
    """The architecture of training step ``step``: a function of ``(seed, step)`` only, so it is the same on
    every rank and after a resume."""
    return ArchitectureSampler(space, np.random.default_rng([seed, step])).sample()


class SupernetTrainingHook(TrainerHook):
    """Samples an architecture per step and sets the stage of the schedule for :class:`HyperSuperNet`."""

    def __init__(self, model: HyperSuperNet, train_steps: int, anneal_steps: int, seed: int,
                 validation_architecture: Architecture):
        self.model, self.seed = model, seed
        self.train_steps, self.anneal_steps = train_steps, anneal_steps
        self.validation_architecture = validation_architecture

    def anneal_progress(self, step: int) -> float | None:
        """λ for ``step``: 0 in the first stage, then linear to 1; ``None`` once the HyperNet is gone."""
        variant = self.model.variant
        if variant == "vanilla":
            return None
        if step < self.train_steps or self.model.keeps_hypernet:
            return 0.0
        if variant == "hypersegnas" and step < self.train_steps + self.anneal_steps:
            return (step - self.train_steps) / max(self.anneal_steps, 1)
        return None

    def before_step(self, trainer: Trainer, step: int, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"architecture": sample_for_step(self.model.supernet.space, self.seed, step),
                "anneal_progress": self.anneal_progress(step)}

    def after_step(self, trainer: Trainer, step: int, record: dict[str, Any]) -> None:
        progress = self.anneal_progress(step)
        record["anneal_lambda"] = 1.0 if progress is None and self.model.man is not None else (progress or 0.0)

    def validation_kwargs(self, trainer: Trainer) -> dict[str, Any]:
        progress = self.anneal_progress(trainer.step)
        return {"architecture": self.validation_architecture, "anneal_progress": progress}

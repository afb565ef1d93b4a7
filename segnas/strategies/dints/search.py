"""DiNTS's search loop as hooks on the one trainer (He et al. 2021; MONAI's DiNTS tutorial).

* The training fold is split into a weight half and an architecture half (every other case, seeded).
* Warm-up: weights only. Afterwards each step alternates first-order updates: the trainer's optimiser
  updates the super-net weights on a weight-half batch with the architecture held fixed; then this hook
  updates the architecture logits with Adam (lr 1e-3, betas 0.5/0.999, DiNTS's settings) on an
  architecture-half batch.
* Architecture loss: DiceCE + r · (entropy of the pattern probabilities + entropy of the operation weights
  + |ram_factor - usage / usage_full| + 0.001 · topology entropy), with r ramped linearly from 0 at the end
  of warm-up to 1 at the end of the search. (MONAI's tutorial ramps all four terms in its AMP branch but
  only the entropies in its fp32 branch; segnas ramps all four in both, which is what DiNTS describes.)
* Validation runs the *decoded* discrete architecture on the super-net (``val_dice``), and also the relaxed
  super-net (``val_dice_relaxed``), so the discretisation gap is visible in every log.
* Logits, Adam state and the architecture-half batch seed live in the hook's state: checkpoints and resume
  go through the trainer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch.utils.data import Dataset

from segnas.engine.trainer import Trainer, TrainerHook
from segnas.errors import SegnasInputError
from segnas.spaces.architecture import Architecture
from segnas.spaces.sampler import FeasiblePatterns
from segnas.spaces.topology import TopologySpace
from segnas.strategies.bilevel import architecture_update
from segnas.strategies.dints.decode import decode, pattern_probabilities
from segnas.strategies.dints.relaxation import path_probabilities, ram_cost_usage, topology_entropy

TOPOLOGY_WEIGHT = 0.001


def check_ram_factor(ram_factor: float) -> float:
    if not 0 < ram_factor <= 1:
        raise SegnasInputError(f"--ram-factor must lie in (0, 1], got {ram_factor}", "--ram-factor")
    return ram_factor


class DintsHook(TrainerHook):
    """Architecture logits, their optimiser and the per-step architecture update.

    Args:
        space: the topology space searched.
        arch_batches: step-indexed batches of the architecture half of the training fold.
        warmup_steps: steps of weight-only training.
        total_steps: the search's length (the ramp reaches 1 there).
        ram_factor: the memory target as a fraction of the full space's estimate (DiNTS's ``factor_ram_cost``).
        input_size: ``(B, C, H, W, D)`` of a training batch, for the memory estimate.
    """

    def __init__(self, space: TopologySpace, arch_batches: Dataset, warmup_steps: int, total_steps: int,
                 ram_factor: float, input_size: tuple[int, ...], seed: int = 0, arch_lr: float = 1e-3):
        self.space, self.arch_batches = space, arch_batches
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.ram_factor, self.input_size = check_ram_factor(ram_factor), tuple(input_size)
        generator = torch.Generator().manual_seed(seed)
        self.log_alpha_a = torch.nn.Parameter(torch.randn(space.num_blocks, space.num_edges, generator=generator)
                                              * 0.01)
        self.log_alpha_c = torch.nn.Parameter(1 + 0.01 * torch.randn(space.num_blocks, space.num_edges,
                                                                     space.num_ops, generator=generator))
        self.optimizer = torch.optim.Adam([self.log_alpha_a, self.log_alpha_c], lr=arch_lr, betas=(0.5, 0.999),
                                          weight_decay=0.0)
        self.patterns = FeasiblePatterns(space)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    # ----- the relaxation and its losses ---------------------------------------------------------------------
    def relaxation(self, detach: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        probs, weights = path_probabilities(self.log_alpha_a), F.softmax(self.log_alpha_c, dim=-1)
        return (probs.detach(), weights.detach()) if detach else (probs, weights)

    def architecture_losses(self) -> dict[str, torch.Tensor]:
        """DiNTS's regularisers at the current logits (differentiable)."""
        pattern_probs = pattern_probabilities(self.log_alpha_a, self.patterns.patterns)
        usage = ram_cost_usage(self.space, self.log_alpha_a, self.log_alpha_c, self.input_size)
        full = ram_cost_usage(self.space, self.log_alpha_a, self.log_alpha_c, self.input_size, full=True)
        return {
            "entropy_paths": -(pattern_probs * torch.log(pattern_probs + 1e-5)).mean(),
            "entropy_ops": -(F.softmax(self.log_alpha_c, -1) * F.log_softmax(self.log_alpha_c, -1)).mean(),
            "ram": torch.abs(self.ram_factor - usage / full),
            "topology": topology_entropy(self.space, pattern_probs, self.patterns),
            "ram_usage_mb": usage.detach(),
        }

    def ramp(self, step: int) -> float:
        return min(1.0, max(0.0, (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)))

    def decoded(self) -> Architecture:
        arch = decode(self.space, self.log_alpha_a, self.log_alpha_c, self.patterns)
        arch.metadata.update(strategy="dints", ram_factor=self.ram_factor)
        return arch

    # ----- trainer hooks --------------------------------------------------------------------------------------
    def before_step(self, trainer: Trainer, step: int, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"relaxation": self.relaxation()}

    def after_step(self, trainer: Trainer, step: int, record: dict[str, Any]) -> None:
        if step >= self.warmup_steps:
            record.update(self.architecture_step(trainer, step))
        if "val_dice" in record:  # the trainer validated the decoded architecture; add the relaxed super-net
            relaxed = trainer.validate({"relaxation": self.relaxation()})
            record["val_dice_relaxed"] = relaxed.get("val_dice")

    def architecture_step(self, trainer: Trainer, step: int) -> dict[str, float]:
        """One Adam update of the logits on the architecture-half batch of ``step`` (weights frozen)."""
        batch = {k: v.to(trainer.device) for k, v in self.arch_batches[step].items()}
        ramp = self.ramp(step)

        def loss_of(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
            logits = model(batch["image"], relaxation=self.relaxation(detach=False))
            task = self.loss_fn(logits.float(), batch["label"])
            terms = self.architecture_losses()
            loss = task + ramp * (terms["entropy_paths"] + terms["entropy_ops"] + terms["ram"]
                                  + TOPOLOGY_WEIGHT * terms["topology"])
            return loss, {"arch_task_loss": float(task.detach()), "ramp": ramp,
                          "ram_ratio_loss": float(terms["ram"].detach()), "ram_usage_mb": float(terms["ram_usage_mb"])}

        return architecture_update(trainer.model, self.optimizer, (self.log_alpha_a, self.log_alpha_c), loss_of)

    def validation_kwargs(self, trainer: Trainer) -> dict[str, Any]:
        return {"architecture": self.decoded()}

    def state_dict(self) -> dict[str, Any]:
        return {"log_alpha_a": self.log_alpha_a.detach().clone(), "log_alpha_c": self.log_alpha_c.detach().clone(),
                "optimizer": self.optimizer.state_dict(), "space": self.space.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("space") != self.space.to_dict():
            raise SegnasInputError("the checkpoint's DiNTS logits belong to another search space")
        with torch.no_grad():
            self.log_alpha_a.copy_(state["log_alpha_a"])
            self.log_alpha_c.copy_(state["log_alpha_c"])
        self.optimizer.load_state_dict(state["optimizer"])

"""The differentiable cell search of IAC (PC-DARTS on cells implanted into a frozen, trained host) as a hook
on the one trainer, with IAC-LTH's stability tracking.

* The training fold is split into a weight half and an architecture half (every other case of a seeded
  shuffle, as segnas's DiNTS). The host's weights are frozen; the trainer's optimiser trains the cells'
  weights on weight-half batches (the trainer's step); this hook then updates the architecture logits on an
  architecture-half batch (first-order DARTS: alternate steps, no unrolled gradient).
* Logits: ``alpha (E, O)`` per edge and operation (softmax over the operations still alive, DARTS) and
  ``beta (E,)`` per edge (softmax over each node's edges: PC-DARTS's edge normalisation, which steadies the
  partial-channel search). One set for every skip connection: the cells share one genotype.
* An *epoch* is ``steps_per_epoch`` steps. For ``warmup_epochs`` only the weights train (PC-DARTS warms up
  before touching the architecture); then, after every epoch, the :class:`StabilityTracker` compares each
  edge's distribution with the last epoch's, prunes stable edges (IAC-LTH) and ends the search once every
  edge is decided; without a rule (IAC's full-length search) it only records the traces.
* Logits, their Adam state and the tracker live in the hook's state, so checkpoints and resume go through the
  trainer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch.utils.data import Dataset

from segnas.engine.trainer import Trainer, TrainerHook
from segnas.spaces.cells import CellSpace, Genotype, discretize
from segnas.strategies.bilevel import architecture_update, cell_logits_state, load_cell_logits_state
from segnas.strategies.iac_lth.stability import StabilityRule, StabilityTracker, reference_divergence


class CellSearchHook(TrainerHook):
    """Architecture logits of the implanted cells, their optimiser, the per-step update and the epoch tracker.

    Args:
        space: the cell space searched.
        arch_batches: step-indexed batches of the architecture half of the training fold.
        steps_per_epoch: steps counted as one epoch.
        warmup_epochs: epochs of weight-only training before the first architecture update.
        rule: IAC-LTH's stability rule, or ``None`` for IAC's fixed-length search.
        arch_lr: Adam's learning rate on the logits (betas 0.5/0.999, weight decay 1e-3: PC-DARTS's).
    """

    def __init__(self, space: CellSpace, arch_batches: Dataset, steps_per_epoch: int, warmup_epochs: int,
                 rule: StabilityRule | None, seed: int = 0, arch_lr: float = 3e-3):
        self.space, self.arch_batches = space, arch_batches
        self.steps_per_epoch, self.warmup_epochs = steps_per_epoch, warmup_epochs
        generator = torch.Generator().manual_seed(seed)
        self.alpha = torch.nn.Parameter(1e-3 * torch.randn(space.num_edges, space.num_ops, generator=generator))
        self.beta = torch.nn.Parameter(1e-3 * torch.randn(space.num_edges, generator=generator))
        self.optimizer = torch.optim.Adam([self.alpha, self.beta], lr=arch_lr, betas=(0.5, 0.999), weight_decay=1e-3)
        self.tracker = StabilityTracker(space.num_edges, space.num_ops, rule,
                                        reference_divergence(arch_lr, steps_per_epoch))
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    # ----- the relaxation ------------------------------------------------------------------------------------
    def weights(self, detach: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(op_weights (E, O), edge_weights (E,))``: softmax over alive operations (pruned ones exactly 0)
        and, per node, softmax over its edges."""
        alive = torch.as_tensor(self.tracker.alive)
        op_weights = F.softmax(self.alpha.masked_fill(~alive, float("-inf")), dim=-1)
        edge_weights = torch.cat([F.softmax(self.beta[list(self.space.node_edges(node))], dim=0)
                                  for node in range(self.space.nodes)])
        return (op_weights.detach(), edge_weights.detach()) if detach else (op_weights, edge_weights)

    def genotype(self) -> Genotype:
        op_weights, edge_weights = self.weights()
        return discretize(self.space, op_weights.numpy(), edge_weights.numpy())

    def epoch(self, steps_done: int) -> int:
        return steps_done // self.steps_per_epoch

    # ----- trainer hooks -------------------------------------------------------------------------------------
    def before_step(self, trainer: Trainer, step: int, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"cell_weights": tuple(w.to(trainer.device) for w in self.weights())}

    def validation_kwargs(self, trainer: Trainer) -> dict[str, Any]:
        return {"cell_weights": tuple(w.to(trainer.device) for w in self.weights())}

    def after_step(self, trainer: Trainer, step: int, record: dict[str, Any]) -> None:
        done = step + 1
        if done > self.warmup_epochs * self.steps_per_epoch:
            record.update(self.architecture_step(trainer, step))
        if done % self.steps_per_epoch == 0 and self.epoch(done) >= self.warmup_epochs:
            events = self.tracker.end_epoch(self.epoch(done), self.alpha.detach().numpy())
            record.update(epoch=self.epoch(done), edges_decided=int(self.tracker.decided.sum()),
                          operations_alive=int(self.tracker.alive.sum()), pruned_edges=len(events))

    def should_stop(self, trainer: Trainer) -> bool:
        return self.tracker.rule is not None and self.tracker.all_decided()

    def architecture_step(self, trainer: Trainer, step: int) -> dict[str, float]:
        """One Adam update of the logits on the architecture-half batch of ``step`` (cell weights held)."""
        batch = {k: v.to(trainer.device) for k, v in self.arch_batches[step].items()}

        def loss_of(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
            weights = tuple(w.to(trainer.device) for w in self.weights(detach=False))
            return self.loss_fn(model(batch["image"], cell_weights=weights).float(), batch["label"]), {}

        return architecture_update(trainer.model, self.optimizer, (self.alpha, self.beta), loss_of)

    def state_dict(self) -> dict[str, Any]:
        return {**cell_logits_state(self.space, self.alpha, self.beta, self.optimizer),
                "tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_cell_logits_state(state, self.space, self.alpha, self.beta, self.optimizer)
        self.tracker.load_state_dict(state["tracker"])

    # ----- the temporal analysis ---------------------------------------------------------------------------
    def lead_epochs(self) -> list[int | None]:
        """Per edge, the first epoch from which its final strongest operation stayed the strongest (IAC-LTH's
        "early-emerging operations"); ``None`` for edges never tracked."""
        history = self.tracker.history
        if not history:
            return [None] * self.space.num_edges
        final = np.argmax(history[-1]["probabilities"], axis=1)
        leads: list[int | None] = []
        for edge in range(self.space.num_edges):
            lead = history[-1]["epoch"]
            for entry in reversed(history):
                if int(np.argmax(entry["probabilities"][edge])) != final[edge]:
                    break
                lead = entry["epoch"]
            leads.append(lead)
        return leads

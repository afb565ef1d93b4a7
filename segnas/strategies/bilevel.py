"""What differentiable searches share (DiNTS, IAC-LTH; Scalable NAS the averaging): the training fold split into
a weight half and an architecture half, the first-order update of architecture logits with the network's weights
held, and the logits' gradients averaged across ranks.

Both alternate, per step, the trainer's update of the weights on a weight-half batch with one update of the
logits on an architecture-half batch (first-order DARTS: no unrolled second-order gradient).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from segnas.data.plan import Plan
from segnas.errors import SegnasInputError
from segnas.spaces.cells import CellSpace


def split_fold(plan: Plan, fold: int, seed: int) -> tuple[Plan, list[str]]:
    """A copy of ``plan`` whose fold ``fold`` trains on the weight half only, and the architecture half's case
    ids: alternate cases of a seeded shuffle of the fold's training cases."""
    train_ids = sorted(plan.fold(fold)["train"])
    order = np.random.default_rng(seed).permutation(len(train_ids))
    weight_plan = replace(plan, folds=[dict(f) for f in plan.folds])
    weight_plan.folds[fold] = {"train": [train_ids[i] for i in order[0::2]], "val": plan.fold(fold)["val"]}
    return weight_plan, [train_ids[i] for i in order[1::2]]


def average_across_ranks(logits: Sequence[nn.Parameter]) -> None:
    """Average the logits' gradients across ranks under torchrun (each rank took its own batch); no-op alone."""
    if dist.is_initialized():
        for parameter in logits:
            dist.all_reduce(parameter.grad)
            parameter.grad /= dist.get_world_size()


def architecture_update(model: nn.Module, optimizer: torch.optim.Optimizer, logits: Sequence[nn.Parameter],
                        loss_of: Callable[[nn.Module], tuple[torch.Tensor, dict[str, Any]]]) -> dict[str, Any]:
    """One optimiser step on ``logits`` for the loss ``loss_of(model)`` returns, the model's weights held (their
    ``requires_grad`` is switched off for the pass and restored). Under torchrun every rank took its own batch,
    so the logits' gradients are averaged across ranks. Returns the loss (as ``arch_loss``) and the extras."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        loss, extras = loss_of(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_across_ranks(logits)
        optimizer.step()
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
    return {"arch_loss": float(loss.detach()), **extras}


def cell_logits_state(space: CellSpace, alpha: torch.Tensor, beta: torch.Tensor,
                      optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The checkpointed state of a cell search's logits (operations ``alpha``, connections ``beta``), their
    optimiser and the space they belong to."""
    return {"alpha": alpha.detach().clone(), "beta": beta.detach().clone(), "optimizer": optimizer.state_dict(),
            "space": space.to_dict()}


def load_cell_logits_state(state: dict[str, Any], space: CellSpace, alpha: torch.Tensor, beta: torch.Tensor,
                           optimizer: torch.optim.Optimizer) -> None:
    """Restore :func:`cell_logits_state` in place; a checkpoint of another cell space is refused."""
    if state.get("space") != space.to_dict():
        raise SegnasInputError("the checkpoint's cell logits belong to another cell space")
    with torch.no_grad():
        alpha.copy_(state["alpha"])
        beta.copy_(state["beta"])
    optimizer.load_state_dict(state["optimizer"])

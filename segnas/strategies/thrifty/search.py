"""Thrifty NAS's joint search of the cell (micro) and the cell path (macro) as a hook on the one trainer, and
the cost model of its thrift term.

* Micro level: one set of operation logits ``alpha (E, O)`` for every cell (DARTS: a softmax over the
  operations of each edge; PC-DARTS's partial channels on the relaxed edges), discretised by DARTS's rule.
* Macro level: the path logits ``gamma (L, D, 3)`` of :mod:`segnas.strategies.thrifty.path`, decoded by Viterbi.
* Bilevel, first order (DARTS, Auto-DeepLab): the trainer's optimiser updates the weights on a weight-half
  batch, then this hook updates the logits on an architecture-half batch, after a weight-only warm-up.
* Architecture loss: DiceCE + ``thrift * max(0, E[cost] / reference - 1)``, ``E[cost]`` the
  :class:`ThriftCostModel`'s expectation under the path's visit probabilities and the operations' softmax, and
  ``reference`` the model's cost of the reference network (the U-Net path, every kept edge a separable
  convolution): the search may trade accuracy for cost below the reference, never above it for free.
* ``search`` = ``micro`` holds the path at the U-Net path; ``macro`` holds the cell at the reference cell: the
  two ablations of the benchmark, on the same loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch.utils.data import Dataset

from segnas.data.plan import LevelStrides, level_scale
from segnas.engine.trainer import Trainer, TrainerHook
from segnas.errors import SegnasInputError
from segnas.networks.cells import Cell, genotype_sample, make_op
from segnas.spaces.cells import CellSpace, Genotype, discretize, uniform_genotype
from segnas.strategies.bilevel import architecture_update
from segnas.strategies.thrifty.path import (MOVES, decode_path, move_probabilities, path_one_hot, u_path,
                                           visit_probabilities)

#: Which levels a search learns: both (Thrifty NAS), the cell only (the U-Net path held) or the path only.
SEARCHES = ("both", "micro", "macro")
#: The operation of the reference cell's kept edges: the middle of the space's cost, and MobileNet's and
#: DARTS's workhorse for small networks.
REFERENCE_OP = "sep_conv_3x3x3"
COST_KINDS = ("parameters", "memory")


def _activation_elements(module: nn.Module, channels: int) -> float:
    """Elements per voxel of every output a leaf module of ``module`` keeps for backward (the activation memory
    of a training step, the part that grows with the patch), counted on a ``4^3`` probe."""
    total = 0

    def count(leaf: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if not isinstance(leaf, nn.Identity):
            total += output.numel()

    handles = [m.register_forward_hook(count) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, channels, 4, 4, 4))
    finally:
        for handle in handles:
            handle.remove()
    return total / out[0, 0].numel()


@dataclass
class ThriftCostModel:
    """A differentiable model of one cost of a cell-path network at given widths: ``fixed[s]`` for a cell at level
    ``s`` (its projections and output convolution), ``per_edge[s][o]`` for each of its kept edges running
    operation ``o``. Parameters are counted exactly; memory is modelled as 4 bytes per activation element a
    layer keeps, times the level's voxels and the batch. The measured cost stays the truth the budget is
    checked against; the model only steers the search (its ratio to the reference's is what the loss uses)."""

    kind: str
    fixed: list[float]
    per_edge: list[list[float]]

    @classmethod
    def build(cls, kind: str, space: CellSpace, widths: Sequence[int], patch_size: Sequence[int],
              batch_size: int, strides: LevelStrides | None = None) -> "ThriftCostModel":
        if kind not in COST_KINDS:
            raise SegnasInputError(f"the thrift cost model knows {list(COST_KINDS)}, not {kind!r}")
        fixed, per_edge = [], []
        voxels = float(torch.tensor(patch_size, dtype=torch.float64).prod())
        for level, width in enumerate(widths):
            # voxels of level ``level`` relative to level 0's (8 per level without per-axis strides)
            shrink = math.prod(level_scale(strides, level + 1)) // math.prod(level_scale(strides, 1))
            scale = batch_size * voxels / shrink * 4

            def cost(module: nn.Module) -> float:
                if kind == "parameters":
                    return float(sum(p.numel() for p in module.parameters()))
                return scale * _activation_elements(_Pair(module) if isinstance(module, Cell) else module, width)

            skip_cell = Cell(space, [width, width], width, width, uniform_genotype(space, "skip_connect"),
                             zero_output=False)
            fixed.append(cost(skip_cell))
            per_edge.append([0.0 if op == "zero" else cost(make_op(op, width, affine=True)) for op in space.ops])
        return cls(kind, fixed, per_edge)

    def of(self, space: CellSpace, path: Sequence[int], genotype: Genotype) -> float:
        """The model's cost of one discrete network."""
        return sum(self.fixed[level] + sum(self.per_edge[level][space.ops.index(op)] for kept in genotype
                                           for _, op in kept) for level in path)

    def expected(self, space: CellSpace, visits: torch.Tensor, op_probs: torch.Tensor) -> torch.Tensor:
        """The expectation under ``visits (L, D)`` and ``op_probs (E, O)``; each edge kept with probability
        ``keep / (its node's candidate edges)``."""
        kept = torch.tensor([min(1.0, space.keep / len(space.node_edges(node))) for node, _ in space.edges])
        per_edge = torch.tensor(self.per_edge, dtype=op_probs.dtype)  # (D, O)
        per_cell = torch.tensor(self.fixed, dtype=op_probs.dtype) + (kept[:, None] * op_probs).sum(0) @ per_edge.T
        return (visits * per_cell[None, : visits.shape[1]]).sum()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "fixed": self.fixed, "per_edge": self.per_edge}


class _Pair(nn.Module):
    """A two-input cell probed with one tensor (both inputs the same)."""

    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cell([x, x])


class ThriftySearchHook(TrainerHook):
    """The logits of both levels, their optimiser and the per-step architecture update.

    Args:
        space: the cell space; layers, levels: the lattice's ``L`` and ``D``.
        arch_batches: step-indexed batches of the architecture half of the training fold.
        warmup_steps: weight-only steps first.
        search: which levels are learned (:data:`SEARCHES`).
        cost_model, thrift: the thrift term's cost model and weight (0: no thrift term).
        arch_lr: Adam's learning rate on the logits (betas 0.5/0.999, weight decay 1e-3: DARTS's).
    """

    def __init__(self, space: CellSpace, layers: int, levels: int, arch_batches: Dataset, warmup_steps: int,
                 search: str, cost_model: ThriftCostModel, thrift: float, seed: int = 0, arch_lr: float = 3e-3):
        if search not in SEARCHES:
            raise SegnasInputError(f"--search must be one of {list(SEARCHES)}, got {search!r}", "--search")
        self.space, self.layers, self.levels, self.search = space, layers, levels, search
        self.arch_batches, self.warmup_steps = arch_batches, warmup_steps
        self.cost_model, self.thrift = cost_model, thrift
        self.reference_path = u_path(layers, levels)
        self.reference_cell = reference_genotype(space)
        self.reference_cost = cost_model.of(space, self.reference_path, self.reference_cell)
        generator = torch.Generator().manual_seed(seed)
        self.alpha = nn.Parameter(1e-3 * torch.randn(space.num_edges, space.num_ops, generator=generator))
        self.gamma = nn.Parameter(1e-3 * torch.randn(layers, levels, len(MOVES), generator=generator))
        self.learned = [p for p, on in ((self.alpha, search != "macro"), (self.gamma, search != "micro")) if on]
        self.optimizer = torch.optim.Adam(self.learned, lr=arch_lr, betas=(0.5, 0.999), weight_decay=1e-3)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    # ----- the relaxation ------------------------------------------------------------------------------------
    def op_probabilities(self) -> torch.Tensor:
        """``(E, O)``: the softmax of ``alpha`` (one-hot on the reference cell when the cell is held)."""
        if self.search == "macro":
            ops, _ = genotype_sample(self.space, self.reference_cell)
            return F.one_hot(torch.tensor([max(op, 0) for op in ops]), self.space.num_ops).float() * \
                torch.tensor([[op >= 0] for op in ops])
        return F.softmax(self.alpha, dim=-1)

    def moves(self) -> torch.Tensor:
        """``(L, D, 3)`` move probabilities (one-hot on the U-Net path when the path is held)."""
        if self.search == "micro":
            return path_one_hot(self.reference_path, self.levels)
        return move_probabilities(self.gamma)

    def forward_kwargs(self, device: torch.device, detach: bool = True) -> dict[str, Any]:
        """The search network's keyword arguments: relaxed cells (or the held cell as a sample) and the moves."""
        if self.search == "macro":
            ops, gates = genotype_sample(self.space, self.reference_cell)
            cells: dict[str, Any] = {"sample": (ops, gates.to(device))}
        else:
            op_weights = self.op_probabilities()
            cells = {"op_weights": (op_weights.detach() if detach else op_weights).to(device)}
        moves = self.moves()
        return {"cells": cells, "moves": (moves.detach() if detach else moves).to(device)}

    def path(self) -> list[int]:
        return self.reference_path if self.search == "micro" else decode_path(self.moves())

    def genotype(self) -> Genotype:
        if self.search == "macro":
            return self.reference_cell
        return discretize(self.space, self.op_probabilities().detach().numpy())

    def cost_ratio(self) -> torch.Tensor:
        """The model's expected cost over the reference network's (differentiable)."""
        expected = self.cost_model.expected(self.space, visit_probabilities(self.moves()), self.op_probabilities())
        return expected / self.reference_cost

    # ----- trainer hooks -------------------------------------------------------------------------------------
    def before_step(self, trainer: Trainer, step: int, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return self.forward_kwargs(trainer.device)

    def validation_kwargs(self, trainer: Trainer) -> dict[str, Any]:
        return self.forward_kwargs(trainer.device)

    def after_step(self, trainer: Trainer, step: int, record: dict[str, Any]) -> None:
        if step + 1 <= self.warmup_steps:
            return
        batch = {k: v.to(trainer.device) for k, v in self.arch_batches[step].items()}

        def loss_of(model: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
            logits = model(batch["image"], **self.forward_kwargs(trainer.device, detach=False)).float()
            ratio = self.cost_ratio()
            penalty = self.thrift * F.relu(ratio - 1.0)
            return self.loss_fn(logits, batch["label"]) + penalty.to(logits.device), {"cost_ratio": float(ratio.detach())}

        record.update(architecture_update(trainer.model, self.optimizer, self.learned, loss_of))

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha.detach().clone(), "gamma": self.gamma.detach().clone(),
                "optimizer": self.optimizer.state_dict(), "space": self.space.to_dict(), "search": self.search}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("space") != self.space.to_dict() or state.get("search") != self.search:
            raise SegnasInputError("the checkpoint's logits belong to another cell space or search")
        with torch.no_grad():
            self.alpha.copy_(state["alpha"])
            self.gamma.copy_(state["gamma"])
        self.optimizer.load_state_dict(state["optimizer"])


def reference_genotype(space: CellSpace) -> Genotype:
    """The reference cell: every kept edge :data:`REFERENCE_OP` (the space's first convolution without it)."""
    ops = [op for op in space.ops if "conv" in op]
    return uniform_genotype(space, REFERENCE_OP if REFERENCE_OP in space.ops else (ops or [space.ops[-1]])[0])

"""Stochastic sampling over the continuous relaxation of a U-Net of cells (Scalable NAS), as a trainer hook.

Per cell type ``t`` the search holds operation logits ``alpha[t] (E, O)`` and connection logits ``beta[t] (E,)``.
Every training step draws one discrete network from them, the same for every layer of a type:

* **operation** of edge ``e``: ``k = argmax(alpha[t, e] + g)`` with Gumbel noise ``g`` (a sample of
  ``softmax(alpha[t, e])``), over the operations other than ``zero`` (connections are sampled below);
* **connections** of node ``n``: the ``keep`` edges with the largest ``beta[t, e] + g`` among the node's
  candidate edges (Gumbel top-k: a sample without replacement of ``softmax(beta[t, node])``);
* the drawn edge is multiplied by the straight-through gate ``1 + s - s.detach()``: exactly 1 forward and,
  backward, the gradient of the tempered softmax ``s = softmax((logits + g) / tau)`` at the drawn index (GDAS's
  hard Gumbel-softmax estimator; for connections, at each of the ``keep`` drawn edges). Only the drawn operations run, so a step costs the memory of one
  sampled network, and the weights are trained on the discrete networks the derivation will produce.

Weights and logits are learned jointly on the same training batch (the paper's end-to-end joint
optimisation): the trainer's backward fills the logits' gradients too, and :meth:`after_step` applies this
hook's own Adam to them. ``tau`` decays linearly from ``tau_start`` to ``tau_end`` after a weight-only warm-up,
during which networks are drawn uniformly.

``sampling = "full"`` replaces the draw by DARTS's full relaxation on the same space and logits (every
operation run and weighted by ``softmax(alpha)``, every edge by the node's ``softmax(beta)``): the baseline the
paper's sampling is measured against (memory per step, discretisation gap).

A budget adds ``penalty * max(0, E[cost] / budget - 1)``, with ``E[cost]`` the expected cost of the drawn
network under the logits by the measured per-edge cost table of :class:`CostTable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segnas.engine.trainer import Trainer, TrainerHook
from segnas.errors import SegnasInputError
from segnas.networks.cells import genotype_sample
from segnas.spaces.cells import UNET_CELL_TYPES, CellSpace, Genotype
from segnas.strategies.bilevel import average_across_ranks, cell_logits_state, load_cell_logits_state

SAMPLINGS = ("gumbel", "full")


@dataclass
class CostTable:
    """A measured linear model of one cost of a U-Net of cells: ``base`` (every kept edge ``skip_connect``)
    plus, per kept edge of cell type ``t`` running operation ``o``, ``per_edge[t][o]``."""

    kind: str
    base: float
    per_edge: dict[str, dict[str, float]]

    def of(self, genotypes: dict[str, Genotype]) -> float:
        return self.base + sum(self.per_edge[t][op] for t, g in genotypes.items() for kept in g for _, op in kept)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "base": self.base, "per_edge": self.per_edge}


def masked_ops(space: CellSpace) -> torch.Tensor:
    """``(O,)`` True for the operations a drawn edge may run (all but ``zero``: connections are sampled)."""
    return torch.tensor([op != "zero" for op in space.ops])


def operation_logits(space: CellSpace, alpha: torch.Tensor) -> torch.Tensor:
    """``alpha`` (``(..., E, O)``) with ``zero`` at minus infinity: no drawn or derived edge runs it."""
    return alpha.masked_fill(~masked_ops(space), float("-inf"))


def derive(space: CellSpace, alpha: torch.Tensor, beta: torch.Tensor) -> Genotype:
    """The most probable cell: per node the ``keep`` edges of largest ``beta``, each with its most probable
    operation other than ``zero`` (ties to the lower index)."""
    logits, beta = operation_logits(space, alpha.detach()), beta.detach()
    genotype = []
    for node in range(space.nodes):
        edges = list(space.node_edges(node))
        chosen = sorted(sorted(edges, key=lambda e: (-float(beta[e]), e))[: space.keep])
        genotype.append(tuple((space.edges[e][1], space.ops[int(logits[e].argmax())]) for e in chosen))
    return tuple(genotype)


def _gumbel(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    uniform = torch.rand(*shape, generator=generator).clamp_(1e-9, 1 - 1e-9)
    return -torch.log(-torch.log(uniform))


def draw(space: CellSpace, alpha: torch.Tensor, beta: torch.Tensor, tau: float,
         generator: torch.Generator) -> tuple[list[int], torch.Tensor]:
    """One drawn cell as ``(ops (E,) with -1 for edges off, gates (E,))``; gates carry the logits' gradients."""
    logits = operation_logits(space, alpha)
    perturbed = logits + _gumbel(alpha.shape, generator)
    ops = perturbed.detach().argmax(dim=1)
    soft = F.softmax(perturbed / tau, dim=1).gather(1, ops[:, None])[:, 0]
    op_gate = 1 + soft - soft.detach()
    chosen = [-1] * space.num_edges
    noisy_beta = beta + _gumbel(beta.shape, generator)
    edge_gates = []
    for node in range(space.nodes):  # a node's candidate edges are contiguous, in order
        edges = list(space.node_edges(node))
        node_soft = F.softmax(noisy_beta[edges] / tau, dim=0)
        drawn = torch.zeros(len(edges))
        drawn[torch.topk(noisy_beta[edges].detach(), min(space.keep, len(edges))).indices] = 1.0
        edge_gates.append(drawn * (1 + node_soft - node_soft.detach()))
        for index in drawn.nonzero()[:, 0].tolist():
            chosen[edges[index]] = int(ops[edges[index]])
    return chosen, op_gate * torch.cat(edge_gates)


class SamplingSearchHook(TrainerHook):
    """Logits of every cell type, their Adam, the per-step draw and update, the budget penalty.

    Args:
        space: the cell space.
        steps: the search's steps; warmup_steps: weight-only steps first.
        sampling: ``gumbel`` (the paper's stochastic sampling) or ``full`` (DARTS's relaxation, the baseline).
        tau_start, tau_end: the Gumbel-softmax temperature's linear decay after the warm-up.
        arch_lr: Adam's learning rate on the logits (betas 0.5/0.999, weight decay 1e-3, as DARTS/GDAS).
        budget, cost_table, penalty: an optional budget on ``cost_table.kind`` and the penalty's weight.
    """

    def __init__(self, space: CellSpace, steps: int, warmup_steps: int, sampling: str = "gumbel",
                 tau_start: float = 5.0, tau_end: float = 0.5, arch_lr: float = 1e-2, seed: int = 0,
                 budget: float | None = None, cost_table: CostTable | None = None, penalty: float = 1.0):
        if sampling not in SAMPLINGS:
            raise SegnasInputError(f"--sampling must be one of {list(SAMPLINGS)}, got {sampling!r}")
        self.space, self.steps, self.warmup_steps, self.sampling = space, steps, warmup_steps, sampling
        self.tau_start, self.tau_end = tau_start, tau_end
        init = torch.Generator().manual_seed(seed)
        types = len(UNET_CELL_TYPES)
        self.alpha = torch.nn.Parameter(1e-3 * torch.randn(types, space.num_edges, space.num_ops, generator=init))
        self.beta = torch.nn.Parameter(1e-3 * torch.randn(types, space.num_edges, generator=init))
        self.optimizer = torch.optim.Adam([self.alpha, self.beta], lr=arch_lr, betas=(0.5, 0.999), weight_decay=1e-3)
        self.generator = torch.Generator().manual_seed(seed + 7)
        self.budget, self.cost_table, self.penalty = budget, cost_table, penalty
        self._per_edge = None if cost_table is None else torch.tensor(
            [[cost_table.per_edge[t].get(op, 0.0) for op in space.ops] for t in UNET_CELL_TYPES])

    # ----- the architecture ----------------------------------------------------------------------------------
    def tau(self, step: int) -> float:
        span = max(self.steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.tau_start + (self.tau_end - self.tau_start) * progress

    def searching(self, step: int) -> bool:
        return step >= self.warmup_steps

    def genotypes(self) -> dict[str, Genotype]:
        """The most probable cell of every type (the derivation)."""
        return {t: derive(self.space, self.alpha[i], self.beta[i]) for i, t in enumerate(UNET_CELL_TYPES)}

    def cells_kwargs(self, step: int, device: torch.device) -> dict[str, dict[str, Any]]:
        """``CellUNet.forward``'s ``cells`` for training step ``step``: a draw (or the full relaxation)."""
        searching = self.searching(step)
        alpha = self.alpha if searching else torch.zeros_like(self.alpha)  # warm-up: uniform, no gradient
        beta = self.beta if searching else torch.zeros_like(self.beta)
        kwargs = {}
        for index, cell_type in enumerate(UNET_CELL_TYPES):
            if self.sampling == "full":
                op_weights = F.softmax(operation_logits(self.space, alpha[index]), dim=1)
                edge_weights = torch.cat([F.softmax(beta[index][list(self.space.node_edges(n))], dim=0)
                                          for n in range(self.space.nodes)])
                kwargs[cell_type] = {"op_weights": op_weights.to(device), "edge_weights": edge_weights.to(device)}
            else:
                ops, gates = draw(self.space, alpha[index], beta[index], self.tau(step), self.generator)
                kwargs[cell_type] = {"sample": (ops, gates.to(device))}
        return kwargs

    def derived_kwargs(self, device: torch.device) -> dict[str, dict[str, Any]]:
        """``cells`` that run the derived network inside the search net (its inherited weights)."""
        return {t: {"sample": tuple(x.to(device) if torch.is_tensor(x) else x
                                    for x in genotype_sample(self.space, g))} for t, g in self.genotypes().items()}

    def expected_cost(self) -> torch.Tensor:
        """The cost model's expectation under the logits: ``P(edge kept) * E[per-edge cost of its operation]``
        summed, with ``P(kept) = min(1, keep * softmax(beta over the node))``."""
        assert self._per_edge is not None
        op_probs = F.softmax(operation_logits(self.space, self.alpha), dim=2)
        per_edge = (op_probs * self._per_edge[:, None, :]).sum(dim=2)  # (T, E)
        kept = torch.cat([F.softmax(self.beta[:, list(self.space.node_edges(n))], dim=1)
                          for n in range(self.space.nodes)], dim=1)
        kept = (kept * self.space.keep).clamp(max=1.0)
        return self.cost_table.base + (kept * per_edge).sum()

    # ----- trainer hooks -------------------------------------------------------------------------------------
    def before_step(self, trainer: Trainer, step: int, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"cells": self.cells_kwargs(step, trainer.device)}

    def extra_loss(self, trainer: Trainer, step: int, batch: dict[str, torch.Tensor], logits: torch.Tensor,
                   forward_kwargs: dict[str, Any]) -> torch.Tensor | None:
        if self.budget is None or not self.searching(step):
            return None
        return self.penalty * F.relu(self.expected_cost() / self.budget - 1.0).to(logits.device)

    def after_step(self, trainer: Trainer, step: int, record: dict[str, Any]) -> None:
        if not self.searching(step):
            return
        scale = trainer.scaler.get_scale() if trainer.scaler.is_enabled() else 1.0
        for parameter in (self.alpha, self.beta):
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            parameter.grad /= scale
        average_across_ranks((self.alpha, self.beta))  # each rank drew its own network on its own batch
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        record["tau"] = round(self.tau(step), 4)
        if self.budget is not None:
            record["expected_cost_ratio"] = float(self.expected_cost().detach() / self.budget)
        record["mean_max_op_probability"] = float(self.operation_probabilities().max(dim=2).values.mean())

    def validation_kwargs(self, trainer: Trainer) -> dict[str, Any]:
        return {"cells": self.derived_kwargs(trainer.device)}

    def state_dict(self) -> dict[str, Any]:
        return {**cell_logits_state(self.space, self.alpha, self.beta, self.optimizer),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_cell_logits_state(state, self.space, self.alpha, self.beta, self.optimizer)
        self.generator.set_state(state["generator"])

    def operation_probabilities(self) -> torch.Tensor:
        """``(T, E, O)`` operation probabilities, ``zero`` excluded."""
        return F.softmax(operation_logits(self.space, self.alpha.detach()), dim=2)

    def probabilities(self) -> dict[str, np.ndarray]:
        """Per cell type, ``(E, O)`` operation probabilities (``zero`` excluded) for reports."""
        probs = self.operation_probabilities()
        return {t: probs[i].numpy() for i, t in enumerate(UNET_CELL_TYPES)}

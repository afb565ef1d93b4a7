"""Decoding DiNTS's relaxed topology to the most probable feasible architecture, by dynamic programming.

DiNTS (and MONAI's ``TopologySearch.decode``) scores every non-empty edge pattern ("child") of a block by
its probability under independent sigmoid path probabilities, renormalised to exclude the empty pattern,
and finds the chain of children with the smallest sum of ``-log(p + 1e-5) + 0.001`` in which each
block's pattern leaves exactly the scales the previous block's pattern reached. MONAI builds a dense graph
of ``(1 + L * (2^E - 1) + 1)^2`` entries and runs Dijkstra on it (about 13 s and 1.2 GB for L=12, E=10).

The chain structure makes this a shortest path in a layered graph whose transitions depend only on the
scale set, so a per-block dynamic programme over the ``2^D - 1`` scale sets is exact: for every block and
every pattern, the best cost is the pattern's own cost plus the best cost of the previous block among
patterns ending on the scales it leaves. Time O(L * 2^E), memory O(L * 2^E).
"""

from __future__ import annotations

import numpy as np
import torch

from segnas.errors import SegnasInputError
from segnas.spaces.architecture import Architecture
from segnas.spaces.sampler import FeasiblePatterns
from segnas.spaces.topology import TopologySpace

#: The edge cost of MONAI's graph: -log(p + EPSILON) + OFFSET (the offset keeps every edge positive).
EPSILON, OFFSET = 1e-5, 0.001


def pattern_probabilities(log_alpha_a: torch.Tensor, patterns: np.ndarray) -> torch.Tensor:
    """``(L, C)`` probability of each non-empty edge pattern per block (``patterns``: ``(C, E)`` bool).

    ``p_e = sigmoid(log_alpha_a)``; a pattern's probability is ``prod(p_e on, 1 - p_e off)``, divided by
    ``1 - prod(1 - p_e)`` so that the non-empty patterns sum to one (DiNTS's ``get_prob_a(child=True)``).
    """
    p = torch.sigmoid(log_alpha_a)  # (L, E)
    on = torch.as_tensor(patterns, dtype=p.dtype, device=p.device)  # (C, E)
    probs = (on[None] * p[:, None] + (1 - on[None]) * (1 - p[:, None])).prod(-1)  # (L, C)
    norm = 1 - (1 - p).prod(-1, keepdim=True)
    return probs / norm


def check_logit_shapes(space: TopologySpace, log_alpha_a: torch.Tensor, log_alpha_c: torch.Tensor) -> None:
    """Refuse logits that belong to another space (their shapes are ``(L, E)`` and ``(L, E, O)``)."""
    expected_a = (space.num_blocks, space.num_edges)
    expected_c = (*expected_a, space.num_ops)
    if tuple(log_alpha_a.shape) != expected_a or tuple(log_alpha_c.shape) != expected_c:
        raise SegnasInputError(f"DiNTS logits of shapes {tuple(log_alpha_a.shape)} and {tuple(log_alpha_c.shape)} "
                               f"belong to another space: this one ({space.num_blocks} blocks, {space.num_depths} "
                               f"scales, {space.num_ops} operations) needs {expected_a} and {expected_c}")


def decode(space: TopologySpace, log_alpha_a: torch.Tensor, log_alpha_c: torch.Tensor,
           table: FeasiblePatterns | None = None) -> Architecture:
    """The most probable feasible architecture for path logits ``(L, E)`` and operation logits ``(L, E, O)``.

    Operations are the argmax of ``log_alpha_c`` per edge (softmax is monotone), as in DiNTS.
    """
    check_logit_shapes(space, log_alpha_a, log_alpha_c)
    table = table or FeasiblePatterns(space)
    with torch.no_grad():  # float32 throughout, as DiNTS computes them, so near-ties resolve the same way
        probs = pattern_probabilities(log_alpha_a.detach().float().cpu(), table.patterns).numpy()
    costs = (-np.log(probs + np.float32(EPSILON)) + np.float32(OFFSET)).astype(np.float64)  # (L, C); summed in float64
    num_masks = 1 << space.num_depths
    best = costs[0].copy()
    back = np.zeros(costs.shape, dtype=np.int64)
    for block in range(1, space.num_blocks):
        # cheapest previous pattern ending on each scale set
        best_by_target = np.full(num_masks, np.inf)
        arg_by_target = np.zeros(num_masks, dtype=np.int64)
        order = np.argsort(best, kind="stable")
        for index in order[::-1]:  # cheapest last, so it wins; stable order breaks ties like a first-found minimum
            best_by_target[table.targets[index]] = best[index]
            arg_by_target[table.targets[index]] = index
        back[block] = arg_by_target[table.sources]
        best = costs[block] + best_by_target[table.sources]
    choice = int(np.argmin(best))
    chain = [choice]
    for block in range(space.num_blocks - 1, 0, -1):
        choice = int(back[block, choice])
        chain.append(choice)
    edges = table.patterns[chain[::-1]]
    ops = np.where(edges, log_alpha_c.detach().cpu().numpy().argmax(-1), -1)
    return Architecture(space, edges, ops, {"strategy": "dints"}).validate()

"""DiNTS's continuous relaxation of the topology space and its losses, on segnas's shared super-net.

* path probabilities: ``sigmoid(log_alpha_a)`` divided by ``1 - prod(1 - sigmoid)`` per block, so that the
  all-off pattern is excluded (DiNTS); operation weights: ``softmax(log_alpha_c)`` per edge;
* the relaxed super-net runs every edge and every operation, each operation's output weighted by its
  softmax weight and each edge's output by its path probability, summed at the nodes (MONAI's
  ``TopologySearch.forward``; see :meth:`segnas.networks.topology_net.TopologyNet.forward_relaxed`);
* the memory estimate and the topology entropy loss are MONAI's ``get_ram_cost_usage`` and
  ``get_topology_entropy``, computed here from the space alone so that any strategy can use them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from segnas.spaces.sampler import FeasiblePatterns
from segnas.spaces.topology import TopologySpace

#: Relative memory of each operation per output element, as MONAI's ``*WithRAMCost`` blocks define them
#: for blocks whose input and output widths are equal (every operation of the space).
OP_RAM_COST = {"skip_connect": 0.0, "conv_3x3x3": 3.0, "conv_3x3x1": 4.0, "conv_3x1x3": 4.0, "conv_1x3x3": 4.0}


def path_probabilities(log_alpha_a: torch.Tensor) -> torch.Tensor:
    """``(L, E)`` edge probabilities renormalised to exclude the empty pattern (DiNTS's ``get_prob_a``)."""
    p = torch.sigmoid(log_alpha_a)
    return p / (1 - (1 - p).prod(-1, keepdim=True))


def ram_cost_table(space: TopologySpace) -> np.ndarray:
    """``(L, E, O)`` MONAI's per-element memory factor of each (block, edge, op): op plus resolution change.

    Resolution changes: up-sampling ``2 * c_in / c_out + 2``; down-sampling ``c_in / c_out * 8 + 3``; same
    scale 0 (the width ratio is 2 for up edges and 1/2 for down edges in this space).
    """
    table = np.zeros((space.num_blocks, space.num_edges, space.num_ops))
    for edge in range(space.num_edges):
        ratio = space.node_channels[space.edge_source(edge)] / space.node_channels[space.edge_target(edge)]
        rate = space.edge_rate(edge)
        change = 2 * ratio + 2 if rate == 1 else (ratio * 8 + 3 if rate == -1 else 0.0)
        for op, name in enumerate(space.ops):
            table[:, edge, op] = OP_RAM_COST[name] + change
    return table


def feature_sizes(space: TopologySpace, input_size: tuple[int, ...]) -> np.ndarray:
    """``(D,)`` elements of one feature map per scale in MONAI's convention (see :func:`ram_cost_usage`); on a
    space with per-axis strides, scale d divides each axis by its own factor instead of ``2**d``."""
    batch, image, shift = input_size[0], np.array(input_size[-3:]), int(space.stem_downsample)
    grid = [np.array(space.scale(d + shift)) // np.array(space.scale(shift)) for d in range(space.num_depths)]
    return np.array([batch * space.filter_nums[d] * float(np.prod(image // grid[d])) for d in range(space.num_depths)],
                    dtype=np.float32) / 2**shift


def edge_ram_costs(space: TopologySpace, ops: np.ndarray, input_size: tuple[int, ...]) -> np.ndarray:
    """``(L, E)`` what each edge adds to DiNTS's memory estimate (MB) when active with operation ``ops[b, e]``:
    the estimate of a discrete architecture is the sum over its active edges (a one-hot :func:`ram_cost_usage`)."""
    chosen = np.take_along_axis(ram_cost_table(space), np.clip(ops, 0, None)[..., None], -1)[..., 0]
    targets = np.array([space.edge_target(e) for e in range(space.num_edges)])
    return (1 + chosen) * feature_sizes(space, input_size)[targets] * 32 / 8 / 1024**2


def ram_cost_usage(space: TopologySpace, log_alpha_a: torch.Tensor, log_alpha_c: torch.Tensor,
                   input_size: tuple[int, ...], full: bool = False) -> torch.Tensor:
    """DiNTS's differentiable memory estimate in MB (float32 activations) for input ``(B, C, H, W, D)``.

    Reproduces MONAI's ``get_ram_cost_usage`` including its size convention: the feature size of scale d is
    ``B * filter_nums[d] * prod(image // 2**d) / 2**stem_downsample``. ``full`` sets every path to 1.
    """
    sizes = torch.as_tensor(feature_sizes(space, input_size), dtype=torch.float32, device=log_alpha_a.device)
    probs = path_probabilities(log_alpha_a)
    if full:
        probs = torch.ones_like(probs)
    op_weights = F.softmax(log_alpha_c, dim=-1)
    costs = torch.as_tensor(ram_cost_table(space), dtype=torch.float32, device=log_alpha_a.device)
    targets = torch.tensor([space.edge_target(e) for e in range(space.num_edges)], device=log_alpha_a.device)
    per_edge = probs * (1 + (costs * op_weights).sum(-1)) * sizes[targets]
    return per_edge.sum() * 32 / 8 / 1024**2


def topology_entropy(space: TopologySpace, pattern_probs: torch.Tensor, table: FeasiblePatterns) -> torch.Tensor:
    """DiNTS's topology loss for ``(L, C)`` pattern probabilities (patterns in ``table`` order).

    For each block b < L-1 and each scale set S: with ``p`` the probability that block b ends on S and ``q``
    the probability that block b+1 leaves from S, add the cross-entropy ``-(p log q + (1-p) log(1-q))``:
    it pushes consecutive blocks to agree, so the relaxed architecture decodes to a feasible one.
    """
    masks = np.arange(1, 1 << space.num_depths)
    ends_on = torch.as_tensor(table.targets[None, :] == masks[:, None], dtype=pattern_probs.dtype)  # (S, C)
    leaves = torch.as_tensor(table.sources[None, :] == masks[:, None], dtype=pattern_probs.dtype)
    p = pattern_probs[:-1] @ ends_on.T  # (L-1, S)
    q = pattern_probs[1:] @ leaves.T
    return -(p * torch.log(q + 1e-5) + (1 - p) * torch.log(1 - q + 1e-5)).sum()

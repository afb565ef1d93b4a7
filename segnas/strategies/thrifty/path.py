"""The macro level of Thrifty NAS: the *cell path*, at which resolution each of the ``L`` cells runs.

Levels ``s = 0 .. D-1`` (level ``s`` has ``1 / 2**(s + 1)`` of the patch side: the stem halves it first). The
stem's output is node ``(-1, 0)``; layer ``l``'s cell runs at level ``path[l]``, one move from the previous layer's level: ``down``
(``s + 1``, coarser), ``same`` or ``up`` (``s - 1``, finer). A path starts after the stem at level 0 and ends at
level 0, where the head is, so node ``(l, s)`` is on some path only if ``s <= l + 1`` and ``s <= L - 1 - l``
(Auto-DeepLab's trimmed lattice; DiNTS's output is at its finest scale too).

The relaxation (Auto-DeepLab, Liu et al. 2019): per layer ``l`` and previous level ``s'``, path logits
``gamma[l, s', move]``; their softmax over the moves allowed from ``(l - 1, s')`` is the probability of each
move, so a path is a Markov chain whose probability is the product of its moves' probabilities. The relaxed
lattice weights each cell's output by its move's probability; the path is decoded by Viterbi's dynamic
programme as the most probable one (exact).

Shapes: ``gamma``, move probabilities and the mask are ``(L, D, 3)`` (move order :data:`MOVES`); visit
probabilities are ``(L, D)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: The level change of each move, in the order of the last axis of the path logits.
MOVES: tuple[int, ...] = (1, 0, -1)
MOVE_NAMES: tuple[str, ...] = ("down", "same", "up")


def reachable(layers: int, levels: int) -> np.ndarray:
    """``(L, D)`` bool: node ``(l, s)`` lies on some path from the stem (level 0) to the head (level 0)."""
    layer, level = np.meshgrid(np.arange(layers), np.arange(levels), indexing="ij")
    return (level <= layer + 1) & (level <= layers - 1 - layer)


def move_mask(layers: int, levels: int) -> np.ndarray:
    """``(L, D, 3)`` bool: the move from level ``s'`` of layer ``l - 1`` (the stem's level 0 for ``l = 0``)
    lands on a reachable node of layer ``l``."""
    nodes = reachable(layers, levels)
    mask = np.zeros((layers, levels, len(MOVES)), dtype=bool)
    for layer in range(layers):
        sources = [0] if layer == 0 else [s for s in range(levels) if nodes[layer - 1, s]]
        for source in sources:
            for k, move in enumerate(MOVES):
                target = source + move
                mask[layer, source, k] = 0 <= target < levels and bool(nodes[layer, target])
    return mask


def move_probabilities(gamma: torch.Tensor) -> torch.Tensor:
    """``(L, D, 3)``: softmax of ``gamma`` over each node's allowed moves; 0 where a move is not allowed (and on
    nodes off every path)."""
    layers, levels, _ = gamma.shape
    mask = torch.as_tensor(move_mask(layers, levels), device=gamma.device)
    probs = F.softmax(gamma.masked_fill(~mask, -1e9), dim=-1)
    return probs * mask


def visit_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """``(L, D)``: the probability that the path runs layer ``l`` at level ``s`` (the chain run forward from the
    stem's level 0)."""
    layers, levels, _ = probs.shape
    previous = torch.zeros(levels, dtype=probs.dtype, device=probs.device)
    previous[0] = 1.0
    visits = []
    for layer in range(layers):
        current = torch.zeros_like(previous)
        for k, move in enumerate(MOVES):
            flow = previous * probs[layer, :, k]  # from every source level by this move
            if move > 0:
                current = current + F.pad(flow[:-move], (move, 0))
            elif move < 0:
                current = current + F.pad(flow[-move:], (0, -move))
            else:
                current = current + flow
        visits.append(current)
        previous = current
    return torch.stack(visits)


def decode_path(probs: torch.Tensor) -> list[int]:
    """The most probable path (Viterbi): the levels of the ``L`` layers maximising the product of the moves'
    probabilities; ties go to the coarser move order of :data:`MOVES` first."""
    log_probs = torch.log(probs.detach().double().cpu() + 1e-30).numpy()
    layers, levels, _ = log_probs.shape
    mask = move_mask(layers, levels)
    best = np.full(levels, -np.inf)
    best[0] = 0.0  # the stem
    back = np.zeros((layers, levels), dtype=np.int64)
    for layer in range(layers):
        current = np.full(levels, -np.inf)
        for source in range(levels):
            for k, move in enumerate(MOVES):
                target = source + move
                if mask[layer, source, k] and best[source] + log_probs[layer, source, k] > current[target]:
                    current[target] = best[source] + log_probs[layer, source, k]
                    back[layer, target] = source
        best = current
    path = [0]
    for layer in range(layers - 1, 0, -1):
        path.append(int(back[layer, path[-1]]))
    return path[::-1]


def u_path(layers: int, levels: int) -> list[int]:
    """The U-Net path: one level down per layer to the deepest level, then back up as late as it can."""
    return [min(layer, layers - 1 - layer, levels - 1) for layer in range(layers)]


def path_problems(path: Sequence[int], levels: int) -> list[str]:
    """Every reason ``path`` is not a cell path over ``levels`` levels, in words; empty when it is one."""
    if not isinstance(path, (list, tuple)) or not path or not all(isinstance(s, int) for s in path):
        return [f"the path must be a non-empty list of levels, got {path!r:.80}"]
    found = []
    if any(not 0 <= s < levels for s in path):
        found.append(f"levels must lie in 0..{levels - 1}, got {list(path)}")
    steps = [b - a for a, b in zip([0, *path], path)]
    if any(abs(step) > 1 for step in steps):
        found.append(f"each layer moves at most one level from the previous one (the stem is at level 0), "
                     f"got {list(path)}")
    if path[-1] != 0:
        found.append(f"the path must end at level 0, where the head is; got {list(path)}")
    return found


def path_one_hot(path: Sequence[int], levels: int) -> torch.Tensor:
    """``(L, D, 3)`` move probabilities that are 1 on ``path``'s moves: a fixed path as a relaxation."""
    probs = torch.zeros(len(path), levels, len(MOVES))
    for layer, (source, target) in enumerate(zip([0, *path], path)):
        probs[layer, source, MOVES.index(target - source)] = 1.0
    return probs

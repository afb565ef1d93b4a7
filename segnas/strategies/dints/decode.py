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

Beyond the paper, a budget-aware decode (:func:`budget_decode`): the most probable chain is the one DiNTS
trains towards, but its memory need not respect the budget (the relaxed memory term converges while the most
probable topology does not follow it). :func:`decode_within` runs the same chain search restricted to chains
whose additive memory estimate lies in an interval, and :func:`budget_decode` calibrates that interval on
measured memory until the decoded network's measured cost lands inside the budget's window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from segnas.cost.budget import BUDGET_WINDOW, Budget
from segnas.errors import SegnasInputError
from segnas.spaces.architecture import Architecture
from segnas.spaces.sampler import FeasiblePatterns
from segnas.spaces.topology import TopologySpace

#: The edge cost of MONAI's graph: -log(p + EPSILON) + OFFSET (the offset keeps every edge positive).
EPSILON, OFFSET = 1e-5, 0.001
#: Constrained decodes a budget-aware decode measures at most before it settles for the nearest under the budget.
BUDGET_DECODE_TRIES = 6


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
    costs = _pattern_costs(space, log_alpha_a, table)  # (L, C)
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
    return _architecture(space, table, chain[::-1], log_alpha_c)


def _pattern_costs(space: TopologySpace, log_alpha_a: torch.Tensor, table: FeasiblePatterns) -> np.ndarray:
    """``(L, C)`` MONAI's edge costs of every pattern, ``-log(p + 1e-5) + 0.001``."""
    with torch.no_grad():  # float32 throughout, as DiNTS computes them, so near-ties resolve the same way
        probs = pattern_probabilities(log_alpha_a.detach().float().cpu(), table.patterns).numpy()
    return (-np.log(probs + np.float32(EPSILON)) + np.float32(OFFSET)).astype(np.float64)  # summed in float64


def _architecture(space: TopologySpace, table: FeasiblePatterns, chain: list[int],
                  log_alpha_c: torch.Tensor) -> Architecture:
    """The chain of pattern indices with each active edge's most probable operation (softmax is monotone)."""
    edges = table.patterns[chain]
    ops = np.where(edges, log_alpha_c.detach().cpu().numpy().argmax(-1), -1)
    return Architecture(space, edges, ops, {"strategy": "dints"}).validate()


def decode_within(space: TopologySpace, log_alpha_a: torch.Tensor, log_alpha_c: torch.Tensor,
                  edge_cost: np.ndarray, low: float, high: float, table: FeasiblePatterns | None = None,
                  bins: int = 1000) -> Architecture | None:
    """The most probable feasible architecture whose additive cost lies in ``[low, high]``; ``None`` if none does.

    ``edge_cost`` ``(L, E)``: what each active edge (with its decoded operation) adds to the cost, e.g. DiNTS's
    memory estimate per edge. The same chain search as :func:`decode` with the chain's accumulated cost as one
    more state: per block, every pattern and every cost bin (the cost rounded to ``high / bins``; the exact cost
    of the result is what the caller measures or checks). Time and memory O(L · 2^E · bins).
    """
    check_logit_shapes(space, log_alpha_a, log_alpha_c)
    if high <= 0 or low > high:
        return None
    table = table or FeasiblePatterns(space)
    costs = _pattern_costs(space, log_alpha_a, table)  # (L, C)
    unit = high / bins
    weights = np.rint(table.patterns.astype(np.float64) @ edge_cost.T / unit).astype(np.int64).T  # (L, C) in bins
    count, num_masks, size = len(table.patterns), 1 << space.num_depths, bins + 1
    best = np.full((count, size), np.inf)  # best[c, k]: chains ending on pattern c with k bins of cost
    fits = weights[0] < size
    best[fits, weights[0, fits]] = costs[0, fits]
    back = np.zeros((space.num_blocks, count, size), dtype=np.int16 if count < 2**15 else np.int32)
    for block in range(1, space.num_blocks):
        by_target = np.full((num_masks, size), np.inf)
        arg_by_target = np.zeros((num_masks, size), dtype=np.int64)
        for mask in np.unique(table.targets):
            members = np.flatnonzero(table.targets == mask)
            arg = members[np.argmin(best[members], axis=0)]  # first-found minimum per bin
            by_target[mask], arg_by_target[mask] = best[arg, np.arange(size)], arg
        shifted = np.full((count, size), np.inf)
        for pattern in range(count):  # the previous chain's bins move up by this pattern's cost
            w = weights[block, pattern]
            if w < size:
                source = table.sources[pattern]
                shifted[pattern, w:] = by_target[source, : size - w] + costs[block, pattern]
                back[block, pattern, w:] = arg_by_target[source, : size - w]
        best = shifted
    lowest = int(np.ceil(low / unit - 1e-9))
    window = best[:, lowest:]
    if not np.isfinite(window).any():
        return None
    pattern, k = np.unravel_index(int(np.argmin(window)), window.shape)
    pattern, k = int(pattern), int(k) + lowest
    chain = [pattern]
    for block in range(space.num_blocks - 1, 0, -1):
        previous = int(back[block, pattern, k])
        k -= int(weights[block, pattern])
        pattern = previous
        chain.append(pattern)
    return _architecture(space, table, chain[::-1], log_alpha_c)


def budget_decode(decode_between: Callable[[float, float], Architecture | None],
                  estimate: Callable[[Architecture], float], measure: Callable[[Architecture], float],
                  calibration: Sequence[tuple[float, float]], budget: Budget, tries: int = BUDGET_DECODE_TRIES,
                  ) -> tuple[Architecture | None, list[dict[str, Any]]]:
    """The most probable architecture whose *measured* cost lands inside ``budget``'s window, found by
    calibrated constrained decodes: the budget window in measured units is mapped onto the estimate through
    the least-squares line over ``calibration`` (estimate, measured) pairs, the most probable chain inside
    that estimate interval is decoded (``decode_between(low, high)``, e.g. :func:`decode_within`) and
    measured; if it misses, the line is shifted by the miss at that point (the estimate's local error), from the
    second miss on replaced by the line through the trials themselves, and the decode repeated, at most
    ``tries`` times.

    Returns the first one inside the window (else the trial nearest under the budget, else the cheapest trial,
    over the budget: the caller weighs it against its own way out; ``None`` only without a trial) and every
    trial (estimate, measured, ratio, inside).
    """
    estimates, measured = zip(*calibration)
    slope, intercept = np.polyfit(estimates, measured, 1)
    if slope <= 0:
        raise SegnasInputError(f"the cost calibration does not grow with the estimate (slope {slope:.3g}): "
                               "a budget-aware decode cannot use it; decode plainly (--decode plain)")
    low, high = budget.value * (1 - BUDGET_WINDOW), budget.value
    trials: list[dict[str, Any]] = []
    found: dict[str, Architecture] = {}
    shift = 0.0
    for _ in range(tries):
        arch = decode_between(max((low - intercept - shift) / slope, 0.0), (high - intercept - shift) / slope)
        if arch is None or arch.key() in found:  # nothing in the interval, or the same answer again
            break
        found[arch.key()] = arch
        used, guess = measure(arch), estimate(arch)
        trials.append({"key": arch.key(), "estimate": guess, "measured": used, "ratio": used / budget.value,
                       "inside_window": low <= used <= high})
        if low <= used <= high:
            return arch, trials
        local = [(t["estimate"], t["measured"]) for t in trials]
        if len({x for x, _ in local}) >= 2 and np.polyfit(*zip(*local), 1)[0] > 0:
            slope, intercept = np.polyfit(*zip(*local), 1)  # the trials bracket the budget better than the line
            shift = 0.0
        else:
            shift = used - (intercept + slope * guess)  # the line's error at this point
    under = [trial for trial in trials if trial["measured"] <= high]
    if under:
        return found[max(under, key=lambda trial: trial["measured"])["key"]], trials
    if not trials:
        return None, trials
    return found[min(trials, key=lambda trial: trial["measured"])["key"]], trials

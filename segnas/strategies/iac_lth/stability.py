"""IAC-LTH's stopping rule: per-edge operation-importance distributions compared across epochs by
Jensen-Shannon divergence; a stable edge has its weak operations pruned, and the search stops when every edge
is decided (Benedykciuk et al., arXiv 2604.14849).

The abstract fixes the ingredients (per-edge distributions, JS divergence, progressive pruning, stop when
decided) and leaves the numbers open; segnas's rule, with its defaults (all options of ``segnas search
--strategy iac-lth``):

* after every epoch, each undecided edge's distribution ``p_e`` (softmax of its logits over the operations
  still alive) is compared with the previous epoch's: ``JS(p_e(t), p_e(t-1))`` in bits (0 = identical, 1 =
  disjoint);
* the threshold is relative to ``reference`` = ``(lr * steps_per_epoch)^2 / (8 ln 2)`` bits: the divergence of
  an epoch in which Adam moved every logit by its full step bound, half up and half down (for small moves
  ``JS ~ Var_p(logit change) / (8 ln 2)``). Absolute JS values depend on the architecture learning rate and the
  epoch's length (measured on Hippocampus: 1e-5 to 3e-4 bits per epoch at 3e-3 x 20 steps), a relative one
  does not. Adam's steps under pure noise move a logit about ``lr * sqrt(steps)`` per epoch, i.e. ``1 / steps``
  of the reference: the default ``threshold`` of 0.05 (= 1/20, the ``cpu`` profile's epoch) calls an edge calm
  when it drifts no more than noise would move it;
* an edge is *stable* after ``patience`` (2) consecutive calm epochs;
* a stable edge loses every alive operation whose probability is below ``prune_below`` (1.0) times the
  uniform share ``1 / alive`` (at least its weakest one; never its strongest): about half its operations per
  pruning, so 8 operations are decided in 3 prunings. Its streak then restarts, since the distribution over
  fewer operations is a new one;
* an edge with one operation left is *decided*; the search stops when every edge is decided, or at the
  epoch limit, whichever comes first.

No pruning happens before ``warmup`` epochs of architecture updates have been compared (the logits have not
moved yet). The tracker is pure numpy and serialises to JSON, so it lives in the trainer's checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def reference_divergence(lr: float, steps_per_epoch: int) -> float:
    """The JS divergence (bits) that the threshold is relative to (see the module docstring)."""
    return (lr * steps_per_epoch) ** 2 / (8 * np.log(2))


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits of distributions along the last axis (0 <= JS <= 1)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log2(a / b), 0.0).sum(-1)

    return np.clip(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0, 1.0)


@dataclass(frozen=True)
class StabilityRule:
    """The numbers of the rule (see the module docstring)."""

    threshold: float = 0.05
    patience: int = 2
    prune_below: float = 1.0

    def __post_init__(self) -> None:
        if not (self.threshold > 0 and self.patience >= 1 and 0 < self.prune_below <= 1):
            raise ValueError("the JS threshold must be > 0, patience >= 1 and prune_below in (0, 1]")


class StabilityTracker:
    """Per-edge JS traces, streaks, alive operations and pruning events over the epochs of one search.

    Args:
        num_edges, num_ops: the shape of the logits ``(E, O)``.
        rule: the thresholds, or ``None`` to track without pruning or stopping (IAC's full-length search,
            whose traces the temporal analysis still needs).
        reference: the JS divergence (bits) the rule's threshold is a fraction of.
    """

    def __init__(self, num_edges: int, num_ops: int, rule: StabilityRule | None, reference: float = 1.0):
        self.rule, self.reference = rule, reference
        self.alive = np.ones((num_edges, num_ops), dtype=bool)
        self.streak = np.zeros(num_edges, dtype=np.int64)
        self.previous: np.ndarray | None = None
        self.history: list[dict[str, Any]] = []  # per epoch: probabilities, JS per edge, events
        self.decided_epoch: dict[int, int] = {}

    def distributions(self, logits: np.ndarray) -> np.ndarray:
        """``(E, O)`` softmax of the logits over the alive operations (0 on pruned ones)."""
        masked = np.where(self.alive, np.asarray(logits, dtype=np.float64), -np.inf)
        masked -= masked.max(axis=1, keepdims=True)
        weights = np.exp(masked)
        return weights / weights.sum(axis=1, keepdims=True)

    @property
    def decided(self) -> np.ndarray:
        return self.alive.sum(axis=1) == 1

    def all_decided(self) -> bool:
        return bool(self.decided.all())

    def end_epoch(self, epoch: int, logits: np.ndarray) -> list[dict[str, Any]]:
        """Record epoch ``epoch``'s logits; prune stable edges (with a rule); return this epoch's pruning events."""
        probs = self.distributions(logits)
        js = np.full(len(probs), np.nan) if self.previous is None else js_divergence(probs, self.previous)
        events: list[dict[str, Any]] = []
        if self.rule is not None and self.previous is not None:
            calm = (js < self.rule.threshold * self.reference) & ~self.decided
            self.streak = np.where(calm, self.streak + 1, 0)
            for edge in np.flatnonzero(self.streak >= self.rule.patience):
                events.append(self._prune(int(edge), probs[edge], epoch))
            if events:  # pruned edges start a new distribution
                probs = self.distributions(logits)
        self.previous = probs
        self.history.append({"epoch": epoch, "probabilities": probs.round(6).tolist(), "reference": self.reference,
                             "js": [None if np.isnan(v) else round(float(v), 8) for v in js], "events": events})
        return events

    def _prune(self, edge: int, probs: np.ndarray, epoch: int) -> dict[str, Any]:
        alive = np.flatnonzero(self.alive[edge])
        cut = probs[alive] < self.rule.prune_below / len(alive)
        if not cut.any():  # always at least the weakest one
            cut[np.argmin(probs[alive])] = True
        cut[np.argmax(probs[alive])] = False  # never the strongest
        removed = alive[cut]
        self.alive[edge, removed] = False
        self.streak[edge] = 0
        if self.alive[edge].sum() == 1:
            self.decided_epoch[edge] = epoch
        return {"edge": edge, "epoch": epoch, "pruned": removed.tolist(),
                "left": np.flatnonzero(self.alive[edge]).tolist()}

    # ----- checkpoint ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"alive": self.alive.tolist(), "streak": self.streak.tolist(),
                "previous": None if self.previous is None else self.previous.tolist(), "history": self.history,
                "decided_epoch": {str(k): v for k, v in self.decided_epoch.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alive = np.asarray(state["alive"], dtype=bool)
        self.streak = np.asarray(state["streak"], dtype=np.int64)
        self.previous = None if state["previous"] is None else np.asarray(state["previous"], dtype=np.float64)
        self.history = list(state["history"])
        self.decided_epoch = {int(k): int(v) for k, v in state["decided_epoch"].items()}

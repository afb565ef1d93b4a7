"""Compute budgets with units: training memory, parameters, FLOPs, forward latency or training step time, alone
or several joined by ``+``.

Accepted forms (case-insensitive, no space needed): ``4GB``, ``3.5GiB``, ``800MB`` (memory);
``2Mparams``, ``500kparams``, ``1200000params`` (parameters); ``20GFLOPs`` (forward FLOPs);
``150ms``, ``0.2s`` (latency of a forward pass of the batch); ``1.2s/step``, ``800ms/step`` (a training step of
the batch: forward, loss, backward, optimiser). ``250MiB+1.2s/step`` is a *combined* budget: the first limit is
the one a search spends (its kind picks the strategy's fitting), the others are ceilings the winner must also
stay under, e.g. "the best network under 250 MiB that trains a step as fast as UNet 16..256".

A combined budget is one number to every strategy: :meth:`Budget.cost_of` is the tightest limit's share times the
first limit's value, so "cost <= value" means every limit holds and "inside the window" means the tightest one is
nearly spent. The strategies fit to it unchanged; their cost *estimates* stay in the first kind's units.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from segnas.cost.measure import CostReport
from segnas.errors import SegnasInputError

_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-z/]*)\s*$", re.IGNORECASE)
_MEMORY = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
           "tib": 2**40}
_COUNT = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}
_TIME = {"ms": 1.0, "s": 1000.0}


#: The field of a :class:`CostReport` each budget kind limits, and the factor from that field to the budget's
#: unit (bytes, parameters, FLOPs, milliseconds, milliseconds).
COST_FIELDS = {"memory": "memory_bytes", "parameters": "parameters", "flops": "flops_forward", "latency": "latency_ms",
               "step": "seconds_per_step"}
_FIELD_SCALE = {"step": 1000.0}


def cost_of(report: CostReport | Mapping[str, Any], kind: str) -> float:
    """The figure of ``report`` (a :class:`CostReport` or its dict) a budget of ``kind`` limits, in the budget's
    unit."""
    field = COST_FIELDS[kind]
    value = report[field] if isinstance(report, Mapping) else getattr(report, field)
    return float(value) * _FIELD_SCALE.get(kind, 1.0)


#: A network whose measured cost lies in ``[b * (1 - BUDGET_WINDOW), b]`` used budget ``b`` (HyperSegNAS's
#: window; the strategies that fit a derived network to a budget report whether it landed inside).
BUDGET_WINDOW = 0.03


@dataclass(frozen=True)
class Budget:
    """A limit on one measured cost, with optional ceilings of other kinds (a combined budget). ``value`` is in
    bytes, parameters, FLOPs or milliseconds (latency and step time)."""

    kind: str  # "memory", "parameters", "flops", "latency" or "step"
    value: float
    text: str
    ceilings: tuple["Budget", ...] = ()

    def limits(self) -> tuple["Budget", ...]:
        """Every limit: this one (without its ceilings) first, then the ceilings."""
        return (Budget(self.kind, self.value, _parts(self.text)[0]) if self.ceilings else self, *self.ceilings)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(limit.kind for limit in self.limits())

    def share(self, report: CostReport | Mapping[str, Any]) -> float:
        """The largest share of a limit ``report`` uses (1.0: the tightest limit exactly spent)."""
        return max(cost_of(report, limit.kind) / limit.value for limit in self.limits())

    def cost_of(self, report: CostReport | Mapping[str, Any]) -> float:
        """The figure of ``report`` this budget limits, in the first limit's unit: for a combined budget, the
        tightest limit's share times ``value`` (see the module docstring)."""
        if not self.ceilings:
            return cost_of(report, self.kind)
        return self.share(report) * self.value

    def label(self) -> str:
        """A folder-friendly name, e.g. ``budget-4GB`` or ``budget-250MiB-1.2sstep``."""
        return "budget-" + "-".join(re.sub(r"[^A-Za-z0-9.]+", "", limit.text) for limit in self.limits())


def budget_fit(budget: Budget, report: CostReport) -> dict:
    """How a measured network met ``budget``: its figure, the ratio, whether it lies inside the window, and for a
    combined budget each limit's figure and ratio."""
    used = budget.cost_of(report)
    fit = {"text": budget.text, "kind": budget.kind, "value": budget.value, "measured": used,
           "ratio": used / budget.value, "inside_window": budget.value * (1 - BUDGET_WINDOW) <= used <= budget.value}
    if budget.ceilings:
        fit["limits"] = [{"text": limit.text, "kind": limit.kind, "value": limit.value,
                          "measured": cost_of(report, limit.kind), "ratio": cost_of(report, limit.kind) / limit.value}
                         for limit in budget.limits()]
    return fit


def _parts(text: str) -> list[str]:
    """The limits of a budget's text: split at ``+``, except an exponent's (``1e+6params``)."""
    return re.split(r"(?<![eE])\+", text)


def _parse_limit(text: str) -> Budget:
    match = _PATTERN.match(text)
    if match:
        number, unit = float(match.group(1)), match.group(2).lower()
        if unit in _MEMORY:
            return Budget("memory", number * _MEMORY[unit], text)
        if unit in _TIME:
            return Budget("latency", number * _TIME[unit], text)
        if unit.endswith("/step") and unit.removesuffix("/step") in _TIME:
            return Budget("step", number * _TIME[unit.removesuffix("/step")], text)
        for suffix, kind in (("params", "parameters"), ("flops", "flops")):
            if unit.endswith(suffix) and unit[: -len(suffix)] in _COUNT:
                return Budget(kind, number * _COUNT[unit[: -len(suffix)]], text)
    raise SegnasInputError(f"budget {text!r} is not understood; use memory (4GB, 800MB, 3GiB), parameters "
                           "(2Mparams), FLOPs (20GFLOPs), latency (150ms) or training step time (1.2s/step), "
                           "or several joined by + (250MiB+1.2s/step)", "--budget")


def parse_budget(text: str) -> Budget:
    """Parse ``text`` into a :class:`Budget` (``+`` joins limits of different kinds: the first is spent, the
    others are ceilings); unknown units and a kind given twice are refused with the accepted forms."""
    first, *others = (_parse_limit(part) for part in _parts(text))
    kinds = [first.kind, *(limit.kind for limit in others)]
    if len(set(kinds)) < len(kinds):
        raise SegnasInputError(f"budget {text!r} limits one kind twice ({', '.join(kinds)}); give each kind once",
                               "--budget")
    return Budget(first.kind, first.value, text, tuple(others)) if others else first

"""Compute budgets with units: training memory, parameters, FLOPs or latency.

Accepted forms (case-insensitive, no space needed): ``4GB``, ``3.5GiB``, ``800MB`` (memory);
``2Mparams``, ``500kparams``, ``1200000params`` (parameters); ``20GFLOPs`` (forward FLOPs);
``150ms``, ``0.2s`` (latency of a forward pass of the batch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from segnas.cost.measure import CostReport
from segnas.errors import SegnasInputError

_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_MEMORY = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
           "tib": 2**40}
_COUNT = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}
_TIME = {"ms": 1.0, "s": 1000.0}


#: The field of a :class:`CostReport` each budget kind limits.
COST_FIELDS = {"memory": "memory_bytes", "parameters": "parameters", "flops": "flops_forward", "latency": "latency_ms"}


def cost_of(report: CostReport, kind: str) -> float:
    """The figure of ``report`` a budget of ``kind`` limits."""
    return getattr(report, COST_FIELDS[kind])


#: A network whose measured cost lies in ``[b * (1 - BUDGET_WINDOW), b]`` used budget ``b`` (HyperSegNAS's
#: window; the strategies that fit a derived network to a budget report whether it landed inside).
BUDGET_WINDOW = 0.03


@dataclass(frozen=True)
class Budget:
    """A limit on one measured cost. ``value`` is in bytes, parameters, FLOPs or milliseconds."""

    kind: str  # "memory", "parameters", "flops" or "latency"
    value: float
    text: str

    def cost_of(self, report: CostReport) -> float:
        """The figure of ``report`` this budget limits."""
        return cost_of(report, self.kind)

    def label(self) -> str:
        """A folder-friendly name, e.g. ``budget-4GB``."""
        return "budget-" + re.sub(r"[^A-Za-z0-9.]+", "", self.text)


def budget_fit(budget: Budget, report: CostReport) -> dict:
    """How a measured network met ``budget``: its figure, the ratio, and whether it lies inside the window."""
    used = budget.cost_of(report)
    return {"text": budget.text, "kind": budget.kind, "value": budget.value, "measured": used,
            "ratio": used / budget.value, "inside_window": budget.value * (1 - BUDGET_WINDOW) <= used <= budget.value}


def parse_budget(text: str) -> Budget:
    """Parse ``text`` into a :class:`Budget`; unknown units are refused with the accepted forms."""
    match = _PATTERN.match(text)
    if match:
        number, unit = float(match.group(1)), match.group(2).lower()
        if unit in _MEMORY:
            return Budget("memory", number * _MEMORY[unit], text)
        if unit in _TIME:
            return Budget("latency", number * _TIME[unit], text)
        for suffix, kind in (("params", "parameters"), ("flops", "flops")):
            if unit.endswith(suffix) and unit[: -len(suffix)] in _COUNT:
                return Budget(kind, number * _COUNT[unit[: -len(suffix)]], text)
    raise SegnasInputError(f"budget {text!r} is not understood; use memory (4GB, 800MB, 3GiB), parameters "
                           "(2Mparams), FLOPs (20GFLOPs) or latency (150ms)", "--budget")

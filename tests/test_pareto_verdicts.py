"""The Pareto benchmark's verdict at one budget (benchmarks/pareto.py): which networks it sets against each other."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from segnas.cost.budget import parse_budget

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pareto.py"


@pytest.fixture(scope="module")
def pareto() -> Any:
    """The benchmark script as a module, loaded once for this file's tests."""
    spec = importlib.util.spec_from_file_location("pareto_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and typing look the module up by name
    spec.loader.exec_module(module)
    return module


def _point(name: str, group: str, dice: float, mib: float) -> dict[str, Any]:
    return {"name": name, "group": group, "dice": dice, "memory_bytes": mib * 2**20, "parameters": 1}


POINTS = [
    _point("unet-small", "hand-designed", 0.850, 70),
    _point("unet-large", "hand-designed", 0.870, 400),
    _point("search/budget-100MiB", "searched", 0.860, 95),
    _point("search/budget-200MiB", "searched", 0.880, 190),
    _point("other/budget-500MiB", "searched", 0.800, 450),
]


def test_a_budgets_own_winner_and_the_front_are_read_apart(pareto: Any) -> None:
    verdict = pareto._budget_verdict(POINTS, parse_budget("500MiB"), noise=0.004)
    assert verdict["hand"] == "unet-large"
    assert verdict["searched"] == "other/budget-500MiB"  # searched for this budget
    assert round(verdict["difference"], 3) == -0.070 and verdict["beats_by_more_than_noise"] is False
    assert verdict["front_searched"] == "search/budget-200MiB"  # searched for less, fits this one too
    assert round(verdict["front_difference"], 3) == 0.010 and verdict["front_beats_by_more_than_noise"] is True


def test_a_budget_without_its_own_trained_winner_still_has_the_fronts_verdict(pareto: Any) -> None:
    verdict = pareto._budget_verdict(POINTS, parse_budget("300MiB"), noise=0.004)
    assert verdict["hand"] == "unet-small"  # unet-large does not fit
    assert verdict["searched"] is None and verdict["beats_by_more_than_noise"] is None
    assert verdict["front_searched"] == "search/budget-200MiB"


def test_no_verdict_where_one_side_has_nothing_that_fits(pareto: Any) -> None:
    assert pareto._budget_verdict(POINTS, parse_budget("60MiB"), noise=0.004) is None


def test_each_structures_dice_is_its_mean_over_the_runs(pareto: Any) -> None:
    runs = [{"dice": {"RV": {"dice": 0.80, "nsd": 0.5}, "LV": {"dice": 0.90, "nsd": 0.6}}},
            {"dice": {"RV": {"dice": 0.70, "nsd": 0.4}, "LV": {"dice": 0.95, "nsd": 0.7}}}]
    per_structure = pareto._per_structure(runs)
    assert list(per_structure) == ["RV", "LV"] and per_structure == pytest.approx({"RV": 0.75, "LV": 0.925})


def test_a_rerun_of_one_budget_keeps_the_other_budgets_winners(pareto: Any) -> None:
    row = {"winners": {"budget-110MiB": 1, "budget-110MiB (plain decode)": 2, "budget-251MiB": 3}}
    assert pareto._winners_kept(row, rerun=True, searched_now={"budget-110MiB"}) == {"budget-251MiB": 3}
    assert pareto._winners_kept(row, rerun=False, searched_now={"budget-110MiB"}) == row["winners"]  # resumes
    assert pareto._winners_kept(None, rerun=True, searched_now=set()) == {}

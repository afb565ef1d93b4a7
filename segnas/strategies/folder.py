"""The search folder every strategy writes, and the one place that reads it back.

Layout::

    SEARCH_DIR/search.json           strategy, profile, dataset, fold, seed and the strategy's settings
    SEARCH_DIR/plan.json             the data plan
    SEARCH_DIR/LABEL/state.json      the strategy's per-budget state (its resume point), saved after each unit of work
    SEARCH_DIR/LABEL/arch.json       the chosen architecture, with the search's facts in its metadata
    SEARCH_DIR/LABEL/arch.png        its drawing
    SEARCH_DIR/LABEL/leaderboard.csv the candidates the strategy compared, best first (where it compares any)

``LABEL`` is ``budget-800MB`` for a budget (:meth:`segnas.cost.budget.Budget.label`), or a strategy's own
name for a run without one (DiNTS: ``ram-0.5``). Rank 0 writes; every rank reads.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from segnas.data.plan import Plan
from segnas.errors import SegnasInputError
from segnas.formats import FileFormat
from segnas.report.draw import draw_architecture
from segnas.spaces.architecture import Architecture, load_architecture
from segnas.spaces.cells import CellArchitecture
from segnas.utils.distributed import barrier, gather_dicts, is_main, rank, world_size
from segnas.utils.files import atomic_write_text, check_output_dir, prepare_output_dir
from segnas.utils.progress import progress

log = logging.getLogger(__name__)

SEARCH_FORMAT = FileFormat("segnas.search", 3, what="search record")
STATE_FORMAT = FileFormat("segnas.search-state", 1, unversioned=0, what="search state")
#: Fields of ``search.json`` that may differ when a search is resumed (the dataset may have moved).
NOT_COMPARED = ("data_dir", "format", "version", "written_by")


@SEARCH_FORMAT.upgrade(1)
def _settings_hold_everything(record: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept the space and HyperSegNAS's variant beside the settings (DiNTS kept no settings and no
    data folder); version 2 keeps every strategy setting under ``settings``."""
    settings = dict(record.pop("settings", None) or {})
    settings.setdefault("space", record.pop("space", None))
    record.pop("space", None)
    if "variant" in record:
        settings["variant"] = record.pop("variant")
    record["settings"] = settings
    record.setdefault("data_dir", None)
    return record


@SEARCH_FORMAT.upgrade(2)
def _dints_patch_setting(record: dict[str, Any]) -> dict[str, Any]:
    """Version 3 gave DiNTS's profile a ``patch_size`` (``None``: the plan's, what version 2 searched with)."""
    if record.get("strategy") == "dints":
        record["settings"].setdefault("patch_size", None)
    return record


@STATE_FORMAT.upgrade(0)
def _state_header(state: dict[str, Any]) -> dict[str, Any]:
    return state  # the content is unchanged; version 1 adds the header


class SearchFolder:
    """One search's folder (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ----- search.json --------------------------------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.path / "search.json"

    def record(self) -> dict[str, Any]:
        """The folder's ``search.json``, upgraded; refuses a folder that is not a search."""
        if not self.record_path.is_file():
            raise SegnasInputError("not a segnas search folder (no search.json)", self.path)
        return SEARCH_FORMAT.read_json(self.record_path)

    def check_new(self, force: bool) -> None:
        """Refuse, before any work, a folder that holds files (unless ``force``)."""
        check_output_dir(self.path, force, "search folder")

    def check_resume(self, record: dict[str, Any], changeable: Sequence[str] = ()) -> dict[str, Any]:
        """The folder's record; refuse a folder made with other settings.

        Every key of ``record`` must match except :data:`NOT_COMPARED` and the dotted paths in ``changeable``
        (``"settings.top_n"``: settings a resumed search may change); the message names the differing ones.
        """
        if not self.record_path.is_file():
            raise SegnasInputError("nothing to resume: not a segnas search folder", self.path)
        previous = self.record()
        ignored = [*NOT_COMPARED, *changeable]
        before, now = _without(previous, ignored), _without(record, ignored)
        differing = [key for key in {**before, **now} if before.get(key) != now.get(key)]
        if differing:
            shown = "; ".join(_difference(key, before.get(key), now.get(key)) for key in differing)
            raise SegnasInputError(f"cannot resume: this search folder was made with other settings ({shown}); "
                                   "use --force to start it anew", self.path)
        return previous

    def create(self, record: dict[str, Any], plan: Plan, force: bool) -> None:
        """Write a new folder's ``search.json`` and ``plan.json`` (emptying it first with ``force``)."""
        if is_main():
            prepare_output_dir(self.path, force, "search folder")
            plan.save(self.path / "plan.json")
            SEARCH_FORMAT.write_json(self.record_path, record)
        barrier()

    def update_record(self, record: dict[str, Any]) -> None:
        """Record settings a resumed search changed (later commands, such as ``analyze``, use them)."""
        if is_main():
            SEARCH_FORMAT.write_json(self.record_path, record)

    def plan(self) -> Plan:
        return Plan.load(self.path / "plan.json")

    # ----- per-budget state and results ---------------------------------------------------------------------
    def budget_dir(self, label: str) -> Path:
        return self.path / label

    def load_state(self, label: str) -> dict[str, Any]:
        """The label's saved state, or ``{}`` when none was saved yet."""
        path = self.budget_dir(label) / "state.json"
        if not path.is_file():
            return {}
        state = STATE_FORMAT.read_json(path)
        for key in ("format", "version", "written_by"):
            state.pop(key, None)
        return state

    def save_state(self, label: str, state: dict[str, Any]) -> None:
        if is_main():
            STATE_FORMAT.write_json(self.budget_dir(label) / "state.json", state)

    def save_result(self, label: str, arch: Architecture | CellArchitecture, title: str) -> None:
        """Write the label's chosen architecture and its drawing."""
        if is_main():
            arch.save(self.budget_dir(label) / "arch.json")
            draw_architecture(arch, self.budget_dir(label) / "arch.png", title=title)

    def results(self) -> dict[str, Architecture | CellArchitecture]:
        """Every label's chosen architecture, by label (labels without a result yet are left out)."""
        return {path.parent.name: load_architecture(path) for path in sorted(self.path.glob("*/arch.json"))}

    def write_leaderboard(self, label: str, rows: list[dict[str, Any]]) -> None:
        """``leaderboard.csv``: one row per candidate, best first, columns from the first row."""
        if not is_main() or not rows:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.budget_dir(label) / "leaderboard.csv", buffer.getvalue())

    def fill(self, label: str, state: dict[str, Any], keys: Sequence[str], field: str, desc: str,
             compute: Callable[[str], float], show_progress: bool = True) -> None:
        """Set ``state["candidates"][key][field] = compute(key)`` for the ``keys`` that lack it.

        The work is split across torchrun ranks (each takes every n-th key) and gathered on every rank; a
        single process saves the state after each key, so an interrupted run loses at most one.
        """
        candidates = state["candidates"]
        todo = [key for key in keys if field not in candidates[key]][rank()::world_size()]
        mine: dict[str, float] = {}
        for key in progress(todo, desc=desc, unit="arch", enabled=show_progress):
            mine[key] = compute(key)
            if world_size() == 1:
                candidates[key][field] = mine[key]
                self.save_state(label, state)
        for key, value in gather_dicts(mine).items():
            candidates[key][field] = value
        self.save_state(label, state)


def _difference(key: str, before: Any, now: Any) -> str:
    """``key: before -> now``, descending into dictionaries so the message names the setting that changed."""
    if isinstance(before, dict) and isinstance(now, dict):
        inner = [k for k in {**before, **now} if before.get(k) != now.get(k)]
        return ", ".join(_difference(f"{key}.{k}", before.get(k), now.get(k)) for k in inner)
    return f"{key}: {before!r} -> {now!r}"


def _without(record: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """A copy of ``record`` without the dotted ``paths``."""
    trimmed = copy.deepcopy(record)
    for path in paths:
        *parents, leaf = path.split(".")
        node = trimmed
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return trimmed

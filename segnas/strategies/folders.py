"""What every strategy's search folder shares: the ``search.json`` record checked on ``--resume``."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segnas.errors import SegnasInputError


def check_resume(out: Path, record: dict[str, Any], changeable: Sequence[str] = ()) -> dict[str, Any]:
    """Return the folder's ``search.json``; refuse a folder that is no search or was made with other settings.

    Every key of ``record`` (dataset, space, profile, ...) must match, except the dotted paths in
    ``changeable`` (``"settings.top_n"``: settings a resumed search may change); the message names the
    differing ones.
    """
    path = out / "search.json"
    if not path.is_file():
        raise SegnasInputError("nothing to resume: not a segnas search folder", out)
    previous = json.loads(path.read_text())
    compared_before, compared_now = _without(previous, changeable), _without(record, changeable)
    differing = [key for key in compared_now if compared_before.get(key) != compared_now[key]]
    if differing:
        shown = "; ".join(_difference(key, compared_before.get(key), compared_now[key]) for key in differing)
        raise SegnasInputError(f"cannot resume: this search folder was made with other settings ({shown}); "
                               "use --force to start it anew", out)
    return previous


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

"""What every strategy's search folder shares: the ``search.json`` record checked on ``--resume``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from segnas.errors import SegnasInputError


def check_resume(out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Return the folder's ``search.json``; refuse a folder that is no search or was made with other settings.

    Every key of ``record`` (dataset, space, profile, ...) must match; the message names the differing ones.
    """
    path = out / "search.json"
    if not path.is_file():
        raise SegnasInputError("nothing to resume: not a segnas search folder", out)
    previous = json.loads(path.read_text())
    differing = [key for key in record if previous.get(key) != record[key]]
    if differing:
        shown = "; ".join(_difference(key, previous.get(key), record[key]) for key in differing)
        raise SegnasInputError(f"cannot resume: this search folder was made with other settings ({shown}); "
                               "use --force to start it anew", out)
    return previous


def _difference(key: str, before: Any, now: Any) -> str:
    """``key: before -> now``, descending into dictionaries so the message names the setting that changed."""
    if isinstance(before, dict) and isinstance(now, dict):
        inner = [k for k in {**before, **now} if before.get(k) != now.get(k)]
        return ", ".join(_difference(f"{key}.{k}", before.get(k), now.get(k)) for k in inner)
    return f"{key}: {before!r} -> {now!r}"

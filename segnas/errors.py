"""Errors that segnas reports to users.

Every problem with user input (a dataset, an architecture file, a flag) raises
:class:`SegnasInputError`; the CLI prints its message and exits with status 2, never with a traceback.
"""

from __future__ import annotations

from pathlib import Path


class SegnasInputError(Exception):
    """Bad user input. ``source`` names the file or flag at fault, so the message can point at it."""

    def __init__(self, message: str, source: str | Path | None = None):
        self.source = str(source) if source is not None else None
        super().__init__(f"{self.source}: {message}" if self.source else message)

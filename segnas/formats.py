"""Versioned files: every document segnas writes and reads back names its format and version.

Each owner module declares its format once (``RUN_FORMAT = FileFormat("segnas.run", 2)``) and registers one
upgrade step per older version (``@RUN_FORMAT.upgrade(1)`` turns a version-1 document into version 2).
Reading goes through :meth:`FileFormat.load`, which

* refuses a document of another format, or of a newer version than this segnas knows, with a clear error;
* applies the registered upgrade steps in order to an older one, so old run folders keep working;
* treats a document without a ``format`` key as version ``unversioned`` (0) where segnas once wrote that file
  without a header (checkpoints, search state, the cost cache), and refuses it elsewhere.

Writing goes through :meth:`FileFormat.stamp`, which adds the format, its version and ``written_by``: the
segnas, torch and MONAI versions that wrote the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from segnas.errors import SegnasInputError
from segnas.utils.files import atomic_write_text

Upgrade = Callable[[dict[str, Any]], dict[str, Any]]

#: Every declared format by name (what ``segnas`` reads and writes; the tests iterate it).
FORMATS: dict[str, "FileFormat"] = {}


def written_by() -> dict[str, str]:
    """The versions of segnas, torch and MONAI in this process (imported late: this module stays light)."""
    import monai
    import torch

    from segnas.version import __version__

    return {"segnas": __version__, "torch": torch.__version__, "monai": monai.__version__}


@dataclass
class FileFormat:
    """One file format: its name, current version and the steps that upgrade older versions.

    Args:
        name: the ``format`` value, e.g. ``"segnas.run"``.
        version: the version this segnas writes.
        unversioned: the version a document without a ``format`` key is taken to be (``None``: refused).
        what: how an error message names the document ("run record", "checkpoint").
    """

    name: str
    version: int
    unversioned: int | None = None
    what: str = "file"
    upgrades: dict[int, Upgrade] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name in FORMATS:
            raise ValueError(f"format {self.name!r} is declared twice")
        FORMATS[self.name] = self

    def upgrade(self, from_version: int) -> Callable[[Upgrade], Upgrade]:
        """Register ``step(document) -> document`` taking version ``from_version`` to ``from_version + 1``."""

        def register(step: Upgrade) -> Upgrade:
            self.upgrades[from_version] = step
            return step

        return register

    def stamp(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with this format's header first (format, version, written_by)."""
        body = {k: v for k, v in data.items() if k not in ("format", "version", "written_by")}
        return {"format": self.name, "version": self.version, "written_by": written_by(), **body}

    def load(self, data: Any, source: str | Path | None = None) -> dict[str, Any]:
        """Check a document of this format and upgrade it to the current version; returns a new dict."""
        if not isinstance(data, (dict, list)):
            raise SegnasInputError(f"not a segnas {self.what} (expected a JSON object)", source)
        if isinstance(data, list) or "format" not in data:
            if self.unversioned is None:
                raise SegnasInputError(f"not a segnas {self.what} (expected \"format\": \"{self.name}\")", source)
            data, version = {"legacy": data} if isinstance(data, list) else dict(data), self.unversioned
        else:
            if data["format"] != self.name:
                raise SegnasInputError(f"not a segnas {self.what}: its format is {data['format']!r}, "
                                       f"expected {self.name!r}", source)
            version = data.get("version")
            if not isinstance(version, int):
                raise SegnasInputError(f"{self.what} has no valid format version ({version!r})", source)
            data = dict(data)
        if version > self.version:
            writer = (data.get("written_by") or {}).get("segnas")
            writer = f"segnas {writer}" if writer else "a newer segnas"
            raise SegnasInputError(f"{self.what} has format version {version}, written by {writer}; this "
                                   f"segnas reads versions up to {self.version}: upgrade segnas to read it", source)
        while version < self.version:
            if version not in self.upgrades:
                raise SegnasInputError(f"{self.what} of format version {version} can no longer be read (no upgrade "
                                       f"to version {version + 1})", source)
            data = self.upgrades[version](data)
            version += 1
        data.update(format=self.name, version=self.version)
        return data

    # ----- JSON files ------------------------------------------------------------------------------------------
    def read_json(self, path: str | Path) -> dict[str, Any]:
        """Read, check and upgrade a JSON file of this format; every problem names ``path``."""
        path = Path(path)
        if not path.is_file():
            raise SegnasInputError(f"{self.what} does not exist", path)
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SegnasInputError(f"not valid JSON ({err})", path) from err
        return self.load(data, path)

    def write_json(self, path: str | Path, data: dict[str, Any], default: Callable[[Any], Any] | None = None) -> Path:
        """Write ``data`` stamped with this format, atomically."""
        return atomic_write_text(path, json.dumps(self.stamp(data), indent=1, default=default) + "\n")


#: Figures of a benchmark run (``benchmarks/results/*.json``); the first ones were written without a header,
#: one of them as a bare list, which version 1 keeps under ``rows``.
RESULT_FORMAT = FileFormat("segnas.result", 1, unversioned=0, what="result file")


@RESULT_FORMAT.upgrade(0)
def _result_rows(data: dict[str, Any]) -> dict[str, Any]:
    return {"rows": data.pop("legacy")} if "legacy" in data else data

"""The architecture file format, shared by both space kinds (:mod:`segnas.spaces.architecture`: topology;
:mod:`segnas.spaces.cells`: cells), which it lets write their documents without importing each other."""

from __future__ import annotations

from typing import Any

import numpy as np

from segnas.formats import FileFormat

ARCHITECTURE_FORMAT = FileFormat("segnas.architecture", 2, what="architecture file")
ARCHITECTURE_FORMAT.upgrade(1)(lambda data: data)


def json_default(value: Any) -> Any:
    """numpy scalars and arrays as JSON (architecture metadata holds measured numbers)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

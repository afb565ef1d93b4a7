"""Progress bars for long work (tqdm), quiet when the output is not a terminal unless asked for."""

from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, unit: str = "it", enabled: bool = True, **kwargs) -> Iterable[T]:
    """Wrap ``items`` in a tqdm bar; ``enabled=False`` or a non-terminal stderr shows none."""
    return tqdm(items, desc=desc, unit=unit, disable=None if enabled else True, dynamic_ncols=True, **kwargs)


def progress_bar(total: int, desc: str, initial: int = 0, enabled: bool = True, unit: str = "it") -> tqdm:
    return tqdm(total=total, desc=desc, initial=initial, unit=unit, disable=None if enabled else True,
                dynamic_ncols=True)

"""Plugins: search strategies and network kinds that packages declare as entry points, the way pytest and MONAI
find theirs (``importlib.metadata``). A package adds a strategy or a network kind without touching segnas by
declaring, in its ``pyproject.toml``::

    [project.entry-points."segnas.strategies"]
    my-search = "my_package.search:MySearch"          # a SearchStrategy subclass (or a module registering one)

    [project.entry-points."segnas.networks"]
    my-net = "my_package.nets:MyNetSpec"               # a NetworkSpec subclass, its kind the entry's name

segnas declares its own strategies' network kinds (super-nets, cell networks) the same way, so the network
registry finds them without importing the strategies package (the lower floors never import the upper ones).
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import entry_points
from typing import Any

log = logging.getLogger(__name__)

STRATEGY_GROUP = "segnas.strategies"
NETWORK_GROUP = "segnas.networks"


@functools.cache
def load_entry_points(group: str) -> dict[str, Any]:
    """Entry point name -> the object it names, for every entry point of ``group`` installed (loaded once per
    process: loading imports the plugin's module, which may register what it defines). A plugin that fails to
    load is reported and skipped: a broken third-party package must not take every segnas command down."""
    loaded: dict[str, Any] = {}
    for point in sorted(entry_points(group=group), key=lambda point: point.name):
        if point.name in loaded:
            continue  # the same distribution seen twice on the path (an editable and a regular install)
        try:
            loaded[point.name] = point.load()
        except Exception as err:  # noqa: BLE001 - any error of foreign code
            log.warning("plugin %r (%s, group %s) could not be loaded and is skipped: %s: %s", point.name,
                        point.value, group, type(err).__name__, err)
    return loaded

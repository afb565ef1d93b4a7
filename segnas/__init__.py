"""segnas: neural architecture search for 3D medical image segmentation.

The package is organised by the flow of a search:
``data`` (datasets, plans, transforms) -> ``spaces`` (search spaces, architectures, samplers) ->
``networks`` (network specs and their registry, super-net, derived networks, baselines) -> ``engine``
(trainer, evaluator, inference, metrics) -> ``cost`` (parameters, FLOPs, measured memory) -> ``strategies``
(one folder per search method) -> ``report`` (pictures) -> ``cli`` (the command over :mod:`segnas.api`).

The API's names are importable from here (``segnas.search``, ``segnas.train``, ...); they are loaded on first
use, so ``import segnas`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from segnas.version import __version__

_API = ("plan_dataset", "topology_space", "sample_architectures", "load_architecture", "network_for",
        "measure_cost", "train", "predict", "export", "report", "evaluate", "search", "prepare_search", "open_search", "list_strategies",
        "list_networks", "get_strategy", "CostReport", "Plan", "Architecture", "CellArchitecture", "TopologySpace",
        "NetworkSpec")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from segnas import api

        return getattr(api, name)
    raise AttributeError(f"module 'segnas' has no attribute {name!r}")

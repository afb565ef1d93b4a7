"""segnas: neural architecture search for 3D medical image segmentation.

The package is organised by the flow of a search:
``data`` (datasets, plans, transforms) -> ``spaces`` (search spaces, architectures, samplers) ->
``networks`` (super-net, derived networks, baselines) -> ``engine`` (trainer, inference, metrics) ->
``cost`` (parameters, FLOPs, measured memory) -> ``report`` (pictures) -> ``cli`` (commands).
"""

from __future__ import annotations

__version__ = "0.1.0"

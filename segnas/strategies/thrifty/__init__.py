"""Thrifty NAS (Chen et al., AAAI 2022): one cell and its path over resolutions, searched jointly for very small
3D segmentation networks.

Importing the package registers the ``thrifty`` strategy and its network kinds (``cell-path``, the derived
network; ``thrifty-search-net``, the search network).
"""

from segnas.strategies.thrifty.network import CellPathNet, CellPathSpec, ThriftySearchNetSpec
from segnas.strategies.thrifty.path import decode_path, move_probabilities, u_path, visit_probabilities
from segnas.strategies.thrifty.search import ThriftCostModel, ThriftySearchHook
from segnas.strategies.thrifty.strategy import PROFILES, ThriftyProfile, ThriftyStrategy

__all__ = ["CellPathNet", "CellPathSpec", "ThriftySearchNetSpec", "decode_path", "move_probabilities", "u_path",
           "visit_probabilities", "ThriftCostModel", "ThriftySearchHook", "PROFILES", "ThriftyProfile",
           "ThriftyStrategy"]

"""Scalable NAS (Kim et al. 2019): a U-Net whose every layer is a searched cell, searched by stochastic
sampling over the continuous relaxation.

Importing the package registers the ``scalable-nas`` strategy and its search network's kind.
"""

from segnas.strategies.scalable_nas.sampling import CostTable, SamplingSearchHook, derive, draw
from segnas.strategies.scalable_nas.strategy import PROFILES, ScalableNasStrategy, ScalableProfile, ScalableSearchNetSpec

__all__ = ["CostTable", "SamplingSearchHook", "derive", "draw", "PROFILES", "ScalableNasStrategy", "ScalableProfile",
           "ScalableSearchNetSpec"]

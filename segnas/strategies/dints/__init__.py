"""DiNTS (He et al., CVPR 2021): differentiable topology search on the shared super-net.

Importing the package registers the ``dints`` strategy and its super-net's network kind.
"""

from segnas.strategies.dints.decode import decode, pattern_probabilities
from segnas.strategies.dints.strategy import PROFILES, DintsProfile, DintsStrategy, DintsSuperNetSpec

__all__ = ["decode", "pattern_probabilities", "PROFILES", "DintsProfile", "DintsStrategy", "DintsSuperNetSpec"]

"""DiNTS (He et al., CVPR 2021): differentiable topology search on the shared super-net."""

from segnas.strategies.dints.decode import decode, pattern_probabilities

__all__ = ["decode", "pattern_probabilities"]

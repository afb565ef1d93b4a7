"""HyperSegNAS (Peng et al., CVPR 2022): one-shot super-net with a Meta-Assistant HyperNet, annealing, search.

Importing the package registers the ``hypersegnas`` strategy and its super-net's network kind.
"""

from segnas.strategies.hypersegnas.meta_assistant import FIXED_WEIGHT, MetaAssistant, annealed_weights
from segnas.strategies.hypersegnas.strategy import PROFILES, HyperSegNASStrategy, HyperSuperNetSpec, SearchProfile
from segnas.strategies.hypersegnas.supernet import VARIANTS, HyperSuperNet, SupernetTrainingHook, sample_for_step

__all__ = ["FIXED_WEIGHT", "MetaAssistant", "annealed_weights", "VARIANTS", "HyperSuperNet",
           "SupernetTrainingHook", "sample_for_step", "PROFILES", "HyperSegNASStrategy", "HyperSuperNetSpec",
           "SearchProfile"]

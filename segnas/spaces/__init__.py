"""Search spaces and architectures: the topology space, its JSON architecture format, samplers, presets."""

from segnas.spaces.architecture import Architecture
from segnas.spaces.presets import PRESETS, extreme_architectures, unet_architecture
from segnas.spaces.sampler import ArchitectureSampler
from segnas.spaces.topology import DINTS_OPS, HYPERSEGNAS_OPS, TopologySpace

__all__ = ["Architecture", "ArchitectureSampler", "TopologySpace", "PRESETS", "unet_architecture", "extreme_architectures",
           "DINTS_OPS", "HYPERSEGNAS_OPS"]

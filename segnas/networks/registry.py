"""Typed network specs: the one form in which run folders, checkpoints and the cost cache name a network.

Every network segnas builds is described by a frozen :class:`NetworkSpec` subclass registered once with
:func:`register_network` (timm's ``register_model`` in spirit): its ``kind`` is what ``run.json`` stores, and
``build()`` makes the module. Built-in kinds:

=====================  ===========================================================================
``topology``           a network of the topology space (:class:`TopologyNetworkSpec`)
``monai-unet``         MONAI UNet, the foundation's baseline (``--net monai-unet``)
``dynunet``            MONAI DynUNet with nnU-Net's layout (``--net dynunet``)
``implanted-cells``    a MONAI UNet or DynUNet with discrete cells in its skip connections (IAC)
``cell-unet``          a U-Net every layer of which is a discrete cell (Scalable NAS)
=====================  ===========================================================================

Strategy folders add theirs (``cell-path``: Thrifty NAS's one cell along a path over resolutions).

Strategies register their own kinds (the super-nets they write into run folders) from their folders; the
registry imports the strategy packages before it answers, so every kind is known wherever a spec is read.

A spec serialises to ``{"kind": ..., field: value, ...}`` (:meth:`NetworkSpec.to_dict`) and back
(:func:`network_from_dict`), with every field written out, so that two specs are equal exactly when they
build the same network.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch.nn as nn
from monai.networks.nets import DynUNet, UNet

from segnas.data.plan import LevelStrides, check_level_strides, first_levels, level_scale, strides_to_json, total_stride
from segnas.errors import SegnasInputError
from segnas.networks.topology_net import TopologyNet
from segnas.networks.cell_unet import CellUNet
from segnas.networks.cells import Cell
from segnas.networks.implant import ImplantedNet, skip_channels
from segnas.plugins import NETWORK_GROUP, load_entry_points
from segnas.spaces.architecture import Architecture, architecture_from_dict, space_from_dict
from segnas.spaces.cells import UNET_CELL_TYPES, CellArchitecture, CellSpace, Genotype
from segnas.spaces.sampler import ArchitectureSampler
from segnas.spaces.topology import TopologySpace

log = logging.getLogger(__name__)
_NETWORKS: dict[str, type["NetworkSpec"]] = {}
S = TypeVar("S", bound=type["NetworkSpec"])


#: Field metadata of a spec field left out of :meth:`NetworkSpec.to_dict` while ``None`` (per-axis ``strides``:
#: isotropic specs keep the documents, hashes and recorded figures they had before the field existed).
OMIT_IF_NONE = "omit_if_none"


@dataclass(frozen=True, eq=False)
class NetworkSpec(ABC):
    """What builds one network. Subclasses set ``kind`` and ``summary``, add fields and implement ``build``,
    ``stride`` and ``example``.

    ``baseline = True`` offers the kind as ``segnas train/cost --net KIND``; ``cell_placement`` names the
    placement of the cell architectures the kind builds (:func:`cell_network` dispatches on it).
    """

    kind: ClassVar[str]
    summary: ClassVar[str]
    baseline: ClassVar[bool] = False
    cell_placement: ClassVar[str | None] = None

    in_channels: int
    out_channels: int

    @abstractmethod
    def build(self) -> nn.Module:
        """The freshly initialised module: ``(B, in_channels, *patch) -> (B, out_channels, *patch)``."""

    @abstractmethod
    def stride(self) -> list[int]:
        """Per axis, the multiple every patch side must be."""

    @classmethod
    @abstractmethod
    def example(cls, in_channels: int = 1, out_channels: int = 3) -> "NetworkSpec":
        """A small instance of this kind (tests build and train it on a tiny patch)."""

    @classmethod
    def for_plan(cls, in_channels: int, out_channels: int, patch_size: list[int], spacing: list[float],
                 pool_strides: list[list[int]] | None = None) -> "NetworkSpec":
        """The ``--net KIND`` network for a plan's patch, spacing and per-level pooling (``pool_strides``, see
        :attr:`segnas.data.plan.Plan.pool_strides`); most baselines ignore them."""
        return cls(in_channels, out_channels)

    def forward_kwargs(self) -> dict[str, Any]:
        """Keyword arguments one forward pass needs besides the image (super-nets: which architecture)."""
        return {}

    # ----- JSON --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None and item.metadata.get(OMIT_IF_NONE):
                continue
            if hasattr(value, "to_dict"):  # architectures, spaces, nested specs
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            data[item.name] = value
        return data

    @classmethod
    def from_fields(cls, data: dict[str, Any], source: str | None = None) -> "NetworkSpec":
        """Parse the fields of :meth:`to_dict` (without ``kind``); lists become tuples."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SegnasInputError(f"network kind {cls.kind!r} has no field(s) {unknown}", source)
        values = {k: _tuples(v) for k, v in data.items()}
        if isinstance(values.get("space"), dict):  # super-nets record their search space
            values["space"] = space_from_dict(values["space"], source)
        if isinstance(values.get("architecture"), dict):  # parsed and validated by the architecture format;
            # the kind's own check (``__post_init__``) refuses an architecture of another space
            values["architecture"] = architecture_from_dict(values["architecture"], source=source or "network spec")
        try:
            return cls(**values)
        except TypeError as err:
            raise SegnasInputError(f"invalid {cls.kind!r} network spec ({err})", source) from err

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NetworkSpec) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def register_network(cls: S) -> S:
    """Class decorator: make ``cls.kind`` buildable everywhere (run folders, cost, ``--net``)."""
    if cls.kind in _NETWORKS and _NETWORKS[cls.kind] is not cls:
        raise ValueError(f"network kind {cls.kind!r} is registered twice")
    _NETWORKS[cls.kind] = cls
    return cls


def _registry() -> dict[str, type[NetworkSpec]]:
    """Every kind: this module's, and those packages declare as ``segnas.networks`` entry points (segnas's own
    strategies' super-nets and cell networks among them; see :mod:`segnas.plugins`)."""
    for name, loaded in load_entry_points(NETWORK_GROUP).items():
        if not (isinstance(loaded, type) and issubclass(loaded, NetworkSpec)) or loaded.kind != name:
            log.warning("entry point %r of group %s is not a network spec of kind %r; skipped", name, NETWORK_GROUP,
                        name)
        elif name not in _NETWORKS:
            register_network(loaded)
    return _NETWORKS


def list_networks(baselines_only: bool = False) -> list[str]:
    """The registered kinds, sorted (``baselines_only``: those ``--net`` offers)."""
    return sorted(kind for kind, cls in _registry().items() if cls.baseline or not baselines_only)


def network_class(kind: str) -> type[NetworkSpec]:
    registry = _registry()
    if kind not in registry:
        raise SegnasInputError(f"unknown network kind {kind!r}; known: {sorted(registry)}")
    return registry[kind]


def network_from_dict(data: Any, source: str | None = None) -> NetworkSpec:
    """The spec of a ``{"kind": ..., ...}`` document (as run folders store it)."""
    if not isinstance(data, dict) or "kind" not in data:
        raise SegnasInputError("a network spec must be a JSON object with a 'kind'", source)
    body = {k: v for k, v in data.items() if k != "kind"}
    return network_class(data["kind"]).from_fields(body, source)


# ----- built-in kinds ---------------------------------------------------------------------------------------
#: The small space of the examples (3 blocks, 2 scales, 8 and 16 channels).
EXAMPLE_SPACE = TopologySpace(num_blocks=3, num_depths=2, channel_mul=0.125)


@register_network
@dataclass(frozen=True, eq=False)
class TopologyNetworkSpec(NetworkSpec):
    """A derived network of the topology space (``merge``, ``fixed_channel_weight``: see :class:`TopologyNet`)."""

    kind: ClassVar[str] = "topology"
    summary: ClassVar[str] = "an architecture of the topology space (segnas train --arch)"

    architecture: Architecture
    merge: str = "mean"
    fixed_channel_weight: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, Architecture):
            raise TypeError("a topology network spec needs an Architecture")

    def build(self) -> nn.Module:
        return TopologyNet(self.architecture.space, self.in_channels, self.out_channels, self.architecture,
                           self.merge, self.fixed_channel_weight)

    def stride(self) -> list[int]:
        return self.architecture.space.axis_stride

    @classmethod
    def example(cls, in_channels: int = 1, out_channels: int = 3) -> "TopologyNetworkSpec":
        return cls(in_channels, out_channels, ArchitectureSampler(EXAMPLE_SPACE, 0).sample())


@dataclass(frozen=True, eq=False)
class SuperNetSpec(NetworkSpec):
    """Base of the super-nets strategies write into run folders: a network over a whole topology space."""

    space: TopologySpace

    def stride(self) -> list[int]:
        return self.space.axis_stride


@register_network
@dataclass(frozen=True, eq=False)
class MonaiUNetSpec(NetworkSpec):
    """MONAI's UNet with residual units and instance norm (the defaults: 16..256 channels, 4.8M parameters)."""

    kind: ClassVar[str] = "monai-unet"
    summary: ClassVar[str] = "MONAI UNet, 16..256 channels, 2 residual units"
    baseline: ClassVar[bool] = True

    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    #: Per level, one factor for every axis (``2``) or one per axis (``(2, 2, 1)``: thick slices kept).
    strides: tuple[int | tuple[int, int, int], ...] = (2, 2, 2, 2)
    num_res_units: int = 2

    def build(self) -> nn.Module:
        return UNet(spatial_dims=3, in_channels=self.in_channels, out_channels=self.out_channels,
                    channels=self.channels, strides=self.strides, num_res_units=self.num_res_units, norm="INSTANCE")

    def stride(self) -> list[int]:
        return total_stride([level if isinstance(level, tuple) else (level,) * 3 for level in self.strides])

    @classmethod
    def example(cls, in_channels: int = 1, out_channels: int = 3) -> "MonaiUNetSpec":
        return cls(in_channels, out_channels, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)

    @classmethod
    def for_plan(cls, in_channels: int, out_channels: int, patch_size: list[int], spacing: list[float],
                 pool_strides: list[list[int]] | None = None) -> "MonaiUNetSpec":
        """The default UNet; on a plan that pools axes differently, its levels take the plan's first ones."""
        levels = len(cls.strides)
        return cls(in_channels, out_channels, strides=first_levels(pool_strides, levels) or cls.strides)


def dynunet_layout(patch_size: list[int], spacing: list[float], max_levels: int = 5) -> tuple[list, list]:
    """nnU-Net's kernel sizes and strides: halve an axis while it stays >= 8 voxels and not 2x coarser than the finest."""
    sizes, spacings = list(patch_size), list(spacing)
    kernels, strides = [], [[1, 1, 1]]
    while len(strides) < max_levels:
        ratio = [s / min(spacings) for s in spacings]
        stride = [2 if r <= 2 and size >= 8 else 1 for r, size in zip(ratio, sizes)]
        if all(s == 1 for s in stride):
            break
        kernels.append([3 if r <= 2 else 1 for r in ratio])
        strides.append(stride)
        sizes = [size // s for size, s in zip(sizes, stride)]
        spacings = [sp * s for sp, s in zip(spacings, stride)]
    kernels.append([3, 3, 3])
    return kernels, strides


@register_network
@dataclass(frozen=True, eq=False)
class DynUNetSpec(NetworkSpec):
    """MONAI's DynUNet with the kernels and strides nnU-Net derives from the patch and the spacing."""

    kind: ClassVar[str] = "dynunet"
    summary: ClassVar[str] = "MONAI DynUNet in nnU-Net's layout for the plan's patch and spacing"
    baseline: ClassVar[bool] = True

    patch_size: tuple[int, ...] = (64, 64, 64)
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)

    def build(self) -> nn.Module:
        kernels, strides = dynunet_layout(list(self.patch_size), list(self.spacing))
        return DynUNet(spatial_dims=3, in_channels=self.in_channels, out_channels=self.out_channels,
                       kernel_size=kernels, strides=strides, upsample_kernel_size=strides[1:],
                       norm_name="instance", res_block=True)

    def stride(self) -> list[int]:
        _, strides = dynunet_layout(list(self.patch_size), list(self.spacing))
        return [int(np.prod([s[axis] for s in strides])) for axis in range(3)]

    @classmethod
    def example(cls, in_channels: int = 1, out_channels: int = 3) -> "DynUNetSpec":
        return cls(in_channels, out_channels, patch_size=(16, 16, 16), spacing=(1.0, 1.0, 1.0))

    @classmethod
    def for_plan(cls, in_channels: int, out_channels: int, patch_size: list[int], spacing: list[float],
                 pool_strides: list[list[int]] | None = None) -> "DynUNetSpec":
        """nnU-Net's own layout from the patch and the spacing (``pool_strides`` unused: it derives its own)."""
        return cls(in_channels, out_channels, patch_size=tuple(patch_size), spacing=tuple(spacing))


#: The cell name of IAC's architectures: one genotype shared by every skip connection.
SKIP_CELL = "skip"


def implanted_network(host: NetworkSpec, space: CellSpace, genotype: Genotype | None = None,
                      partial: int = 1) -> ImplantedNet:
    """``host`` built with a cell of ``space`` in every skip connection: discrete (``genotype``) or relaxed
    (``None``, PC-DARTS's ``partial`` channels). A cell's nodes have the skip's channels (a multiple of
    ``partial``, at least ``partial``)."""
    module = host.build()
    channels = skip_channels(module, host.in_channels, [2 * s for s in host.stride()])

    def make_cell(c_skip: int, c_up: int) -> Cell:
        width = max(partial, c_skip // partial * partial)
        return Cell(space, [c_skip, c_up], width, c_skip, genotype, partial)

    return ImplantedNet(module, channels, make_cell)


@register_network
@dataclass(frozen=True, eq=False)
class ImplantedNetworkSpec(NetworkSpec):
    """A host U-Net (MONAI UNet or DynUNet) with the discrete cells of a :class:`CellArchitecture` in its skip
    connections (Implantable Adaptive Cells)."""

    kind: ClassVar[str] = "implanted-cells"
    cell_placement: ClassVar[str | None] = "skip-connections"
    summary: ClassVar[str] = "a host U-Net with searched cells in its skip connections (IAC; segnas train --arch)"

    architecture: CellArchitecture

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, CellArchitecture) or \
                self.architecture.space.placement != "skip-connections":
            raise TypeError("an implanted-cells network spec needs a CellArchitecture of skip-connection cells")
        host = self.host()
        if (host.in_channels, host.out_channels) != (self.in_channels, self.out_channels):
            raise SegnasInputError(f"the architecture's host network has {host.in_channels} input channels and "
                                   f"{host.out_channels} classes; this data needs {self.in_channels} and "
                                   f"{self.out_channels}")

    def host(self) -> NetworkSpec:
        return network_from_dict(self.architecture.host, "architecture host")

    def build(self) -> nn.Module:
        return implanted_network(self.host(), self.architecture.space, self.architecture.cells[SKIP_CELL])

    def stride(self) -> list[int]:
        return self.host().stride()

    @classmethod
    def example(cls, in_channels: int = 1, out_channels: int = 3) -> "ImplantedNetworkSpec":
        space = CellSpace(ops=("zero", "skip_connect", "conv_3x3x3", "avg_pool_3x3x3"), nodes=2)
        genotype = (((0, "conv_3x3x3"), (1, "skip_connect")), ((1, "avg_pool_3x3x3"), (2, "conv_3x3x3")))
        host = MonaiUNetSpec.example(in_channels, out_channels)
        return cls(in_channels, out_channels, CellArchitecture(space, host.to_dict(), {SKIP_CELL: genotype}))


def check_searched_for(host: dict[str, Any], in_channels: int, out_channels: int) -> None:
    """Refuse a cell architecture's skeleton (``host``) searched for other image channels or classes."""
    if (host.get("in_channels"), host.get("out_channels")) != (in_channels, out_channels):
        raise SegnasInputError(f"the architecture was searched for {host.get('in_channels')} input channels and "
                               f"{host.get('out_channels')} classes; this data has {in_channels} and {out_channels}")


#: The ``host`` kind of a :class:`CellArchitecture` whose cells make a whole U-Net: the skeleton, not a network.
CELL_UNET = "cell-unet"


def cell_unet_host(in_channels: int, out_channels: int, channels: int, levels: int,
                   strides: LevelStrides | None = None) -> dict[str, Any]:
    """The ``host`` of a U-Net of cells (:class:`segnas.networks.cell_unet.CellUNet`): its skeleton (``strides``
    written only where some axis is pooled fewer times: isotropic hosts keep their earlier files and hashes)."""
    host = {"kind": CELL_UNET, "in_channels": in_channels, "out_channels": out_channels, "channels": channels,
            "levels": levels}
    strides = check_level_strides(strides, levels - 1)
    return host if strides is None else {**host, "strides": strides_to_json(strides)}


def spec_strides(strides: Any, levels: int, kind: str) -> LevelStrides | None:
    """A spec field ``strides`` checked and normalised (every axis halved: ``None``), or refused in words."""
    try:
        return check_level_strides(strides, levels)
    except ValueError as err:
        raise SegnasInputError(f"invalid {kind!r} network spec: {err}") from err


def host_strides(host: dict[str, Any], levels: int, problems: list[str]) -> LevelStrides | None:
    """A cell architecture's host's per-level ``strides`` (``None`` without them); what is wrong goes to
    ``problems``."""
    try:
        return check_level_strides(host.get("strides"), levels)
    except ValueError as err:
        problems.append(f"host field 'strides': {err}")
        return None


@register_network
@dataclass(frozen=True, eq=False)
class CellUNetSpec(NetworkSpec):
    """A U-Net every layer of which is a discrete cell of a :class:`CellArchitecture` (placement
    ``encoder-decoder``: one genotype per cell type; the host holds the skeleton's channels and levels)."""

    kind: ClassVar[str] = CELL_UNET
    cell_placement: ClassVar[str | None] = "encoder-decoder"
    summary: ClassVar[str] = "a U-Net built of searched cells (Scalable NAS; segnas train --arch)"

    architecture: CellArchitecture

    def __post_init__(self) -> None:
        arch = self.architecture
        if not isinstance(arch, CellArchitecture) or arch.space.placement != "encoder-decoder":
            raise TypeError("a cell-unet network spec needs a CellArchitecture of encoder-decoder cells")
        host = arch.host
        problems = [f"host field {key!r} must be a positive integer" for key in ("channels", "levels")
                    if not isinstance(host.get(key), int) or host[key] < 1]
        if not problems:
            host_strides(host, host["levels"] - 1, problems)
        problems += [f"it has no {name!r} cell" for name in UNET_CELL_TYPES if name not in arch.cells]
        if problems:
            raise SegnasInputError("invalid U-Net of cells: " + "; ".join(problems))
        check_searched_for(host, self.in_channels, self.out_channels)

    def build(self) -> nn.Module:
        host = self.architecture.host
        return CellUNet(self.architecture.space, self.in_channels, self.out_channels, host["channels"],
                        host["levels"], self.architecture.cells, host.get("strides"))

    def stride(self) -> list[int]:
        host = self.architecture.host
        return list(level_scale(check_level_strides(host.get("strides"), host["levels"] - 1), host["levels"] - 1))

    @classmethod
    def example(cls, in_channels: int = 1, out_channels: int = 3) -> "CellUNetSpec":
        space = CellSpace(ops=("zero", "skip_connect", "conv_3x3x3", "avg_pool_3x3x3"), nodes=2,
                          placement="encoder-decoder")
        genotype = (((0, "conv_3x3x3"), (1, "skip_connect")), ((1, "avg_pool_3x3x3"), (2, "conv_3x3x3")))
        host = cell_unet_host(in_channels, out_channels, 4, 2)
        return cls(in_channels, out_channels, CellArchitecture(space, host, {t: genotype for t in UNET_CELL_TYPES}))


def cell_network(arch: CellArchitecture, in_channels: int | None = None,
                 out_channels: int | None = None) -> NetworkSpec:
    """The network of a cell architecture, by where its cells go; channels and classes default to its host's."""
    in_channels = in_channels or arch.host.get("in_channels")
    out_channels = out_channels or arch.host.get("out_channels")
    kinds = [cls for cls in _registry().values() if cls.cell_placement == arch.space.placement]
    if not kinds:
        raise SegnasInputError(f"no network kind builds cells placed {arch.space.placement!r}")
    return kinds[0](in_channels, out_channels, arch)

"""Networks of the topology space: the shared-weight super-net and standalone derived networks.

One class, :class:`TopologyNet`, serves both roles so that they share one forward pass:

* ``TopologyNet(space, ..., architecture=None)`` is the **super-net**: it holds every edge with every
  operation, and ``forward(x, architecture)`` runs only that architecture's active edges (inactive edges
  cost no compute).
* ``TopologyNet(space, ..., architecture=arch)`` is a **derived** network holding only ``arch``'s modules;
  :func:`derive` cuts one out of a super-net with its weights, giving identical outputs.

The modules are MONAI's DiNTS blocks (``ActiConvNormBlock``, ``FactorizedIncreaseBlock``,
``FactorizedReduceBlock``, ``P3DActiConvNormBlock``) and the default stem (``space.stem == "dints"``) is DiNTS's,
so a network with ``merge="sum"`` computes exactly what ``monai.networks.nets.DiNTS(TopologyInstance(...))``
computes for the same architecture and weights (see :mod:`segnas.networks.monai_compat`). The ``light`` stem
(a strided convolution in, a transposed one out) is segnas's: DiNTS's stems hold 8-channel features at full
resolution that cost about 50 MiB of training memory at a 48x64x48 patch and batch 2 before the grid has any
edge (docs/benchmarks.md, "The space's stem").

Channel re-weighting (HyperSegNAS Eq. 4): ``forward(..., channel_weights=w)`` with ``w`` of shape
``(B, c_tot)`` multiplies the *output* of every (block, edge, operation) channel-wise. It acts after the
operation's instance normalisation on purpose: a per-channel scale of a convolution kernel directly
followed by instance normalisation is divided out again by that normalisation (a no-op), while a scale
of the normalised output reaches the merge sum and the next convolution, which mixes channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks.dints_block import (
    ActiConvNormBlock,
    FactorizedIncreaseBlock,
    FactorizedReduceBlock,
    P3DActiConvNormBlock,
)
from monai.networks.layers.utils import get_act_layer, get_norm_layer

from segnas.errors import SegnasInputError
from segnas.spaces.architecture import Architecture
from segnas.spaces.topology import TopologySpace

NORM = ("INSTANCE", {"affine": True})
ACT = "RELU"
MERGE_RULES = ("sum", "mean")


def make_operation(name: str, channels: int) -> nn.Module:
    """One edge operation of the space; every operation keeps ``channels``. Shapes ``(B, C, H, W, D)``."""
    if name == "skip_connect":
        return nn.Identity()
    if name == "conv_3x3x3":
        return ActiConvNormBlock(channels, channels, 3, padding=1, spatial_dims=3, act_name=ACT, norm_name=NORM)
    p3d_mode = {"conv_3x3x1": 0, "conv_3x1x3": 1, "conv_1x3x3": 2}[name]
    return P3DActiConvNormBlock(channels, channels, 3, padding=1, mode=p3d_mode, act_name=ACT, norm_name=NORM)


class AxisFactorizedIncrease(FactorizedIncreaseBlock):
    """MONAI's ``FactorizedIncreaseBlock`` up-sampling each axis by its own factor (1 along thick slices);
    same modules and parameters, and with ``(2, 2, 2)`` the same output."""

    def __init__(self, in_channels: int, out_channels: int, stride: Sequence[int]):
        super().__init__(in_channels, out_channels, spatial_dims=3, act_name=ACT, norm_name=NORM)
        self.up = nn.Upsample(scale_factor=tuple(float(f) for f in stride), mode="trilinear", align_corners=True)


class AxisFactorizedReduce(FactorizedReduceBlock):
    """MONAI's ``FactorizedReduceBlock`` down-sampling each axis by its own factor: the second strided 1x1
    convolution sees the input shifted by one voxel along the halved axes only. Same parameters, and with
    ``(2, 2, 2)`` the same output."""

    def __init__(self, in_channels: int, out_channels: int, stride: Sequence[int]):
        super().__init__(in_channels, out_channels, spatial_dims=3, act_name=ACT, norm_name=NORM)
        self.conv_1.stride = self.conv_2.stride = tuple(int(f) for f in stride)
        self.shifted = (slice(None), slice(None), *(slice(1, None) if f > 1 else slice(None) for f in stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        return self.norm(torch.cat([self.conv_1(x), self.conv_2(x[self.shifted])], dim=1))


def make_resolution_change(rate: int, in_channels: int, out_channels: int,
                           stride: Sequence[int] = (2, 2, 2)) -> nn.Module:
    """The edge's first step: up-sampling (+1) or down-sampling (-1) by ``stride`` per axis, or same scale (0)."""
    if rate == 1:
        return AxisFactorizedIncrease(in_channels, out_channels, stride)
    if rate == -1:
        return AxisFactorizedReduce(in_channels, out_channels, stride)
    # Same-scale edges join nodes of equal width (channels double per scale), so they need no projection.
    return nn.Identity()


class EdgeCell(nn.Module):
    """One edge: resolution change, then one of ``ops`` (a ``ModuleDict`` keyed by operation name)."""

    def __init__(self, rate: int, in_channels: int, out_channels: int, op_names: list[str],
                 stride: Sequence[int] = (2, 2, 2)):
        super().__init__()
        self.preprocess = make_resolution_change(rate, in_channels, out_channels, stride)
        self.ops = nn.ModuleDict({name: make_operation(name, out_channels) for name in op_names})

    def forward(self, x: torch.Tensor, op_name: str) -> torch.Tensor:
        return self.ops[op_name](self.preprocess(x))


@dataclass(frozen=True)
class _ActiveEdge:
    block: int
    key: str
    source: int
    target: int
    op_name: str
    weight_offset: int
    channels: int


class TopologyNet(nn.Module):
    """Segmentation network over the topology space (super-net or derived).

    Args:
        space: the search space.
        in_channels: image channels.
        out_channels: segmentation classes, background included.
        architecture: ``None`` for the super-net; an architecture for a derived network holding only its modules.
        merge: how edges meeting at a node combine: ``"sum"`` (MONAI DiNTS) or ``"mean"`` (HyperSegNAS's
            "summed and normalised": the sum divided by the number of incoming edges).
        fixed_channel_weight: a constant that multiplies every operation's output when no ``channel_weights``
            are passed: what an annealed HyperSegNAS super-net keeps after its HyperNet is removed (0.5).

    Input ``(B, in_channels, H, W, D)`` with each side a multiple of its axis's ``space.axis_stride``;
    output logits ``(B, out_channels, H, W, D)``.
    """

    def __init__(
        self,
        space: TopologySpace,
        in_channels: int,
        out_channels: int,
        architecture: Architecture | None = None,
        merge: str = "mean",
        fixed_channel_weight: float | None = None,
    ):
        super().__init__()
        if merge not in MERGE_RULES:
            raise SegnasInputError(f"unknown merge rule {merge!r}; choose one of {MERGE_RULES}")
        if architecture is not None:
            architecture.same_space(space)
            architecture.validate()
        self.space, self.merge, self.architecture = space, merge, architecture
        self.fixed_channel_weight = fixed_channel_weight
        self.in_channels, self.out_channels = in_channels, out_channels
        filters = space.filter_nums
        shift = int(space.stem_downsample)
        input_nodes = range(space.num_depths) if architecture is None else sorted(architecture.active_nodes(0))
        up_nodes = range(space.num_depths) if architecture is None else range(self._deepest_output(architecture) + 1)
        light = space.stem == "light"
        stem_down = self._light_stem_down if light else self._stem_down
        self.stem_down = nn.ModuleDict({str(d): stem_down(d, in_channels, space) for d in input_nodes})
        # The light head leaves scale 0 by a transposed convolution to the logits, not by stem_up["0"].
        self.stem_up = nn.ModuleDict({str(d): self._stem_up(d, space) for d in up_nodes if d or not light})
        first = space.level_strides[0]
        self.stem_finals = nn.Sequential(
            get_act_layer(name=ACT), nn.ConvTranspose3d(filters[1], out_channels, first, stride=first, bias=True),
        ) if light else nn.Sequential(
            ActiConvNormBlock(filters[0], filters[0], act_name=ACT, norm_name=NORM, spatial_dims=3),
            nn.Conv3d(filters[0], out_channels, kernel_size=1, bias=True),
        )
        self.cells = nn.ModuleDict()
        for block in range(space.num_blocks):
            for edge in range(space.num_edges):
                if architecture is not None and not architecture.edges[block, edge]:
                    continue
                names = list(space.ops) if architecture is None else [space.ops[architecture.ops[block, edge]]]
                # the level between the edge's two scales (grid scale d is resolution level d + shift)
                level = min(space.edge_source(edge), space.edge_target(edge)) + shift
                self.cells[f"{block}_{edge}"] = EdgeCell(
                    space.edge_rate(edge),
                    space.node_channels[space.edge_source(edge)],
                    space.node_channels[space.edge_target(edge)],
                    names,
                    space.level_strides[level] if level < space.levels else (2, 2, 2),
                )
        self._plan_cache: tuple[str, list[list[_ActiveEdge]], list[int], int] | None = None

    # ----- construction helpers ----------------------------------------------------------------------
    @staticmethod
    def _stem_down(depth: int, in_channels: int, space: TopologySpace) -> nn.Sequential:
        """DiNTS's input stem for one scale: resize to resolution level ``depth``, conv, norm (and a strided conv
        to the next level when the stem down-samples)."""
        filters = space.filter_nums
        layers: list[nn.Module] = [
            nn.Upsample(scale_factor=tuple(1 / f for f in space.scale(depth)), mode="trilinear", align_corners=True),
            nn.Conv3d(in_channels, filters[depth], 3, padding=1, bias=False),
            get_norm_layer(name=NORM, spatial_dims=3, channels=filters[depth]),
        ]
        if space.stem_downsample:
            layers += [
                get_act_layer(name=ACT),
                nn.Conv3d(filters[depth], filters[depth + 1], 3, stride=space.level_strides[depth], padding=1,
                          bias=False),
                get_norm_layer(name=NORM, spatial_dims=3, channels=filters[depth + 1]),
            ]
        return nn.Sequential(*layers)

    @staticmethod
    def _light_stem_down(depth: int, in_channels: int, space: TopologySpace) -> nn.Sequential:
        """The light input stem for one scale: resize to resolution level ``depth``, then one strided conv and
        norm, so that no feature map wider than the image is held at full resolution."""
        filters = space.filter_nums
        resize = [nn.Upsample(scale_factor=tuple(1 / f for f in space.scale(depth)), mode="trilinear",
                              align_corners=True)] if depth else []
        return nn.Sequential(
            *resize,
            nn.Conv3d(in_channels, filters[depth + 1], 3, stride=space.level_strides[depth], padding=1, bias=False),
            get_norm_layer(name=NORM, spatial_dims=3, channels=filters[depth + 1]),
        )

    @staticmethod
    def _stem_up(depth: int, space: TopologySpace) -> nn.Sequential:
        """DiNTS's output stem for one scale: conv to the next finer scale's channels, norm, up-sampling to it."""
        filters, shift = space.filter_nums, int(space.stem_downsample)
        out_channels = filters[depth] if shift else filters[max(depth - 1, 0)]
        level = depth if shift else depth - 1  # the level this stem climbs back over (none: scale 0, no stem)
        scale = tuple(float(f) for f in space.level_strides[level]) if level >= 0 else (1.0, 1.0, 1.0)
        return nn.Sequential(
            get_act_layer(name=ACT),
            nn.Conv3d(filters[depth + shift], out_channels, 3, padding=1, bias=False),
            get_norm_layer(name=NORM, spatial_dims=3, channels=out_channels),
            nn.Upsample(scale_factor=scale, mode="trilinear", align_corners=True),
        )

    @staticmethod
    def _deepest_output(architecture: Architecture) -> int:
        return max(architecture.active_nodes(architecture.space.num_blocks))

    # ----- re-weightable channels --------------------------------------------------------------------
    def reweight_offset(self, block: int, edge: int, op: int) -> int:
        """Start of (block, edge, op)'s slice in the flat ``c_tot`` vector (block-major, then edge, op, channel)."""
        space = self.space
        per_edge = [space.node_channels[space.edge_target(e)] * space.num_ops for e in range(space.num_edges)]
        start = block * sum(per_edge) + sum(per_edge[:edge])
        return start + op * space.node_channels[space.edge_target(edge)]

    @property
    def reweightable_channels(self) -> int:
        return self.space.reweightable_channels()

    # ----- forward -----------------------------------------------------------------------------------
    def _execution_plan(self, architecture: Architecture) -> tuple[list[list[_ActiveEdge]], list[int], int]:
        """Active edges per block, the stem inputs used, and the deepest output scale (cached per architecture)."""
        key = architecture.key()
        if self._plan_cache is not None and self._plan_cache[0] == key:
            return self._plan_cache[1:]
        if self.architecture is None:
            architecture.same_space(self.space)
            architecture.validate()
        space, blocks = self.space, []
        for block in range(space.num_blocks):
            active = []
            for edge in map(int, architecture.edges[block].nonzero()[0]):
                op = int(architecture.ops[block, edge])
                active.append(_ActiveEdge(block, f"{block}_{edge}", space.edge_source(edge), space.edge_target(edge),
                                          space.ops[op], self.reweight_offset(block, edge, op),
                                          space.node_channels[space.edge_target(edge)]))
            blocks.append(active)
        plan = (blocks, sorted(architecture.active_nodes(0)), self._deepest_output(architecture))
        self._plan_cache = (key, *plan)
        return plan

    def forward(
        self,
        x: torch.Tensor,
        architecture: Architecture | None = None,
        channel_weights: torch.Tensor | None = None,
        relaxation: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, out_channels, H, W, D)`` of ``architecture`` (the network's own one when derived).

        ``channel_weights``: optional ``(B, c_tot)`` or ``(c_tot,)`` multipliers of every operation's output.
        ``relaxation``: ``(path_probs, op_weights)`` runs DiNTS's relaxed super-net instead
        (see :meth:`forward_relaxed`).
        """
        if relaxation is not None:
            return self.forward_relaxed(x, *relaxation)
        if architecture is None:
            architecture = self.architecture
        if architecture is None:
            raise ValueError("the super-net needs an architecture to run: forward(x, architecture)")
        blocks, input_nodes, deepest = self._execution_plan(architecture)
        if channel_weights is not None and channel_weights.dim() == 1:
            channel_weights = channel_weights.unsqueeze(0)
        features: dict[int, torch.Tensor] = {d: self.stem_down[str(d)](x) for d in input_nodes}
        for active in blocks:
            merged: dict[int, torch.Tensor] = {}
            fan_in: dict[int, int] = {}
            for edge in active:
                y = self.cells[edge.key](features[edge.source], edge.op_name)
                if channel_weights is not None:
                    scale = channel_weights[:, edge.weight_offset : edge.weight_offset + edge.channels]
                    y = y * scale.reshape(scale.shape[0], edge.channels, 1, 1, 1).to(y.dtype)
                elif self.fixed_channel_weight is not None:
                    y = y * self.fixed_channel_weight
                merged[edge.target] = merged[edge.target] + y if edge.target in merged else y
                fan_in[edge.target] = fan_in.get(edge.target, 0) + 1
            features = self._merge(merged, fan_in)
        return self._head(features, deepest)

    def forward_relaxed(self, x: torch.Tensor, path_probs: torch.Tensor, op_weights: torch.Tensor) -> torch.Tensor:
        """DiNTS's continuous relaxation: every edge runs every operation (super-net only).

        Each operation's output is weighted by ``op_weights`` ``(L, E, O)`` and each edge's output by
        ``path_probs`` ``(L, E)``; with ``merge="sum"`` this is MONAI's ``TopologySearch`` forward.
        """
        if self.architecture is not None:
            raise ValueError("a derived network holds one architecture; relax the super-net instead")
        space = self.space
        features = {d: self.stem_down[str(d)](x) for d in range(space.num_depths)}
        for block in range(space.num_blocks):
            merged: dict[int, torch.Tensor] = {}
            fan_in: dict[int, int] = {}
            for edge in range(space.num_edges):
                cell = self.cells[f"{block}_{edge}"]
                hidden = cell.preprocess(features[space.edge_source(edge)])
                y = sum(cell.ops[name](hidden) * op_weights[block, edge, op] for op, name in enumerate(space.ops))
                y = y * path_probs[block, edge]
                target = space.edge_target(edge)
                merged[target] = merged[target] + y if target in merged else y
                fan_in[target] = fan_in.get(target, 0) + 1
            features = self._merge(merged, fan_in)
        return self._head(features, space.num_depths - 1)

    def _merge(self, merged: dict[int, torch.Tensor], fan_in: dict[int, int]) -> dict[int, torch.Tensor]:
        if self.merge == "mean":
            return {node: value / fan_in[node] if fan_in[node] > 1 else value for node, value in merged.items()}
        return merged

    def _head(self, features: dict[int, torch.Tensor], deepest: int) -> torch.Tensor:
        """The output stems: from the deepest output scale up, adding each finer scale's features, then the final
        layers (the light stem has no ``stem_up["0"]``: its final layers up-sample)."""
        out = features[deepest]
        for depth in range(deepest, -1, -1):
            if depth < deepest and depth in features:
                out = features[depth] + out
            if str(depth) in self.stem_up:
                out = self.stem_up[str(depth)](out)
        return self.stem_finals(out)


def derive(supernet: TopologyNet, architecture: Architecture) -> TopologyNet:
    """A standalone network holding only ``architecture``'s modules, with weights copied from ``supernet``.

    ``derive(supernet, arch)(x) == supernet(x, arch)``. (A freshly initialised network of one architecture
    is simply ``TopologyNet(space, in_channels, out_channels, arch)``.)
    """
    net = TopologyNet(supernet.space, supernet.in_channels, supernet.out_channels, architecture, supernet.merge,
                      supernet.fixed_channel_weight)
    source = supernet.state_dict()
    net.load_state_dict({key: source[key].clone() for key in net.state_dict()})
    return net.to(next(supernet.parameters()).device)

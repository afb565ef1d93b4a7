"""The network of a cell path (Thrifty NAS): a stem, ``L`` cells of one genotype each at its path's level, and
a head; relaxed (the lattice of every reachable path, the search network) or discrete (one path).

Layout (``widths[s]``: the channels of level ``s``, which has ``1 / 2**(s + 1)`` of the patch side)::

    stem        conv 3x3x3 + instance norm at full resolution                          (B, widths[0], *S)
    down        ReLU + conv 3x3x3 stride 2 + instance norm: level 0                 (B, widths[0], *S / 2)
    cell l      inputs: the previous layer's output and the one before it (level 0 for the first two),
                each resized to the cell's level (average pooling down, trilinear up: parameter-free; the
                cell's own 1x1x1 projections match the channels)            (B, widths[s], *S / 2**(s + 1))
    head        conv 1x1x1 of (the last cell up-sampled x2 + the stem)                (B, out_channels, *S)

With per-axis ``strides`` (``D`` entries: the ``down`` convolution's, then each level's below the one before;
a plan's pooling of thick slices), level ``s`` divides each axis by the product of the first ``s + 1`` strides,
and every resize above moves by those factors.

The stem halves the resolution before the path, as Auto-DeepLab's (by 4) and DiNTS's (by 2) do: a thrifty
network's cells are where its time and memory go, and full-resolution cells of the widths a parameter budget
buys cost ~8x the time and activations of half-resolution ones. The head's residual from the full-resolution
stem carries the detail back, the role of a U-Net's outermost skip.

Cells take two inputs as Auto-DeepLab's (``h[l-1]`` and ``h[l-2]``); the down- and up-sampling variants of the
one normal cell are the same genotype with resized inputs. In the relaxed lattice, node ``(l, s)`` sums, over
the allowed moves into it, the move's probability times a cell of its own on the move's source node and on node
``(l - 2, s)`` (or the nearest reachable level of layer ``l - 2``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from segnas.errors import SegnasInputError
from segnas.networks.cells import Cell
from segnas.data.plan import LevelStrides, check_level_strides, level_scale, strides_to_json
from segnas.networks.registry import OMIT_IF_NONE, NetworkSpec, check_searched_for, host_strides, register_network, spec_strides
from segnas.spaces.cells import CellArchitecture, CellSpace, Genotype
from segnas.strategies.thrifty.path import MOVE_NAMES, MOVES, move_mask, move_probabilities, path_problems, reachable


def resize(x: torch.Tensor, source: int, target: int, strides: LevelStrides | None = None) -> torch.Tensor:
    """``x`` at level ``source`` brought to level ``target`` (average pooling down, trilinear up; level ``-1`` is
    the full resolution, ``strides`` as :class:`CellPathNet`'s)."""
    if target == source:
        return x
    if strides is None:  # the isotropic path keeps its single-factor calls (and with them its exact numbers)
        if target > source:
            return F.avg_pool3d(x, 2 ** (target - source))
        return F.interpolate(x, scale_factor=2 ** (source - target), mode="trilinear", align_corners=False)
    low, high = sorted((source, target))
    factor = tuple(c // f for c, f in zip(level_scale(strides, high + 1), level_scale(strides, low + 1)))
    if target > source:
        return F.avg_pool3d(x, factor)
    return F.interpolate(x, scale_factor=tuple(float(f) for f in factor), mode="trilinear", align_corners=False)


class CellPathNet(nn.Module):
    """See the module docstring.

    Args:
        space: the cell space (2 inputs per cell).
        in_channels / out_channels: image channels and classes.
        widths: channels of each level (``D = len(widths)`` levels).
        layers: ``L``, cells on the path.
        path: the level of every layer, or ``None`` for the relaxed lattice of every reachable path.
        genotype: the one cell of every layer, or ``None`` for relaxed cells (the search network: on the
            lattice, or on a fixed ``path`` when only the cell is searched).
        partial: PC-DARTS's channel fraction on the relaxed cells' edges.
        strides: per level (``D``), the factor of each axis, or ``None``: 2 along every axis.

    ``forward(x, cells=None, moves=None)``: ``cells`` are :meth:`Cell.forward`'s keyword arguments for every
    relaxed cell (its operation weights or a sample), ``moves`` the ``(L, D, 3)`` move probabilities of the
    lattice (cells whose move has probability 0, the masked ones, are not run; every node a cell takes as its
    second input must be reached); a discrete network needs neither.
    """

    def __init__(self, space: CellSpace, in_channels: int, out_channels: int, widths: Sequence[int], layers: int,
                 path: Sequence[int] | None = None, genotype: Genotype | None = None, partial: int = 1,
                 strides: LevelStrides | None = None):
        super().__init__()
        if space.inputs != 2:
            raise ValueError(f"a cell path needs 2-input cells, got {space.inputs}")
        self.widths, self.layers = list(widths), layers
        self.strides = check_level_strides(strides, len(self.widths))
        down_stride = 2 if self.strides is None else self.strides[0]
        self.path = None if path is None else list(path)
        self.stem = nn.Sequential(nn.Conv3d(in_channels, self.widths[0], 3, padding=1, bias=False),
                                  nn.InstanceNorm3d(self.widths[0], affine=True))
        self.down = nn.Sequential(nn.ReLU(), nn.Conv3d(self.widths[0], self.widths[0], 3, stride=down_stride, padding=1,
                                                       bias=False), nn.InstanceNorm3d(self.widths[0], affine=True))
        self.cells = nn.ModuleDict()
        if self.path is not None:
            levels = [0, 0, *self.path]  # the stem stands in for layers -2 and -1
            for layer, level in enumerate(self.path):
                inputs = [self.widths[levels[layer + 1]], self.widths[levels[layer]]]
                self.cells[str(layer)] = Cell(space, inputs, self.widths[level], self.widths[level], genotype,
                                              partial, zero_output=False)
        else:
            mask = move_mask(layers, len(self.widths))
            for layer, source, k in zip(*mask.nonzero()):
                target = int(source + MOVES[k])
                inputs = [self.widths[source], self.widths[self.second_input(int(layer), target)]]
                self.cells[self.cell_name(int(layer), int(source), int(k))] = Cell(
                    space, inputs, self.widths[target], self.widths[target], None, partial, zero_output=False)
        self.head = nn.Conv3d(self.widths[0], out_channels, 1)

    @staticmethod
    def cell_name(layer: int, source: int, move: int) -> str:
        return f"{layer}_{source}_{MOVE_NAMES[move]}"

    def second_input(self, layer: int, level: int) -> int:
        """The level of the lattice node a relaxed cell at ``(layer, level)`` takes as its second input: the same
        level two layers back, or the nearest reachable one there (the stem's level 0 before layer 0)."""
        if layer < 2:
            return 0
        nodes = reachable(self.layers, len(self.widths))[layer - 2]
        return min((s for s in range(len(self.widths)) if nodes[s]), key=lambda s: (abs(s - level), s))

    def forward(self, x: torch.Tensor, cells: Mapping[str, Any] | None = None,
                moves: torch.Tensor | None = None) -> torch.Tensor:
        stem = self.stem(x)
        start = self.down(stem)
        kwargs = dict(cells or {})
        if self.path is not None:
            levels, outputs = [0, 0], [start, start]
            for layer, level in enumerate(self.path):
                inputs = [resize(outputs[-1], levels[-1], level, self.strides),
                          resize(outputs[-2], levels[-2], level, self.strides)]
                outputs.append(self.cells[str(layer)](inputs, **kwargs))
                levels.append(level)
            return self.output(outputs[-1], stem)
        if moves is None:
            raise ValueError("the relaxed lattice needs the move probabilities")
        before: dict[int, torch.Tensor] = {0: start}
        previous: dict[int, torch.Tensor] = {0: start}
        for layer in range(self.layers):
            current: dict[int, torch.Tensor] = {}
            for source, feature in previous.items():
                for k, move in enumerate(MOVES):
                    weight = moves[layer, source, k]
                    if not bool(weight != 0):
                        continue
                    target = source + move
                    second = self.second_input(layer, target)
                    inputs = [resize(feature, source, target, self.strides),
                              resize(before[second], second, target, self.strides)]
                    out = weight * self.cells[self.cell_name(layer, source, k)](inputs, **kwargs)
                    current[target] = current[target] + out if target in current else out
            before, previous = previous, current
        return self.output(previous[0], stem)

    def output(self, last: torch.Tensor, stem: torch.Tensor) -> torch.Tensor:
        """The head on the last cell (level 0) brought to full resolution, plus the stem."""
        return self.head(resize(last, 0, -1, self.strides) + stem)

    @property
    def axis_stride(self) -> list[int]:
        """Per axis, the multiple every patch side must be (the deepest level's reduction)."""
        deepest = len(self.widths) if self.path is None else max(self.path) + 1
        return list(level_scale(self.strides, deepest))




#: The cell name of a cell path's architecture: the one normal cell every layer runs.
NORMAL_CELL = "normal"
#: The ``host`` kind of a cell path's :class:`CellArchitecture`: its skeleton (widths and path).
CELL_PATH = "cell-path"


def cell_path_host(in_channels: int, out_channels: int, widths: Sequence[int], path: Sequence[int],
                   strides: LevelStrides | None = None) -> dict[str, Any]:
    """The ``host`` of a cell-path architecture (``strides`` written only where some axis is pooled fewer times)."""
    host = {"kind": CELL_PATH, "in_channels": in_channels, "out_channels": out_channels,
            "widths": [int(w) for w in widths], "path": [int(s) for s in path]}
    strides = check_level_strides(strides, len(widths))
    return host if strides is None else {**host, "strides": strides_to_json(strides)}


@register_network
@dataclass(frozen=True, eq=False)
class CellPathSpec(NetworkSpec):
    """One discrete cell along a path over resolutions (a :class:`CellArchitecture` placed ``cell-path``; the host
    holds the widths of the levels and the path)."""

    kind: ClassVar[str] = CELL_PATH
    summary: ClassVar[str] = "one searched cell along a searched path over resolutions (Thrifty NAS; segnas train --arch)"
    cell_placement: ClassVar[str | None] = "cell-path"

    architecture: CellArchitecture

    def __post_init__(self) -> None:
        arch = self.architecture
        if not isinstance(arch, CellArchitecture) or arch.space.placement != "cell-path":
            raise TypeError("a cell-path network spec needs a CellArchitecture of cells placed 'cell-path'")
        host, problems = arch.host, []
        widths = host.get("widths")
        if not isinstance(widths, list) or not widths or not all(isinstance(w, int) and w >= 1 for w in widths):
            problems.append(f"host field 'widths' must list positive channel counts, got {widths!r:.80}")
        else:
            problems += path_problems(host.get("path"), len(widths))
            host_strides(host, len(widths), problems)
        if NORMAL_CELL not in arch.cells:
            problems.append(f"it has no {NORMAL_CELL!r} cell")
        if problems:
            raise SegnasInputError("invalid cell path: " + "; ".join(problems))
        check_searched_for(host, self.in_channels, self.out_channels)

    def build(self) -> nn.Module:
        host = self.architecture.host
        return CellPathNet(self.architecture.space, self.in_channels, self.out_channels, host["widths"],
                           len(host["path"]), host["path"], self.architecture.cells[NORMAL_CELL],
                           strides=host.get("strides"))

    def stride(self) -> list[int]:
        host = self.architecture.host
        strides = check_level_strides(host.get("strides"), len(host["widths"]))
        return list(level_scale(strides, max(host["path"]) + 1))

    @classmethod
    def example(cls, in_channels: int = 1, out_channels: int = 3) -> "CellPathSpec":
        space = CellSpace(ops=("zero", "skip_connect", "sep_conv_3x3x3", "avg_pool_3x3x3"), nodes=2,
                          placement="cell-path")
        genotype = (((0, "sep_conv_3x3x3"), (1, "skip_connect")), ((1, "avg_pool_3x3x3"), (2, "sep_conv_3x3x3")))
        host = cell_path_host(in_channels, out_channels, [4, 8], [0, 1, 1, 0])
        return cls(in_channels, out_channels, CellArchitecture(space, host, {NORMAL_CELL: genotype}))


@register_network
@dataclass(frozen=True, eq=False)
class ThriftySearchNetSpec(NetworkSpec):
    """Thrifty NAS's search network: relaxed cells on the lattice of every path (or on a fixed ``path``)."""

    kind: ClassVar[str] = "thrifty-search-net"
    summary: ClassVar[str] = "Thrifty NAS's search network: relaxed cells on the lattice of cell paths"

    space: CellSpace
    widths: tuple[int, ...]
    layers: int
    partial: int = 1
    path: tuple[int, ...] | None = None
    strides: LevelStrides | None = field(default=None, metadata={OMIT_IF_NONE: True})

    def __post_init__(self) -> None:
        object.__setattr__(self, "strides", spec_strides(self.strides, len(self.widths), self.kind))

    def build(self) -> nn.Module:
        return CellPathNet(self.space, self.in_channels, self.out_channels, self.widths, self.layers, self.path,
                           None, self.partial, self.strides)

    def stride(self) -> list[int]:
        return list(level_scale(self.strides, len(self.widths)))

    @classmethod
    def example(cls, in_channels: int = 1, out_channels: int = 3) -> "ThriftySearchNetSpec":
        space = CellPathSpec.example().architecture.space
        return cls(in_channels, out_channels, space, (4, 8), 3)

    def forward_kwargs(self) -> dict[str, Any]:
        """The relaxation at uniform weights."""
        uniform = torch.full((self.space.num_edges, self.space.num_ops), 1 / self.space.num_ops)
        moves = move_probabilities(torch.zeros(self.layers, len(self.widths), len(MOVES)))
        return {"cells": {"op_weights": uniform}, "moves": moves}

"""A U-Net every layer of which is a cell (Scalable NAS, Kim et al. 2019): encoder-normal and reduction cells
down, expansion and decoder-normal cells up, one genotype per cell type.

Layout with ``levels = L`` and ``channels = C`` (level ``l`` has ``C * 2**l`` channels and ``1 / 2**l`` of the
patch side; inputs listed as DARTS lists them, the previous layer first)::

    stem           conv 3x3x3 + instance norm                                          (B, C, *S)
    encoder 0      (stem, stem)
    reduction l    (encoder l-1, the layer before it), edges from both inputs stride 2      l = 1 .. L-1
    encoder l      (reduction l, encoder l-1 projected with stride 2)
    expansion l    (decoder l+1 or the deepest encoder, up-sampled x2; encoder l = the skip)  l = L-2 .. 0
    decoder l      (expansion l, encoder l = the skip again)
    head           conv 1x1x1                                                  (B, out_channels, *S)

Each cell's nodes have its level's channels; its output is a 1x1x1 projection of the concatenated nodes. The
total stride is ``2**(L-1)``; with per-axis ``strides`` (a plan's pooling of thick slices), level ``l`` divides
each axis by the product of the first ``l`` strides, and the reduction, ``down`` and expansion resampling into
and out of level ``l`` use stride ``l - 1``'s factors. ``forward(x, cells=None)``: ``cells`` maps a cell type to the keyword arguments of
:meth:`segnas.networks.cells.Cell.forward` for every cell of that type (a relaxed network's weights or sample);
a discrete network needs none.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from segnas.data.plan import LevelStrides, check_level_strides, level_scale
from segnas.networks.cells import Cell
from segnas.spaces.cells import CellSpace, Genotype


def cell_unet_layers(levels: int) -> list[tuple[str, str, int]]:
    """``(layer name, cell type, level)`` of every cell, in forward order."""
    layers = [("encoder0", "encoder", 0)]
    for level in range(1, levels):
        layers += [(f"reduction{level}", "reduction", level), (f"encoder{level}", "encoder", level)]
    for level in range(levels - 2, -1, -1):
        layers += [(f"expansion{level}", "expansion", level), (f"decoder{level}", "decoder", level)]
    return layers


class CellUNet(nn.Module):
    """See the module docstring.

    Args:
        space: the cell space (2 inputs per cell).
        in_channels / out_channels: image channels and classes.
        channels: the first level's channels ``C``.
        levels: resolution levels ``L`` (>= 2).
        genotypes: one genotype per cell type (:data:`UNET_CELL_TYPES`), or ``None``: relaxed cells.
        strides: per down-sampling (``L - 1``), the factor of each axis, or ``None``: 2 along every axis.
    """

    def __init__(self, space: CellSpace, in_channels: int, out_channels: int, channels: int, levels: int,
                 genotypes: Mapping[str, Genotype] | None = None, strides: LevelStrides | None = None):
        super().__init__()
        if space.inputs != 2 or levels < 2:
            raise ValueError(f"a U-Net of cells needs 2-input cells and >= 2 levels, got {space.inputs} and {levels}")
        self.levels = levels
        self.strides = check_level_strides(strides, levels - 1)
        factors = [(2, 2, 2) if self.strides is None else self.strides[level] for level in range(levels - 1)]
        width = [channels * 2**level for level in range(levels)]
        self.stem = nn.Sequential(nn.Conv3d(in_channels, channels, 3, padding=1, bias=False),
                                  nn.InstanceNorm3d(channels, affine=True))
        self.layers = cell_unet_layers(levels)
        self.cells = nn.ModuleDict()
        for name, cell_type, level in self.layers:
            scale = factors[level - 1] if level else (2, 2, 2)  # into level l from level l - 1
            if cell_type == "encoder":
                inputs = [width[level], width[level - 1] if level else channels]
                resample = ("same", "down" if level else "same")
            elif cell_type == "reduction":
                inputs, resample = [width[level - 1], width[level - 1]], ("strided", "strided")
            elif cell_type == "expansion":
                inputs, resample = [width[level + 1], width[level]], ("up", "same")
                scale = factors[level]  # from level l + 1 up to level l
            else:
                inputs, resample = [width[level], width[level]], ("same", "same")
            genotype = None if genotypes is None else genotypes[cell_type]
            self.cells[name] = Cell(space, inputs, width[level], width[level], genotype, zero_output=False,
                                    resample=resample, scale=scale)
        self.head = nn.Conv3d(channels, out_channels, 1)

    @property
    def axis_stride(self) -> list[int]:
        """Per axis, the multiple every patch side must be."""
        return list(level_scale(self.strides, self.levels - 1))

    def forward(self, x: torch.Tensor, cells: Mapping[str, dict[str, Any]] | None = None) -> torch.Tensor:
        cells = cells or {}
        stem = self.stem(x)
        previous, before = stem, stem
        skips: dict[int, torch.Tensor] = {}
        for name, cell_type, level in self.layers:
            kwargs = cells.get(cell_type, {})
            if cell_type in ("encoder", "reduction"):
                out = self.cells[name]([previous, before], **kwargs)
                previous, before = out, previous
                if cell_type == "encoder":
                    skips[level] = out
            else:  # expansion (previous: the deeper layer) and decoder cells both take the level's skip
                previous = self.cells[name]([previous, skips[level]], **kwargs)
        return self.head(previous)


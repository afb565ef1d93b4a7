"""Implanting cells into the skip connections of a U-shaped host network (Implantable Adaptive Cells).

At every encoder-decoder skip connection the host passes the encoder's feature map ``s (B, C_s, *S)`` to the
decoder, which joins it with its own up-sampled feature map ``u (B, C_u, *S)``. An implanted cell takes both
(the IAC paper's cells see the skip feature and the decoder's context) and the decoder receives
``s + cell(s, u)`` instead of ``s``: same shape, so the host's decoder is unchanged, and with the cell's output
convolution starting at zero the implanted network starts as exactly the host.

Hosts: MONAI's ``UNet`` (each ``SkipConnection``) and ``DynUNet`` (each up-sampling block). The wrappers keep
the host's submodule names, so a host's trained weights load into the implanted network unchanged
(``load_state_dict(host_state, strict=False)`` leaves only the cells new).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from monai.networks.blocks.dynunet_block import UnetUpBlock
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import DynUNet, UNet

#: Builds the cell of one skip connection from (skip channels C_s, decoder channels C_u).
CellFactory = Callable[[int, int], nn.Module]


class CellWeights:
    """The relaxed cells' weights for the current forward pass, shared by every implanted site (not a
    module: the weights are the search's, not the network's). ``value`` is ``(op_weights, edge_weights)``."""

    def __init__(self) -> None:
        self.value: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def arguments(self) -> tuple[torch.Tensor | None, ...]:
        return self.value if self.value is not None else ()


class ImplantedSkipConnection(nn.Module):
    """MONAI UNet's ``SkipConnection`` (``cat([x, submodule(x)])``) with a cell on the skip ``x``."""

    def __init__(self, original: SkipConnection, cell: nn.Module, weights: CellWeights):
        super().__init__()
        if original.mode != "cat":
            raise ValueError(f"only concatenating skip connections take cells, not {original.mode!r}")
        self.submodule, self.dim, self.cell, self._weights = original.submodule, original.dim, cell, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.submodule(x)
        return torch.cat([x + self.cell([x, up], *self._weights.arguments()), up], dim=self.dim)


class ImplantedUpBlock(nn.Module):
    """DynUNet's ``UnetUpBlock`` (transposed convolution, ``cat((up, skip))``, convolutions) with a cell on the
    skip."""

    def __init__(self, original: UnetUpBlock, cell: nn.Module, weights: CellWeights):
        super().__init__()
        self.transp_conv, self.conv_block, self.cell, self._weights = (original.transp_conv, original.conv_block,
                                                                      cell, weights)

    def forward(self, inp: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.transp_conv(inp)
        skip = skip + self.cell([skip, up], *self._weights.arguments())
        return self.conv_block(torch.cat((up, skip), dim=1))


def _sites(host: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, attribute, original)`` of every skip connection of a supported host, outermost first."""
    if isinstance(host, UNet):
        return [(parent, name, child) for parent in host.modules() for name, child in parent.named_children()
                if isinstance(child, SkipConnection)]
    if isinstance(host, DynUNet):
        return [(layer, "upsample", layer.upsample) for layer in host.modules()
                if type(layer).__name__ == "DynUNetSkipLayer"]
    raise TypeError(f"cells can be implanted into MONAI UNet and DynUNet hosts, not {type(host).__name__}")


def skip_channels(host: nn.Module, in_channels: int, patch: list[int]) -> list[tuple[int, int]]:
    """``(C_s, C_u)`` at every site of ``host``, outermost first, read from one forward pass on zeros of
    ``patch`` (a patch the host accepts)."""
    found: list[tuple[int, int]] = []
    handles = []
    for _, _, original in _sites(host):
        if isinstance(original, SkipConnection):
            def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                found.append((args[0].shape[1], output.shape[1] - args[0].shape[1]))
        else:
            def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                found.append((args[1].shape[1], module.transp_conv(args[0]).shape[1]))
        handles.append(original.register_forward_hook(record))
    was_training = host.training
    try:
        with torch.no_grad():
            host.eval()(torch.zeros(1, in_channels, *patch))
    finally:
        host.train(was_training)
        for handle in handles:
            handle.remove()
    # hooks fire innermost first (a skip connection finishes after the ones inside it); sites are outermost first
    return found[::-1]


def implant(host: nn.Module, channels: list[tuple[int, int]], make_cell: CellFactory) -> tuple[nn.ModuleList,
                                                                                                CellWeights]:
    """Put ``make_cell(C_s, C_u)`` into every skip connection of ``host`` (in place).

    Returns the cells (outermost first) and the :class:`CellWeights` their relaxed forward passes read.
    """
    weights = CellWeights()
    cells = []
    for (parent, name, original), (c_skip, c_up) in zip(_sites(host), channels, strict=True):
        cell = make_cell(c_skip, c_up)
        wrapper = ImplantedSkipConnection(original, cell, weights) if isinstance(original, SkipConnection) \
            else ImplantedUpBlock(original, cell, weights)
        setattr(parent, name, wrapper)
        cells.append(cell)
    return nn.ModuleList(cells), weights


class ImplantedNet(nn.Module):
    """A host network with cells in its skip connections.

    ``forward(x (B, C, *S), cell_weights=None) -> (B, K, *S)``: ``cell_weights`` ``(op_weights (E, O),
    edge_weights (E,) or None)`` drive relaxed cells for this pass; discrete cells need none.
    """

    def __init__(self, host: nn.Module, channels: list[tuple[int, int]], make_cell: CellFactory):
        super().__init__()
        cells, self._weights = implant(host, channels, make_cell)
        self.host = host
        self._cells = list(cells)  # the cells are registered inside the host; this list only reaches them

    @property
    def cells(self) -> list[nn.Module]:
        return self._cells

    def forward(self, x: torch.Tensor, cell_weights: tuple[torch.Tensor, torch.Tensor | None] | None = None
                ) -> torch.Tensor:
        self._weights.value = cell_weights
        try:
            return self.host(x)
        finally:
            self._weights.value = None

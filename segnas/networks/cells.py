"""Modules of the cell space (:mod:`segnas.spaces.cells`): the 3D operations, the mixed edge of the
continuous relaxation (with PC-DARTS's partial channels) and the cell itself, relaxed or discrete.

Shapes: every operation maps ``(B, C, *S) -> (B, C, *S)`` (``(B, C, *S/stride)`` with a stride: the edges a
reduction cell takes from its inputs; a stride is 2, or per axis ``(2, 2, 1)`` where thick slices are not
pooled); a cell maps its inputs ``(B, C_i, *S_i)`` to ``(B, C_out, *S)``. Normalisation is instance norm (3D segmentation's choice at batch 2), without affine
parameters on the relaxed edges (DARTS: learnable scales there would let the weights undo the architecture
weights) and with them in discrete cells.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from segnas.spaces.cells import CellSpace, Genotype

#: A stride: one factor for every axis, or one per axis.
Stride = int | tuple[int, int, int]


def axis_factors(stride: Stride | Sequence[int]) -> tuple[int, int, int]:
    """``stride`` as one factor per axis."""
    if isinstance(stride, int):
        return (stride, stride, stride)
    first, second, third = (int(f) for f in stride)
    return (first, second, third)


class Zero(nn.Module):
    """The ``zero`` operation: no signal (keeps device and dtype; subsamples with its stride)."""

    def __init__(self, stride: Stride = 1):
        super().__init__()
        self.stride = axis_factors(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second, third = self.stride
        return x[:, :, ::first, ::second, ::third].mul(0.0)


class AvgPool(nn.Module):
    """3x3x3 average pooling, borders padded by replication. (``nn.AvgPool3d`` with zero padding refuses sides
    shorter than its kernel on CPU, which the deepest skips of small patches have; replication keeps every side
    >= 3 and, like DARTS's ``count_include_pad=False``, lets no zeros into border averages.)"""

    def __init__(self, stride: Stride = 1):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(F.pad(x, (1,) * 6, mode="replicate"), 3, stride=self.stride)


def _on_channels_last(x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``compute(x)`` run on ``channels_last_3d`` memory on the CPU, returned in ``x``'s memory format (so a network
    kept channels-last pays no copy, and a contiguous one pays two cheap ones around the operation)."""
    if x.device.type != "cpu" or x.is_contiguous(memory_format=torch.channels_last_3d):
        return compute(x)
    return compute(x.contiguous(memory_format=torch.channels_last_3d)).contiguous()


class DepthwiseConv3d(nn.Conv3d):
    """A depthwise (``groups = channels``) 3D convolution computed channels-last on the CPU where it trains.

    Why: oneDNN's depthwise 3D backward is fast on the channels-last layout and slow on PyTorch's default one:
    forward + backward at batch 4, 3x3x3, measured on the 2 AVX2 cores, 8 channels at 48x64x48 86 ms against
    302 ms, 16 at 24x32x24 40 against 75, 64 at 12x16x12 21 against 35, conversions included (docs/benchmarks.md,
    "Speed of the networks"). A forward alone (no gradients: validation, prediction, export) is as fast on the
    default layout (19 channels at 24x32x24: 3.0 ms against 4.3 with the conversions), so it stays there. Same
    parameters and state dict as :class:`torch.nn.Conv3d`; on CUDA it is one.
    """

    def __init__(self, channels: int, kernel: int, stride: Stride = 1, padding: int = 0, dilation: int = 1):
        super().__init__(channels, channels, kernel, stride=stride, padding=padding, dilation=dilation,
                         groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._conv_forward(x, self.weight, self.bias)
        return _on_channels_last(x, lambda inner: self._conv_forward(inner, self.weight, self.bias))


class MaxPool3d(nn.MaxPool3d):
    """3x3x3 max pooling computed channels-last on the CPU (1.3-3x faster forward + backward, 3-4x faster forward
    alone, than on the default layout at 8-16 channels on the 2 AVX2 cores; the same result bit for bit: a
    maximum does not round)."""

    def __init__(self, stride: Stride = 1):
        super().__init__(3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _on_channels_last(x, lambda inner: F.max_pool3d(inner, self.kernel_size, self.stride, self.padding))


def factorized_reduce(channels: int, affine: bool, stride: Stride = 2) -> nn.Module:
    """The identity of a strided edge (DARTS's ``FactorizedReduce``, as one strided 1x1x1 convolution)."""
    return nn.Sequential(nn.ReLU(), nn.Conv3d(channels, channels, 1, stride=stride, bias=False),
                         nn.InstanceNorm3d(channels, affine=affine))


def _relu_conv_norm(channels: int, kernel: int, affine: bool, stride: Stride = 1) -> list[nn.Module]:
    return [nn.ReLU(), nn.Conv3d(channels, channels, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False),
            nn.InstanceNorm3d(channels, affine=affine)]


def _separable(channels: int, kernel: int, affine: bool, dilation: int = 1, stride: Stride = 1) -> list[nn.Module]:
    """Depthwise ``kernel`` convolution then pointwise, then instance norm (DARTS's ``SepConv`` half)."""
    padding = dilation * (kernel - 1) // 2
    return [nn.ReLU(), DepthwiseConv3d(channels, kernel, stride=stride, padding=padding, dilation=dilation),
            nn.Conv3d(channels, channels, 1, bias=False),
            nn.InstanceNorm3d(channels, affine=affine)]


def make_op(name: str, channels: int, affine: bool, stride: Stride = 1) -> nn.Module:
    """One operation of :data:`segnas.spaces.cells.CELL_OPS` on ``channels`` channels; a ``stride`` of 2 (or per
    axis) divides the sides (DARTS's reduction edges: the first convolution strides, the identity is a strided
    1x1x1)."""
    if name == "zero":
        return Zero(stride)
    if name == "skip_connect":
        return nn.Identity() if max(axis_factors(stride)) == 1 else factorized_reduce(channels, affine, stride)
    if name == "max_pool_3x3x3":
        return MaxPool3d(stride)
    if name == "avg_pool_3x3x3":
        return AvgPool(stride)
    if name == "conv_3x3x3":
        return nn.Sequential(*_relu_conv_norm(channels, 3, affine, stride))
    if name in ("sep_conv_3x3x3", "sep_conv_5x5x5"):  # DARTS applies the separable block twice
        kernel = 3 if name == "sep_conv_3x3x3" else 5
        return nn.Sequential(*_separable(channels, kernel, affine, stride=stride),
                             *_separable(channels, kernel, affine))
    if name == "dil_conv_3x3x3":
        return nn.Sequential(*_separable(channels, 3, affine, dilation=2, stride=stride))
    raise ValueError(f"unknown cell operation {name!r}")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups of ``(B, C, *S)`` (PC-DARTS: the next edge sees other channels)."""
    if groups == 1:
        return x
    batch, channels = x.shape[:2]
    return x.reshape(batch, groups, channels // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class MixedEdge(nn.Module):
    """One relaxed edge: every operation, weighted (DARTS), on ``1/partial`` of the channels (PC-DARTS).

    ``forward(x (B, C, *S), weights (O,)) -> (B, C, *S)``. Operations whose weight is exactly 0 (pruned) are
    not computed. With ``partial = K > 1`` the first ``C/K`` channels go through the operations, the rest
    pass unchanged, and the channels are shuffled in ``K`` groups.
    """

    def __init__(self, space: CellSpace, channels: int, partial: int = 1, stride: Stride = 1):
        super().__init__()
        if channels % partial:
            raise ValueError(f"{channels} channels cannot be split in {partial} partial-channel groups")
        if partial > 1 and max(axis_factors(stride)) > 1:
            raise ValueError("partial channels pass the rest unchanged, which a strided edge cannot")
        self.partial = partial
        self.ops = nn.ModuleList(make_op(op, channels // partial, affine=False, stride=stride) for op in space.ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self._on_partial_channels(x, lambda active: sum(w * op(active) for w, op in zip(weights, self.ops)
                                                               if bool(w != 0)))

    def run_one(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Operation ``index`` alone on the edge's channels (a sampled or fixed edge of a relaxed cell)."""
        return self._on_partial_channels(x, self.ops[index])

    def _on_partial_channels(self, x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        part = x.shape[1] // self.partial
        out = compute(x[:, :part])
        if self.partial == 1:
            return out
        return channel_shuffle(torch.cat([out, x[:, part:]], dim=1), self.partial)


def genotype_sample(space: CellSpace, genotype: Genotype) -> tuple[list[int], torch.Tensor]:
    """A discrete cell as a sample of a relaxed :class:`Cell` (``ops`` per edge, ``-1`` off; gates of 1): how a
    search network runs a discrete cell on its own weights."""
    ops = [-1] * space.num_edges
    for node, kept in enumerate(genotype):
        for source, op in kept:
            ops[space.node_edges(node)[source]] = space.ops.index(op)
    return ops, torch.ones(space.num_edges)


class Cell(nn.Module):
    """A cell of ``space``: relaxed (``genotype=None``, every candidate edge mixed) or discrete.

    Args:
        space: the cell space.
        in_channels: channels of each input, in input order.
        channels: channels of the cell's nodes (each input is projected to it by ReLU-conv1x1-norm).
        out_channels: channels of the output (a 1x1x1 convolution of the concatenated or summed nodes).
        genotype: the discrete cell, or ``None`` for the relaxed one.
        partial: PC-DARTS's channel fraction ``1/partial`` on relaxed edges.
        zero_output: start the output convolution at zero, so that an implanted cell's residual starts as
            the identity and the host network computes exactly what it computed before.
        resample: per input: ``same``; ``strided`` (its edges have stride ``scale``: a reduction cell's inputs);
            ``down`` (projected with stride ``scale``: DARTS's preprocessing of an input one reduction behind) or
            ``up`` (up-sampled by ``scale``, trilinear, after its projection: an expansion cell's deeper input).
            Default ``same``.
        scale: per axis, the factor of the ``strided``, ``down`` and ``up`` inputs: 2 everywhere, or the level's
            pooling where thick slices are pooled fewer times (``(2, 2, 1)``).

    ``forward(inputs, op_weights (E, O) = None, edge_weights (E,) = None, sample = None) -> (B, out_channels,
    *S)``. A relaxed cell runs every operation weighted by ``op_weights`` or, given ``sample = (ops, gates)``,
    one operation per edge: edge ``e`` runs operation ``ops[e]`` (``-1``: the edge is off) and is multiplied by
    ``gates[e]`` (the straight-through gate of stochastic sampling: 1 forward, a gradient to the logits back).
    A discrete cell ignores all three.
    """

    def __init__(self, space: CellSpace, in_channels: Sequence[int], channels: int, out_channels: int,
                 genotype: Genotype | None = None, partial: int = 1, zero_output: bool = True,
                 resample: Sequence[str] | None = None, scale: Stride = 2):
        super().__init__()
        if len(in_channels) != space.inputs:
            raise ValueError(f"the cell space has {space.inputs} inputs, got channels for {len(in_channels)}")
        self.space, self.genotype = space, genotype
        self.resample = tuple(resample or ("same",) * space.inputs)
        if len(self.resample) != space.inputs or set(self.resample) - {"same", "strided", "down", "up"}:
            raise ValueError(f"resample needs one of same/strided/down/up per input, got {self.resample}")
        affine = genotype is not None
        self.scale = axis_factors(scale)
        self.preprocess = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv3d(c, channels, 1, stride=self.scale if mode == "down" else 1,
                                               bias=False),
                          nn.InstanceNorm3d(channels, affine=True))
            for c, mode in zip(in_channels, self.resample))

        def stride(source: int) -> Stride:
            return self.scale if source < space.inputs and self.resample[source] == "strided" else 1

        if genotype is None:
            self.edges = nn.ModuleList(MixedEdge(space, channels, partial, stride(source)) for _, source in space.edges)
        else:
            self.edges = nn.ModuleList(make_op(op, channels, affine, stride(source))
                                       for kept in genotype for source, op in kept)
        width = channels * space.nodes if space.output == "concat" else channels
        self.output = nn.Conv3d(width, out_channels, 1, bias=False)
        if zero_output:
            nn.init.zeros_(self.output.weight)

    def forward(self, inputs: Sequence[torch.Tensor], op_weights: torch.Tensor | None = None,
                edge_weights: torch.Tensor | None = None,
                sample: tuple[Sequence[int], torch.Tensor] | None = None) -> torch.Tensor:
        states = [pre(x) for pre, x in zip(self.preprocess, inputs)]
        states = [F.interpolate(x, scale_factor=tuple(float(f) for f in self.scale), mode="trilinear",
                                align_corners=False) if mode == "up" else x for x, mode in zip(states, self.resample)]
        if self.genotype is None and sample is not None:
            ops, gates = sample
            for node in range(self.space.nodes):
                total = 0
                for edge in self.space.node_edges(node):
                    if ops[edge] >= 0:
                        out = self.edges[edge].run_one(states[self.space.edges[edge][1]], ops[edge])
                        total = total + gates[edge] * out
                states.append(total)
        elif self.genotype is None:
            if op_weights is None:
                raise ValueError("a relaxed cell needs op_weights or a sample")
            for node in range(self.space.nodes):
                total = 0
                for edge in self.space.node_edges(node):
                    if edge_weights is not None and bool(edge_weights[edge] == 0):
                        continue
                    out = self.edges[edge](states[self.space.edges[edge][1]], op_weights[edge])
                    total = total + (out if edge_weights is None else edge_weights[edge] * out)
                states.append(total)
        else:
            index = 0
            for kept in self.genotype:
                total = 0
                for source, _ in kept:
                    total = total + self.edges[index](states[source])
                    index += 1
                states.append(total)
        nodes = states[self.space.inputs:]
        merged = torch.cat(nodes, dim=1) if self.space.output == "concat" else sum(nodes)
        return self.output(merged)

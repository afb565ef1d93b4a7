"""Hand-designed architectures written in the topology space, for comparisons in the same pipeline."""

from __future__ import annotations

import numpy as np

from segnas.errors import SegnasInputError
from segnas.spaces.architecture import Architecture
from segnas.spaces.topology import TopologySpace


def _edge_index(space: TopologySpace, source: int, target: int) -> int:
    for edge in range(space.num_edges):
        if space.edge_source(edge) == source and space.edge_target(edge) == target:
            return edge
    raise ValueError(f"no edge {source}->{target}")


def unet_architecture(space: TopologySpace) -> Architecture:
    """A U-Net written as a path through the grid.

    The main path goes down one scale per block to the coarsest scale, stays there, then comes back up,
    with one 3x3x3 convolution block after every up-sampling (the decoder's convolutions). Every scale
    the encoder has left stays alive through ``skip_connect`` edges until the decoder returns to it and
    the two are summed: the U-Net's skip connections. With L=12, D=4 the moves are
    ``down down down stay stay stay up stay up stay up stay``.
    """
    depth_moves = space.num_depths - 1
    spare = space.num_blocks - 2 * depth_moves
    if spare < 0:
        raise SegnasInputError(
            f"the U-Net preset needs at least 2 x (num_depths - 1) = {2 * depth_moves} blocks; "
            f"the space has {space.num_blocks}")
    decoder_convs = min(depth_moves, spare)
    moves = ["down"] * depth_moves + ["stay"] * (spare - decoder_convs)
    for up in range(depth_moves):
        moves += ["up"] + (["stay"] if up < decoder_convs else [])
    conv = space.ops.index("conv_3x3x3")
    skip = space.ops.index("skip_connect")
    edges = np.zeros((space.num_blocks, space.num_edges), dtype=bool)
    ops = np.full(edges.shape, -1, dtype=np.int64)

    def activate(block: int, source: int, target: int, op: int) -> None:
        edge = _edge_index(space, source, target)
        edges[block, edge], ops[block, edge] = True, op

    current = 0
    for block, move in enumerate(moves):
        for kept in range(current):
            activate(block, kept, kept, skip)
        if move == "down":
            activate(block, current, current, conv)
            activate(block, current, current + 1, conv)
            current += 1
        elif move == "up":
            activate(block, current, current - 1, conv)
            current -= 1
        else:
            activate(block, current, current, conv)
    return Architecture(space, edges, ops, {"strategy": "preset", "preset": "unet"}).validate()


PRESETS = {"unet": unet_architecture}


def extreme_architectures(space: TopologySpace) -> tuple[Architecture, Architecture]:
    """(smallest, largest): a chain of skip edges at the coarsest scale; every edge with a 3x3x3 conv."""
    coarsest = next(e for e in range(space.num_edges)
                    if space.edge_source(e) == space.edge_target(e) == space.num_depths - 1)
    skip, conv = space.ops.index("skip_connect"), space.ops.index("conv_3x3x3")
    small_edges = np.zeros((space.num_blocks, space.num_edges), dtype=bool)
    small_edges[:, coarsest] = True
    small = Architecture(space, small_edges, np.where(small_edges, skip, -1), {"preset": "smallest"})
    large_edges = np.ones_like(small_edges)
    large = Architecture(space, large_edges, np.full(large_edges.shape, conv), {"preset": "largest"})
    return small.validate(), large.validate()

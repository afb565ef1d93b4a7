"""Pictures of architectures: the topology space in the style of the HyperSegNAS paper's Figures 1 and 5, and
cells as small graphs (:func:`draw_cells`).

Columns are grid columns (stem inputs, then the output of each block), rows are scales (finest on top).
Active nodes are filled; each active edge is a line from its source node to its target node, coloured
by its operation; the stem enters from the left and the output head leaves at the right.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: segnas draws to files only
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from segnas.spaces.architecture import Architecture  # noqa: E402
from segnas.spaces.cells import CellArchitecture  # noqa: E402
from segnas.utils.files import atomic_write  # noqa: E402

OP_STYLE = {
    "skip_connect": {"color": "#8c8c8c", "linestyle": "--", "linewidth": 1.4},
    "conv_3x3x3": {"color": "#d62728", "linestyle": "-", "linewidth": 2.4},
    "conv_3x3x1": {"color": "#1f77b4", "linestyle": "-", "linewidth": 2.0},
    "conv_3x1x3": {"color": "#2ca02c", "linestyle": "-", "linewidth": 2.0},
    "conv_1x3x3": {"color": "#9467bd", "linestyle": "-", "linewidth": 2.0},
}


def draw_architecture(arch: "Architecture | CellArchitecture", path: str | Path, title: str | None = None) -> Path:
    """Draw ``arch`` (either space kind) to a PNG at ``path`` (written atomically) and return the path."""
    if isinstance(arch, CellArchitecture):
        return draw_cells(arch, path, title)
    space = arch.space
    columns, depths = space.num_blocks + 1, space.num_depths
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * columns, 1.2 + 0.8 * depths))
    node_a = arch.node_activation()
    for block in range(space.num_blocks):
        for edge in map(int, arch.edges[block].nonzero()[0]):
            op = space.ops[int(arch.ops[block, edge])]
            ax.plot([block, block + 1], [space.edge_source(edge), space.edge_target(edge)], zorder=1,
                    **OP_STYLE[op])
    for column in range(columns):
        for depth in range(depths):
            active = bool(node_a[column, depth])
            ax.scatter(column, depth, s=110 if active else 40, zorder=2, edgecolors="black", linewidths=0.8,
                       c="#ffbf00" if active else "white")
    for depth in map(int, node_a[0].nonzero()[0]):
        ax.annotate("", xy=(0, depth), xytext=(-0.6, depth), arrowprops={"arrowstyle": "->", "color": "black"})
    ax.annotate("", xy=(columns - 1 + 0.55, 0), xytext=(columns - 1 + 0.1, 0),
                arrowprops={"arrowstyle": "->", "color": "black"})
    ax.text(columns - 1 + 0.6, 0, "output", va="center", fontsize=8)
    ax.set_xticks(range(columns), ["in"] + [str(b) for b in range(space.num_blocks)])
    ax.set_yticks(range(depths), [f"1/{2 ** (d + int(space.stem_downsample))}\n{space.node_channels[d]} ch"
                                  for d in range(depths)])
    ax.set_xlim(-0.8, columns + 0.5)
    ax.set_ylim(depths - 0.5, -0.5)
    ax.set_xlabel("block")
    ax.set_ylabel("scale")
    handles = [Line2D([0], [0], label=op, **OP_STYLE[op]) for op in space.ops]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=len(handles), frameon=False,
              fontsize=8)
    ax.set_title(title or f"architecture {arch.key()}", fontsize=10)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    fig.tight_layout()
    target = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return target


def draw_cells(arch: CellArchitecture, path: str | Path, title: str | None = None) -> Path:
    """One panel per cell: inputs on the left, intermediate nodes left to right, the output on the right;
    each kept edge is an arc labelled with its operation."""
    space = arch.space
    fig, axes = plt.subplots(1, len(arch.cells), figsize=(2.2 + 1.6 * (space.nodes + 1), 2.6 + 0.4 * space.inputs),
                             squeeze=False)
    for ax, (name, genotype) in zip(axes[0], arch.cells.items()):
        position = {s: (0.0, float(s)) for s in range(space.inputs)}
        position.update({space.inputs + n: (1.0 + n, (space.inputs - 1) / 2 + 0.45 * (-1) ** n)
                         for n in range(space.nodes)})
        output = (1.0 + space.nodes, (space.inputs - 1) / 2)
        for node, kept in enumerate(genotype):
            target = position[space.inputs + node]
            for source, op in kept:
                start = position[source]
                bend = 0.25 * (1 if source % 2 else -1)
                ax.annotate("", xy=target, xytext=start, arrowprops={
                    "arrowstyle": "->", "color": "#444444", "connectionstyle": f"arc3,rad={bend}"})
                middle = ((start[0] + target[0]) / 2, (start[1] + target[1]) / 2 + bend * 0.6)
                ax.text(*middle, op.replace("_", " "), fontsize=7, ha="center", va="center",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
        for node in range(space.nodes):
            ax.annotate("", xy=output, xytext=position[space.inputs + node],
                        arrowprops={"arrowstyle": "->", "color": "#bbbbbb", "linestyle": ":"})
        for index, (x, y) in position.items():
            ax.scatter(x, y, s=260, c="#ffbf00" if index >= space.inputs else "#9ecae1", edgecolors="black", zorder=3)
            ax.text(x, y, space.source_name(index), fontsize=7, ha="center", va="center", zorder=4)
        ax.scatter(*output, s=260, c="white", edgecolors="black", zorder=3)
        ax.text(*output, space.output, fontsize=6, ha="center", va="center", zorder=4)
        inputs = {"skip-connections": "in0 = encoder skip, in1 = decoder up-sampled; ",
                  "cell-path": "in0 = previous layer, in1 = the one before, resized; "}.get(space.placement, "")
        ax.set_title(f"cell '{name}' ({inputs}output {space.output} -> 1x1x1 conv)", fontsize=8)
        ax.set_xlim(-0.6, output[0] + 0.6)
        ax.set_ylim(-0.8, space.inputs)
        ax.axis("off")
    fig.suptitle(title or f"cells {arch.key()}", fontsize=10)
    return _save(fig, path)

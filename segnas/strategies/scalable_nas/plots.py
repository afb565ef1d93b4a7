"""Scalable NAS's picture: each cell type's final operation probabilities per candidate edge, the derived
cell's kept edges framed, so a reader sees how decided the search was and what it traded away."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segnas.spaces.cells import CellSpace, Genotype  # noqa: E402
from segnas.utils.files import atomic_write  # noqa: E402


def probabilities_figure(space: CellSpace, probabilities: dict[str, np.ndarray], genotypes: dict[str, Genotype],
                         path: Path) -> Path:
    """One heat map per cell type: rows = candidate edges, columns = operations, colour = probability;
    black frames mark the derived cell's edges and operations."""
    ops = [op for op in space.ops if op != "zero"]
    columns = [space.ops.index(op) for op in ops]
    fig, axes = plt.subplots(1, len(probabilities), figsize=(3.2 * len(probabilities), 0.9 + 0.35 * space.num_edges),
                             layout="constrained", squeeze=False)
    for ax, (cell_type, probs) in zip(axes[0], probabilities.items()):
        image = ax.imshow(probs[:, columns], vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for node, kept in enumerate(genotypes[cell_type]):
            for source, op in kept:
                edge = space.node_edges(node)[source]
                ax.add_patch(plt.Rectangle((ops.index(op) - 0.5, edge - 0.5), 1, 1, fill=False, lw=2, ec="black"))
        ax.set_xticks(range(len(ops)), [op.replace("_3x3x3", "3").replace("_5x5x5", "5") for op in ops],
                      rotation=60, fontsize=7)
        ax.set_yticks(range(space.num_edges), [space.edge_name(e) for e in range(space.num_edges)], fontsize=7)
        ax.set_title(f"{cell_type} cells", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="operation probability")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path

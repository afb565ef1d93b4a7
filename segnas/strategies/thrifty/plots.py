"""Thrifty NAS's picture of the macro level: the probability that the path runs each layer at each level (the
chain of the final path logits), with the decoded path drawn over it and the U-Net path beside it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from segnas.strategies.thrifty.path import reachable, u_path, visit_probabilities  # noqa: E402
from segnas.utils.files import atomic_write  # noqa: E402

if TYPE_CHECKING:
    from segnas.strategies.thrifty.search import ThriftySearchHook


def path_figure(hook: "ThriftySearchHook", path: Path) -> Path:
    """Visit probabilities (levels down, layers across; blank where no path goes), the decoded path in black, the
    U-Net path dashed."""
    with torch.no_grad():
        visits = visit_probabilities(hook.moves()).numpy()
    mask = reachable(hook.layers, hook.levels)
    shown = visits.T.copy()
    shown[~mask.T] = float("nan")
    fig, ax = plt.subplots(figsize=(1.4 + 0.6 * hook.layers, 1.2 + 0.6 * hook.levels), layout="constrained")
    image = ax.imshow(shown, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    layers = list(range(-1, hook.layers))
    ax.plot(layers, [0, *u_path(hook.layers, hook.levels)], "w--", lw=1.2, label="U-Net path")
    ax.plot(layers, [0, *hook.path()], "k-o", lw=2, ms=4, label="decoded path")
    ax.set_xticks(layers, ["stem", *map(str, range(hook.layers))])
    ax.set_yticks(range(hook.levels), [f"1/{2 ** (s + 1)}" for s in range(hook.levels)])
    ax.set_xlabel("layer")
    ax.set_ylabel("resolution")
    ax.set_xlim(-1.5, hook.layers - 0.5)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    fig.colorbar(image, ax=ax, label="visit probability")
    target = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return target

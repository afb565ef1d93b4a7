"""IAC-LTH's pictures: the Jensen-Shannon trace of every edge with its pruning events, and the epoch from which
each edge's final operation led (the paper's temporal analysis) against the epoch the search stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segnas.spaces.cells import CellSpace  # noqa: E402
from segnas.utils.files import atomic_write  # noqa: E402


def stability_figure(space: CellSpace, history: Sequence[dict[str, Any]], leads: Sequence[int | None],
                     epochs_run: int, path: Path, calm_below: float | None = None) -> Path:
    """Left: each edge's JS divergence per epoch (triangles: pruning; dashed: the calm threshold in bits,
    ``calm_below``). Right: each edge's lead epoch against the epoch the search stopped (``epochs_run``)."""
    fig, (trace, lead) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    colours = plt.cm.tab20(np.linspace(0, 1, max(space.num_edges, 2)))
    for edge in range(space.num_edges):
        points = [(h["epoch"], h["js"][edge]) for h in history if h["js"][edge] is not None]
        if points:
            trace.plot(*zip(*points), color=colours[edge], linewidth=1.2, label=space.edge_name(edge))
        for h in history:
            for event in h["events"]:
                if event["edge"] == edge:
                    value = h["js"][edge] or 1e-8
                    trace.scatter(event["epoch"], max(value, 1e-8), color=colours[edge], marker="v", s=40,
                                  edgecolors="black", zorder=3)
    if calm_below:
        trace.axhline(calm_below, color="black", linestyle="--", linewidth=1, label="calm below")
    trace.set_yscale("log")
    trace.set_xlabel("epoch")
    trace.set_ylabel("JS divergence from the previous epoch (bits)")
    trace.set_title("per-edge stability (triangles: pruning)", fontsize=10)
    trace.legend(fontsize=6, ncol=2)
    shown = [(e, value) for e, value in enumerate(leads) if value is not None]
    if shown:
        lead.barh([space.edge_name(e) for e, _ in shown], [value for _, value in shown], color="#6baed6")
    lead.axvline(epochs_run, color="black", linestyle="--", label=f"search stopped (epoch {epochs_run})")
    lead.set_xlabel("epoch from which the final operation stayed the strongest")
    lead.set_title("how early the final operations lead", fontsize=10)
    lead.legend(fontsize=8)
    target = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return target

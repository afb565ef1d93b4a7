"""Plots of analyses: ranking scatter (HyperSegNAS Fig. 4), HyperNet maps beside the label (Fig. 6), the
ablation (Fig. 3), accuracy against measured memory (Table 2 as a picture), a cell search's final operation
probabilities, and for ``segnas report``: a training log's curves and the Pareto fronts of trained networks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from segnas.spaces.cells import CellSpace, Genotype  # noqa: E402
from segnas.utils.files import atomic_write  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    target = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return target


def ranking_figure(rows: list[dict[str, float]], result: dict[str, Any], path: Path) -> Path:
    """Super-net estimates (raw and fine-tuned) against stand-alone Dice, with Kendall's tau in the titles and
    each architecture coloured by its measured training memory."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True, layout="constrained")
    fig.suptitle(result["selection"], fontsize=9)
    truth = [r["standalone"] for r in rows]
    memory_mb = [r["memory_bytes"] / 1e6 for r in rows]
    for ax, field in ((axes[0], "supernet"), (axes[1], "finetuned")):
        shown = ax.scatter([r[field] for r in rows], truth, c=memory_mb, cmap="viridis", edgecolors="black",
                           linewidths=0.5)
        stats = result[field]
        ax.set_title(f"{'super-net' if field == 'supernet' else 'fine-tuned'} estimate\n"
                     f"Kendall tau {stats['kendall_tau']:.2f}, Spearman rho {stats['spearman_rho']:.2f}", fontsize=10)
        ax.set_xlabel("estimated Dice")
    axes[0].set_ylabel("stand-alone validation Dice")
    fig.colorbar(shown, ax=axes, label="measured training memory (MB)")
    return _save(fig, path)


def hypernet_maps_figure(image: np.ndarray, label: np.ndarray | None, eq6: np.ndarray, eq7: np.ndarray,
                         path: Path) -> Path:
    """The middle axial slice (through the label's centre when there is one) of image, label and both maps."""
    if label is not None and (label > 0).any():
        z = int(np.round(np.nonzero(label)[2].mean()))
    else:
        z = image.shape[2] // 2
    panels = [("image", image, "gray"), ("label", label, "viridis"),
              ("Eq. 6: ||w(a,I) - mean w(a)||", eq6, "magma"), ("Eq. 7: ||w(a_i,I) - w(a_j,I)||", eq7, "magma")]
    panels = [p for p in panels if p[1] is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (title, volume, cmap) in zip(axes, panels):
        shown = ax.imshow(np.rot90(volume[:, :, z]), cmap=cmap)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        if title.startswith("Eq"):
            fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


def ablation_figure(memory_bytes: list[int], dice_by_variant: dict[str, list[float]], path: Path) -> Path:
    """Dice of the same architectures under each super-net variant, sorted by measured memory (paper Fig. 3)."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    positions = np.arange(len(memory_bytes))
    for variant, dice in dice_by_variant.items():
        ax.plot(positions, dice, marker="o", markersize=4, label=f"{variant} (mean {np.mean(dice):.3f})")
    ax.set_xticks(positions, [f"{m / 2**20:.0f}" for m in memory_bytes], rotation=90, fontsize=7)
    ax.set_xlabel("architecture, by measured training memory (MiB)")
    ax.set_ylabel("super-net estimated Dice")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_memory_figure(points: dict[str, list[tuple[float, float]]], baselines: dict[str, tuple[float, float]],
                           path: Path) -> Path:
    """Validation Dice against measured training memory (MiB): one series per search method, each
    hand-designed baseline as a labelled cross (HyperSegNAS paper Table 2, as a picture)."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for (method, series), marker in zip(points.items(), "os^D"):
        ordered = sorted(series)
        ax.plot([m for m, _ in ordered], [d for _, d in ordered], marker=marker, label=method)
    for name, (memory, dice) in baselines.items():
        ax.scatter([memory], [dice], marker="x", s=60, c="black")
        ax.annotate(name, (memory, dice), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax.set_xlabel("measured training memory (MiB)")
    ax.set_ylabel("validation Dice (mean over labels)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def cell_probabilities_figure(space: CellSpace, probabilities: dict[str, np.ndarray],
                              genotypes: dict[str, Genotype], path: Path) -> Path:
    """One heat map per cell (type): rows = candidate edges, columns = operations, colour = the search's final
    probability; black frames mark the derived cell's edges and operations (Scalable NAS, Thrifty NAS)."""
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
    return _save(fig, path)


def training_curves_figure(series: dict[str, list[tuple[float, float]]], loss_keys: tuple[str, ...], path: Path,
                           title: str = "") -> Path:
    """A training log as curves against the step: the losses together in the first panel, every other logged
    figure (validation Dice, a strategy's cost ratio, ...) in a panel of its own."""
    grouped: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for key, points in series.items():  # losses share a panel, and so do per-label figures (val_dice/NAME)
        grouped.setdefault("losses" if key in loss_keys else key.split("/")[0], {})[key] = points
    panels = list(grouped.values())
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(3.6 * max(len(panels), 1), 3.0), squeeze=False,
                             layout="constrained")
    for ax, panel in zip(axes[0], panels):
        for key, points in panel.items():
            ax.plot([step for step, _ in points], [value for _, value in points], label=key,
                    marker="o" if len(points) < 20 else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_title(", ".join(panel), fontsize=9)
        ax.grid(alpha=0.3)
        if len(panel) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated points (lower cost, higher score), by cost."""
    front: list[tuple[float, float]] = []
    for cost, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or score > front[-1][1]:
            front.append((cost, score))
    return front


def _annotate_staggered(ax: Any, labelled: list[tuple[float, float, str]], log_x: bool) -> None:
    """Label each point; a point near an earlier one (4% of the axes' spans: the same network searched and
    hand-designed, networks of about equal cost and score) gets its label a line lower per such neighbour, so
    that labels do not print over each other. Points in the right quarter of the axes are labelled to their
    left, so that their labels stay inside."""
    xs = [np.log(x) if log_x else x for x, _, _ in labelled]
    ys = [y for _, y, _ in labelled]
    x_near, y_near = 0.04 * (max(xs) - min(xs) or 1.0), 0.04 * (max(ys) - min(ys) or 1.0)
    low, high = (np.log(limit) if log_x else limit for limit in ax.get_xlim())
    right_quarter = high - 0.25 * (high - low)
    for index, ((x, y, name), position) in enumerate(zip(labelled, xs)):
        near = sum(1 for px, py in zip(xs[:index], ys[:index])
                   if abs(px - position) <= x_near and abs(py - y) <= y_near)
        left = position > right_quarter
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(-4 if left else 4, 4 - 9 * near),
                    ha="right" if left else "left", fontsize=7)


def _key(ax: Any, names: list[str], columns: int) -> None:
    """The numbers the points carry, with their networks' names, in ``columns`` columns filled down first:
    the names of more than a dozen networks printed beside their points cover each other and the points."""
    ax.axis("off")
    rows = -(-len(names) // columns)
    for index, name in enumerate(names):
        column, row = divmod(index, rows)
        ax.text(column / columns, 1.0 - row / max(rows, 1), f"{index + 1}  {name}", fontsize=7, va="top",
                transform=ax.transAxes)


def pareto_figure(points: list[dict[str, Any]], budgets: list[Any], path: Path) -> Path:
    """Dice against measured training memory (MiB), against parameters and, where every point has one, against
    the measured training step (s): searched and hand-designed networks as two groups with their fronts, each
    limit of the budgets as a dashed line on its kind's panel, the spread over runs as error bars.

    ``points``: dicts with name, group, dice, dice_sd (or None), memory_bytes, parameters and optionally
    seconds_per_step; ``budgets``: :class:`segnas.cost.budget.Budget`. Points carry numbers (ordered by memory,
    the same in every panel) and a key under the panels names them."""
    points = sorted(points, key=lambda p: (p["memory_bytes"], p["parameters"], p["name"]))
    # panel: (point key, scale of the point's figure, scale of a budget's value, axis label, budget kind)
    panels = [("memory_bytes", 2**20, 2**20, "measured training memory (MiB)", "memory"),
              ("parameters", 1e6, 1e6, "parameters (millions)", "parameters")]
    if points and all(p.get("seconds_per_step") for p in points):
        panels.append(("seconds_per_step", 1.0, 1000.0, "measured training step (s)", "step"))
    key_rows = -(-len(points) // 2)
    fig = plt.figure(figsize=(5.5 * len(panels), 4.4 + 0.15 * key_rows), layout="constrained")
    grid = fig.add_gridspec(2, len(panels), height_ratios=(4.4, max(0.15 * key_rows, 0.01)))
    axes = [fig.add_subplot(grid[0, 0])]
    for column in range(1, len(panels)):
        axes.append(fig.add_subplot(grid[0, column], sharey=axes[0]))
        axes[column].tick_params(labelleft=False)
    for ax, (key, scale, budget_scale, xlabel, budget_kind) in zip(axes, panels):
        costs = [p[key] for p in points]
        log_x = bool(costs) and max(costs) > 8 * min(costs)  # a family spanning an order of magnitude or more
        for (group, marker), colour in zip((("searched", "o"), ("hand-designed", "s")), ("C0", "C1")):
            chosen = [p for p in points if p["group"] == group]
            if not chosen:
                continue
            xs = [p[key] / scale for p in chosen]
            ax.errorbar(xs, [p["dice"] for p in chosen], yerr=[p["dice_sd"] or 0.0 for p in chosen], fmt=marker,
                        color=colour, label=group, capsize=3)
            front = _front(list(zip(xs, [p["dice"] for p in chosen])))
            ax.plot([c for c, _ in front], [s for _, s in front], color=colour, alpha=0.6, drawstyle="steps-post")
        for limit in (limit for budget in budgets for limit in budget.limits() if limit.kind == budget_kind):
            ax.axvline(limit.value / budget_scale, color="grey", linestyle="--", linewidth=1)
            ax.annotate(limit.text, (limit.value / budget_scale, ax.get_ylim()[0]), fontsize=7, rotation=90,
                        va="bottom", ha="right", color="grey")
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no "2x10^0" between the decades
        if points:  # after the budgets and the scale: the labels' side depends on the axes' final span
            _annotate_staggered(ax, [(p[key] / scale, p["dice"], str(number))
                                     for number, p in enumerate(points, start=1)], log_x)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation Dice (mean over labels)")
    if points:
        axes[0].legend(fontsize=8)
    _key(fig.add_subplot(grid[1, :]), [f"{p['name']} ({p['group']})" for p in points], columns=2)
    return _save(fig, path)

"""HyperSegNAS analyses: how well the super-net ranks architectures (paper Fig. 4) and what the HyperNet
does across an image (paper Eq. 6, 7 and Fig. 6)."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau, spearmanr

from segnas.data.transforms import preprocessing
from segnas.engine.run import read_run
from segnas.errors import SegnasInputError
from segnas.networks.registry import TopologyNetworkSpec
from segnas.report.plots import hypernet_maps_figure, ranking_figure
from segnas.spaces.architecture import Architecture
from segnas.spaces.sampler import ArchitectureSampler
from segnas.strategies.hypersegnas.strategy import HyperSegNASStrategy
from segnas.strategies.hypersegnas.supernet import HyperSuperNet
from segnas.utils.files import atomic_write_text


def rank_correlations(estimates: list[float], truths: list[float]) -> dict[str, float]:
    """Kendall's tau and Spearman's rho of ``estimates`` against ``truths``."""
    tau = kendalltau(estimates, truths)
    rho = spearmanr(estimates, truths)
    return {"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
            "spearman_rho": float(rho.statistic), "spearman_p": float(rho.pvalue)}


def train_standalone(search: HyperSegNASStrategy, arch: Architecture, steps: int, run_dir: Path,
                     seed: int) -> dict[str, Any]:
    """Train ``arch`` from scratch with the search's plan and batch (the ranking's ground truth); the run record.
    It has no HyperNet weights to remove, so it merges like the search's networks but without the 0.5 scale."""
    plan = search.ctx.plan
    network = TopologyNetworkSpec(plan.num_channels, plan.num_classes, arch, "mean")
    return search.evaluator.train_standalone(network, run_dir, steps, seed)


def _standalone_dice(search: HyperSegNASStrategy, arch: Architecture, steps: int, run_dir: Path) -> float:
    """``arch``'s validation Dice trained stand-alone in ``run_dir`` (a finished run there is read, not redone)."""
    if (run_dir / "run.json").is_file() and read_run(run_dir).get("status") == "finished":
        record = read_run(run_dir)
    else:
        record = train_standalone(search, arch, steps, run_dir, search.ctx.seed)
    return record["validation"]["val_dice"]


def budget_candidates(search: HyperSegNASStrategy, budget_label: str, count: int
                      ) -> tuple[dict[str, Architecture], dict[str, dict[str, float]]]:
    """The ``count`` candidates of one searched budget with the best super-net scores, and the scores the search
    already computed for them (``supernet_score``, ``finetuned_score``)."""
    state_path = search.ctx.folder.budget_dir(budget_label) / "state.json"
    if not state_path.is_file():
        raise SegnasInputError(f"no search state for {budget_label}; run segnas search first", state_path.parent)
    candidates = search.ctx.folder.load_state(budget_label)["candidates"]
    if len(candidates) < 3:
        raise SegnasInputError(f"{len(candidates)} candidate(s): ranking needs at least 3", state_path)
    keys = sorted(candidates, key=lambda k: -candidates[k].get("supernet_score", 0))[:count]
    known = {key: {field: candidates[key][field] for field in ("supernet_score", "finetuned_score")
                   if field in candidates[key]} for key in keys}
    return {key: Architecture.from_dict(candidates[key]["architecture"]) for key in keys}, known


def spread_architectures(search: HyperSegNASStrategy, count: int, seed: int) -> dict[str, Architecture]:
    """``count`` architectures drawn uniformly from the space (the super-net's own training distribution) and
    spread over its measured memory: ``2 count + 1`` are drawn and measured, and every other one in memory
    order is kept, from the smallest to the largest."""
    if count < 3:
        raise SegnasInputError(f"{count} architecture(s): ranking needs at least 3", "--random")
    sampler = ArchitectureSampler(search.space, seed)
    drawn = list({arch.key(): arch for arch in (sampler.sample() for _ in range(2 * count + 1))}.values())
    drawn.sort(key=lambda arch: search.measure(arch).memory_bytes)
    picks = np.unique(np.round(np.linspace(0, len(drawn) - 1, count)).astype(int))
    return {drawn[i].key(): drawn[i] for i in picks}


def analyze_ranking(search: HyperSegNASStrategy, architectures: dict[str, Architecture], train_steps: int,
                    out: Path, selection: str, known: dict[str, dict[str, float]] | None = None,
                    standalone: Callable[[str, Architecture], float] | None = None,
                    progress: Callable[[dict[str, dict[str, float]]], None] | None = None) -> dict[str, Any]:
    """Train ``architectures`` stand-alone and correlate the super-net's raw and fine-tuned estimates with them.

    ``known`` holds estimates the search already computed; the others are computed here and kept in
    ``out/estimates.json`` (with the search-stage settings that made them: other settings, other estimates)
    so that a second call resumes, like the stand-alone runs (``out/standalone/STEPS-steps/KEY``: a call with
    other ``train_steps`` trains its own and keeps the earlier ones). ``selection`` says in the report how the
    architectures were chosen. Writes ``ranking.json`` and ``ranking.png`` (of this call) to ``out``.

    ``standalone`` (``key, architecture -> validation Dice``) replaces the stand-alone training: a benchmark
    that trains the ground truth with another recipe, or that reads runs an earlier session recorded; ``progress``
    gets every estimate so far after each one is taken (a results file, which outlives ``out``). The super-net is
    trained (or loaded) only when an estimate is missing, so a later session with every estimate known does not
    train it again.
    """
    out.mkdir(parents=True, exist_ok=True)
    estimates_path = out / "estimates.json"
    settings = search.profile.search_stage()
    saved = json.loads(estimates_path.read_text()) if estimates_path.is_file() else {}
    estimates: dict[str, dict[str, float]] = saved.get("estimates", {}) if saved.get("settings") == settings else {}
    for key, values in (known or {}).items():
        estimates.setdefault(key, {}).update(values)
    for key, arch in architectures.items():  # every estimate first: they need the super-net, the truths do not
        item = estimates.setdefault(key, {})
        if "supernet_score" not in item:
            item["supernet_score"] = search.score_supernet(arch)
        if "finetuned_score" not in item:
            item["finetuned_score"] = search.finetune(arch, out / "finetune" / key)
        atomic_write_text(estimates_path, json.dumps({"settings": settings, "estimates": estimates}, indent=1) + "\n")
        if progress:
            progress({name: estimates[name] for name in architectures if name in estimates})
    rows = [{"key": key, "memory_bytes": search.measure(arch).memory_bytes,
             "supernet": estimates[key]["supernet_score"], "finetuned": estimates[key]["finetuned_score"],
             "standalone": standalone(key, arch) if standalone else
             _standalone_dice(search, arch, train_steps, out / "standalone" / f"{train_steps}-steps" / key)}
            for key, arch in architectures.items()]
    truths = [r["standalone"] for r in rows]
    result = {"selection": selection, "architectures": rows, "standalone_steps": train_steps,
              "estimator": settings,
              "supernet": rank_correlations([r["supernet"] for r in rows], truths),
              "finetuned": rank_correlations([r["finetuned"] for r in rows], truths)}
    atomic_write_text(out / "ranking.json", json.dumps(result, indent=1) + "\n")
    ranking_figure(rows, result, out / "ranking.png")
    return result


def hypernet_deltas(model: HyperSuperNet, image: torch.Tensor, arch_i: Architecture, arch_j: Architecture,
                    patch: list[int], stride: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 6 and Eq. 7 for every patch of ``image`` ``(C, H, W, D)``, averaged back onto the voxels.

    Returns two ``(H, W, D)`` maps: ``||w(a_i, I) - mean_I w(a_i, I)||`` and ``||w(a_i, I) - w(a_j, I)||``,
    each voxel holding the mean over the patches (taken every ``stride`` voxels) that cover it.
    """
    if model.man is None:
        raise SegnasInputError("this super-net has no HyperNet (vanilla variant)")
    padded = torch.nn.functional.pad(image, [p for size, s in zip(reversed(image.shape[1:]), reversed(patch))
                                             for p in (0, max(s - size, 0))])
    starts = [list(range(0, max(size - s, 0) + 1, stride)) for size, s in zip(padded.shape[1:], patch)]
    for axis, size in enumerate(padded.shape[1:]):
        if starts[axis][-1] != size - patch[axis]:
            starts[axis].append(size - patch[axis])
    corners = [(x, y, z) for x in starts[0] for y in starts[1] for z in starts[2]]
    weights_i, weights_j = [], []
    with torch.no_grad():
        for x, y, z in corners:
            crop = padded[None, :, x:x + patch[0], y:y + patch[1], z:z + patch[2]]
            weights_i.append(model.man(crop, arch_i)[0])
            weights_j.append(model.man(crop, arch_j)[0])
    w_i, w_j = torch.stack(weights_i), torch.stack(weights_j)
    eq6 = (w_i - w_i.mean(0, keepdim=True)).norm(dim=1).numpy()
    eq7 = (w_i - w_j).norm(dim=1).numpy()
    maps = [np.zeros(padded.shape[1:]), np.zeros(padded.shape[1:])]
    cover = np.zeros(padded.shape[1:])
    for (x, y, z), d6, d7 in zip(corners, eq6, eq7):
        region = (slice(x, x + patch[0]), slice(y, y + patch[1]), slice(z, z + patch[2]))
        maps[0][region] += d6
        maps[1][region] += d7
        cover[region] += 1
    shape = image.shape[1:]
    return tuple(m[: shape[0], : shape[1], : shape[2]] / cover[: shape[0], : shape[1], : shape[2]]
                 for m in maps)  # type: ignore[return-value]


def analyze_hypernet(search: HyperSegNASStrategy, image_path: Path, label_path: Path | None,
                     arch_i: Architecture, arch_j: Architecture, out: Path, stride: int = 16) -> dict[str, Any]:
    """Load the trained HyperSuperNet of a search (HyperNet included) and draw Eq. 6 / 7 over one volume."""
    plan, space = search.ctx.plan, search.space
    for arch in (arch_i, arch_j):
        arch.same_space(space)
    model = HyperSuperNet(space, plan.num_channels, plan.num_classes, search.variant)
    weights = search.ctx.folder.path / "supernet" / "model_final.pt"
    if not weights.is_file():
        raise SegnasInputError("the super-net has not finished training", weights)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=False)["state_dict"])
    model.eval()
    data = preprocessing(plan, with_label=label_path is not None)(
        {"image": str(image_path), **({"label": str(label_path)} if label_path else {})})
    eq6, eq7 = hypernet_deltas(model, torch.as_tensor(data["image"]), arch_i, arch_j, plan.patch_size, stride)
    label = np.asarray(data["label"][0]) if label_path else None
    out.mkdir(parents=True, exist_ok=True)
    hypernet_maps_figure(np.asarray(data["image"][0]), label, eq6, eq7, out / "hypernet.png")
    summary: dict[str, Any] = {"image": str(image_path), "stride": stride,
                               "eq6_mean": float(eq6.mean()), "eq7_mean": float(eq7.mean())}
    if label is not None and (label > 0).any() and (label == 0).any():
        summary.update(eq6_foreground=float(eq6[label > 0].mean()), eq6_background=float(eq6[label == 0].mean()),
                       eq7_foreground=float(eq7[label > 0].mean()), eq7_background=float(eq7[label == 0].mean()))
    atomic_write_text(out / "hypernet.json", json.dumps(summary, indent=1) + "\n")
    return summary

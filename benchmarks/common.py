"""What the strategy benchmarks share: Hippocampus fold 0, and retraining a chosen architecture from scratch
the way the foundation benchmark trained its baselines (same patch, batch, learning rate, minutes)."""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from segnas.cost.measure import measure_cost
from segnas.data.dataset import DatasetSpec, load_dataset
from segnas.data.plan import Plan
from segnas.engine.evaluate import evaluate_folder
from segnas.engine.predict import predict_run
from segnas.engine.run import read_run, train_run
from segnas.engine.trainer import CHECKPOINT_NAME, TrainConfig
from segnas.formats import RESULT_FORMAT
from segnas.networks.registry import NetworkSpec, TopologyNetworkSpec
from segnas.spaces.architecture import Architecture, architecture_from_dict, load_architecture
from segnas.spaces.cells import CellArchitecture
from segnas.utils.progress import configure_logging

ROOT = Path(__file__).resolve().parent
DEFAULT_DATA = ROOT.parent.parent / "shared" / "data" / "Task04_Hippocampus"
RESULTS = ROOT / "results"
#: How a benchmark trains a network it compares: ``benchmark`` (batch 4, flips: the foundation baselines' recipe,
#: every Hippocampus figure) or ``defaults`` (``segnas train``'s: batch 2, full augmentation; the ACDC figures).
#: ``config``: TrainConfig fields; ``augment``: the augmentation.
TRAIN_RECIPES: dict[str, dict[str, Any]] = {"benchmark": {"config": {"batch_size": 4}, "augment": "flips"},
                                            "defaults": {"config": {"batch_size": 2}, "augment": "full"}}


def machine() -> dict[str, Any]:
    """The CPU a timing ran on (its model name, the instruction set torch dispatches to, the threads): times of
    two machines are never compared, and whether ``amp`` ran bfloat16 depends on it."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
             if line.startswith("model name")]
    return {"cpu": names[0] if names else platform.processor() or "unknown",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads()}


def read_result(path: Path) -> dict[str, Any]:
    """A results file (``benchmarks/results/*.json``), upgraded: files written before results had a header load
    too, and a bare list comes back under ``rows``."""
    return RESULT_FORMAT.read_json(path)


def write_result(path: Path, result: dict[str, Any]) -> Path:
    """Write a results file with its format header and the versions that produced it."""
    return RESULT_FORMAT.write_json(path, result, default=str)


def architecture_record(arch: Architecture | CellArchitecture) -> dict[str, Any]:
    """An architecture as a results file keeps it: its document without the metadata (scores, costs, the search's
    history), which is what a later session needs to build and train the network once the work folder is gone."""
    return {key: value for key, value in arch.to_dict().items() if key != "metadata"}


def recorded_searches(record: dict[str, Any], names: tuple[str, ...], work: Path
                      ) -> tuple[dict[str, Architecture | CellArchitecture], Plan]:
    """The architectures of the searches ``names`` and their plan, as a benchmark's search part recorded them
    (``record["searches"][name]["architecture"]`` by :func:`architecture_record`, ``record["plan"]``): a later
    session trains from the results file alone. A record written before the results kept them reads the searches'
    folders under ``work`` (``<work>/<name>/cells/arch.json``), where they still exist; without either it stops."""
    rows = record.get("searches", {})
    if "plan" in record and all("architecture" in rows.get(name, {}) for name in names):
        return ({name: architecture_from_dict(rows[name]["architecture"], source=f"results file: search {name}")
                 for name in names}, Plan.from_dict(record["plan"], "results file: plan"))
    if not all((work / name / "search.json").is_file() for name in names):
        raise SystemExit(f"no search {', '.join(names)} recorded in the results file or under {work}: "
                         "run the search part first")
    return ({name: load_architecture(work / name / "cells" / "arch.json") for name in names},
            Plan.load(work / names[0]))


def link_images(spec: DatasetSpec, case_ids: list[str], folder: Path) -> Path:
    """A folder of symbolic links to the cases' images, the input ``segnas predict`` takes."""
    folder.mkdir(parents=True, exist_ok=True)
    for case_id in case_ids:
        link = folder / f"{case_id}.nii.gz"
        if not link.exists():
            link.symlink_to(spec.case(case_id).images[0])
    return folder


def _without_metadata(network: dict[str, Any] | None) -> dict[str, Any] | None:
    """A network spec's dict without its architecture's metadata (scores and costs do not change the network)."""
    if not network or "architecture" not in network:
        return network
    architecture = {k: v for k, v in network["architecture"].items() if k not in ("metadata", "written_by")}
    return {**network, "architecture": architecture}


def retrain_and_evaluate(data_dir: Path, spec: DatasetSpec, plan: Plan, network: Architecture | NetworkSpec,
                         run_dir: Path, minutes: float | None = None, smoke: bool = False, steps: int | None = None,
                         seed: int = 0, device: str = "auto", config_overrides: dict[str, Any] | None = None,
                         augment: str = "flips", fold: int = 0) -> dict[str, Any]:
    """Train ``network`` (a topology architecture, or any spec) from scratch for ``minutes`` or ``steps``
    (batch 4, lr 3e-3, flips: the foundation baselines' recipe), predict the fold-0 validation images and return
    Dice / NSD per label and their means.

    ``config_overrides`` changes the recipe's :class:`TrainConfig` fields (e.g. ``poly_power=0``: a constant
    learning rate; ``batch_size=2``: ``segnas train``'s default), ``augment`` its augmentation. ``dice`` holds Dice, NSD and HD95 per
    label.

    Resumes: an interrupted run of the same network and seed continues from its checkpoint; a finished one is
    not trained again. A run folder holding another network (the search chose anew), seed or length is trained
    anew.
    """
    if isinstance(network, Architecture):
        network = TopologyNetworkSpec(plan.num_channels, plan.num_classes, network, "mean")
    recipe = {"batch_size": 4, "lr": 3e-3, "checkpoint_every": 100, **(config_overrides or {})}
    config = TrainConfig(max_steps=2 if smoke else steps, max_seconds=minutes * 60 if minutes else None, seed=seed,
                         **recipe)
    previous = read_run(run_dir) if (run_dir / "run.json").is_file() else {}
    trained = previous.get("train", {})
    same = _without_metadata(previous.get("network")) == _without_metadata(network.to_dict()) and \
        all(trained.get(key) == value for key, value in vars(config).items() if key not in ("workers",)) and \
        previous.get("augmentation") == augment and previous.get("fold") == fold
    if not (same and (run_dir / "model_final.pt").is_file()):
        resumable = same and (run_dir / CHECKPOINT_NAME).is_file()  # the time budget sums across resumes
        train_run(data_dir, plan, network, run_dir, fold, config, resume=resumable, force=not resumable,
                  augment=augment, spec=spec, device=device)
    images = link_images(spec, plan.fold(fold)["val"], run_dir / "val_images")
    predictions = run_dir / "predictions"
    # One pass, no mirroring: the recorded figures of every benchmark were scored so, and a network comparison
    # needs none (mirror TTA is a prediction lever of its own: recipe.py tta).
    predict_run(run_dir, images, predictions, force=True, device=device, tta="none")
    summary = evaluate_folder(predictions, data_dir / "labelsTr", predictions,
                              {k: v for k, v in plan.labels.items() if k})
    record = read_run(run_dir)
    return {"dice": summary["per_label"], "mean_dice": summary["mean"]["dice"], "mean_nsd": summary["mean"]["nsd"],
            "train_steps": record.get("steps"), "train_minutes": minutes, "train_seconds": record.get("train_seconds"),
            "seconds_per_step": record.get("seconds_per_step"), "parameters": record.get("parameters"), "seed": seed}


def network_fingerprint(network: NetworkSpec) -> str:
    """A short hash of what makes a network (its spec without the architecture's scores and costs): a trained row
    is reused only for the same network."""
    text = json.dumps(_without_metadata(network.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def seed_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and seed-to-seed spread of the runs' Dice (spread ``None`` for one run), and their mean NSD."""
    dice = [run["mean_dice"] for run in runs]
    return {"mean_dice": statistics.mean(dice), "sd_dice": statistics.stdev(dice) if len(dice) > 1 else None,
            "mean_nsd": statistics.mean(run["mean_nsd"] for run in runs)}


def _network_row(runs: list[dict[str, Any]], cost: Any, network: NetworkSpec) -> dict[str, Any]:
    row = {"runs": runs, **seed_summary(runs), "parameters": cost.parameters,
           "memory_bytes": cost.memory_bytes, "step_seconds": cost.seconds_per_step,
           "fingerprint": network_fingerprint(network)}
    architecture = getattr(network, "architecture", None)
    if hasattr(architecture, "cells"):
        row["cells"] = architecture.summary()
    return row


def train_networks(args: Any, networks: dict[str, NetworkSpec], data: Path, spec: DatasetSpec, plan: Plan,
                   work: Path, device: str = "cpu", done: dict[str, Any] | None = None,
                   save: Callable[[dict[str, Any]], None] | None = None,
                   recipe: str = "benchmark") -> dict[str, Any]:
    """Every network trained from scratch for ``args.steps`` with each of ``args.seeds`` and evaluated
    (:func:`retrain_and_evaluate`), with its measured cost at the training batch on ``device``: mean and spread
    of Dice over the seeds, NSD, parameters, memory, step time (and the cells of a cell architecture).

    Long benchmarks outlive a session and its work folder, so the results file is the record: a seed already in
    ``done`` (the rows a results file holds) for the same network fingerprint and steps is not trained again (a
    row of another name with that fingerprint counts: a search that returns a preset reuses the preset's runs), and
    ``save`` gets the rows so far after every run (a kill loses at most the run in progress). The networks are
    measured first and trained cheapest first (by measured step time), after a schedule with the estimated hours
    of what is left: a session that ends early has the most points, and one network of hours (DynUNet on CPU)
    does not hold back the rest.

    ``recipe`` names one of :data:`TRAIN_RECIPES`; costs are measured at its batch, and a recorded run is reused
    only for the same recipe (runs recorded before recipes were named trained with ``benchmark``)."""
    settings = TRAIN_RECIPES[recipe]
    batch = settings["config"]["batch_size"]
    costs = {name: measure_cost(network, plan.patch_size, batch, device) for name, network in networks.items()}
    previous_rows = done or {}
    by_fingerprint = {row.get("fingerprint"): row for row in previous_rows.values()}

    def reusable(name: str) -> dict[int, dict[str, Any]]:
        fingerprint = network_fingerprint(networks[name])
        previous = previous_rows.get(name, {})
        if previous.get("fingerprint") != fingerprint:
            previous = by_fingerprint.get(fingerprint, {})
        if not previous or args.smoke:
            return {}
        return {run["seed"]: run for run in previous.get("runs", [])
                if run.get("train_steps") == args.steps and run.get("recipe", "benchmark") == recipe}

    order = sorted(networks, key=lambda name: costs[name].seconds_per_step)
    recorded = {name: reusable(name) for name in order}
    to_train = {name: [seed for seed in args.seeds if seed not in recorded[name]] for name in order}
    hours = {name: len(to_train[name]) * args.steps * costs[name].seconds_per_step / 3600 for name in order}
    for name in order:
        print(f"schedule: {name}: {len(to_train[name])} of {len(args.seeds)} seeds to train, "
              f"{costs[name].seconds_per_step:.2f} s/step, about {hours[name]:.1f} h", flush=True)
    print(f"schedule: about {sum(hours.values()):.1f} h of training in all (step times: the cost module's median of "
          "3 steps, measured once and cached; a long training can run 2x faster; evaluation extra)", flush=True)
    rows: dict[str, Any] = {}
    summary = {"steps": args.steps, "seeds": args.seeds, "batch_size": batch, "recipe": recipe, "device": device}
    for name in order:
        network, cost = networks[name], costs[name]
        runs: list[dict[str, Any]] = []
        for seed in args.seeds:
            if seed in recorded[name]:
                print(f"{name} seed {seed}: recorded, not trained again", flush=True)
                runs.append(recorded[name][seed])
            else:
                run = retrain_and_evaluate(data, spec, plan, network, work / f"{name}_{seed}", smoke=args.smoke,
                                           steps=args.steps, seed=seed, device=device,
                                           config_overrides=settings["config"], augment=settings["augment"])
                runs.append({**run, "recipe": recipe})
            rows[name] = _network_row(runs, cost, network)
            if save:
                save({"networks": rows, **summary})
        print(f"{name}: Dice {[round(run['mean_dice'], 4) for run in runs]}, {cost.parameters:,} parameters, "
              f"{cost.memory_bytes / 2**20:.1f} MiB, {cost.seconds_per_step:.3f} s/step", flush=True)
    return {"networks": rows, **summary}


class _BenchmarkParser(argparse.ArgumentParser):
    def parse_args(self, *args: Any, **kwargs: Any) -> argparse.Namespace:  # type: ignore[override]
        """``--smoke`` works under ``<work>/smoke``: a real run never resumes from (or reuses) a smoke run's
        tiny data, searches or trainings; a dataset other than Hippocampus under ``<work>/<dataset>``: its
        searches and runs never meet the Hippocampus ones of the same names."""
        parsed = super().parse_args(*args, **kwargs)
        configure_logging()  # progress lines in the benchmark's log, as the segnas command writes them
        dataset = load_dataset(parsed.data).name.lower() if (parsed.data / "dataset.json").is_file() else None
        if parsed.smoke:
            parsed.work = parsed.work / "smoke"
        elif dataset not in (None, "hippocampus"):
            parsed.work = parsed.work / dataset
        return parsed


def benchmark_parser(doc: str, parts: list[str], work: str, subjects: bool = False,
                     recipes: bool = False) -> argparse.ArgumentParser:
    """The options every strategy benchmark takes: the part to run, data, work and results folders,
    retraining minutes and ``--smoke``; with ``subjects`` (a benchmark that runs on any dataset), ``--group-by``;
    with ``recipes`` (one that trains networks by :func:`train_networks`), ``--recipe``."""
    parser = _BenchmarkParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=parts)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=ROOT / "work" / work)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--minutes", type=float, default=20.0, help="retraining budget per winner (20)")
    parser.add_argument("--smoke", action="store_true", help="tiny profile and sizes: checks the script runs")
    if subjects:
        parser.add_argument("--group-by", metavar="REGEX", help="a case's subject, as `segnas plan --group-by`")
    if recipes:
        parser.add_argument("--recipe", choices=sorted(TRAIN_RECIPES), default="benchmark",
                            help="how networks train: benchmark (batch 4, flips; every Hippocampus figure) or "
                                 "defaults (segnas train's: batch 2, full augmentation; the ACDC figures)")
    return parser


def result_path(args: Any, stem: str, suffix: str = ".json") -> Path:
    """Where a benchmark's figures go: ``<stem>.json`` on Hippocampus (the first task's files keep their names),
    ``<stem>_<dataset>.json`` on another dataset, ``<stem>_smoke.json`` for a smoke run (``suffix``: ``.png`` for
    its figure)."""
    if args.smoke:
        return args.results / f"{stem}_smoke{suffix}"
    name = load_dataset(args.data).name
    return args.results / (f"{stem}{suffix}" if name.lower() == "hippocampus" else f"{stem}_{name.lower()}{suffix}")

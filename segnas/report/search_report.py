"""``segnas report``: one self-contained HTML page about a search folder, whichever strategy wrote it.

The page is built from what the folder holds (the layout of :mod:`segnas.strategies.folder`), never from a
strategy's code, so a new strategy's folder is reported without a change here:

* ``search.json``: strategy, profile, dataset, fold, seed and settings;
* each label's ``arch.json`` (the winner; its measured cost, budget fit, scores and search time are in its
  metadata), ``arch.png`` and ``leaderboard.csv``;
* the ``log.jsonl`` of every training run inside the folder (the super-net's curves; other runs as a table);
* every other picture the strategy or ``segnas analyze`` drew, and the analyses' JSON figures;
* with ``runs``: trained run folders (``segnas train``), searched and hand-designed alike, as points of a Pareto
  plot of validation Dice against measured training memory and against parameters, seeds of one network pooled.

What is absent is said under "Missing", with the command that makes it. Pictures are embedded as base64 PNG, so
the file opens anywhere without network access. The HTML comes from a Jinja2 template (autoescaped), not from
string concatenation.
"""

from __future__ import annotations

import base64
import csv
import datetime
import json
import logging
import re
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import torch

from segnas.version import __version__
from segnas.cost.budget import BUDGET_WINDOW, COST_FIELDS, Budget, parse_budget
from segnas.cost.measure import measure_cost
from segnas.engine.run import read_run
from segnas.errors import SegnasInputError
from segnas.networks.registry import network_from_dict
from segnas.report.plots import pareto_figure, training_curves_figure
from segnas.spaces.architecture import Architecture
from segnas.spaces.cells import CellArchitecture
from segnas.strategies.base import get_strategy, load_strategies
from segnas.strategies.folder import SearchFolder
from segnas.utils.files import atomic_write_text

log = logging.getLogger(__name__)

#: Captions of the pictures strategies and analyses draw, by file name (others are shown with their path).
CAPTIONS = {
    "path.png": "Thrifty NAS: the cell path over resolutions, coloured by the search's transition probabilities; "
                "the decoded path drawn over it.",
    "probabilities.png": "The cell search's final operation probabilities per candidate edge; framed: the derived "
                         "cell's edges and operations.",
    "stability.png": "IAC-LTH: Jensen-Shannon distance between successive operation distributions; the search "
                     "stopped where it stayed under the threshold.",
    "ranking.png": "Super-net and fine-tuned estimates against the stand-alone Dice of the same architectures "
                   "(segnas analyze ranking).",
    "hypernet.png": "HyperNet maps over one volume: the paper's Eq. 6 and Eq. 7 (segnas analyze hypernet).",
}
#: Leaderboard rows shown per budget (the CSV holds them all).
LEADERBOARD_ROWS = 15
#: Log keys drawn as the training curve's first panel; every other numeric key gets a panel of its own.
LOSS_KEYS = ("loss", "arch_loss")
UNPLOTTED_KEYS = ("step", "lr", "seconds")


@dataclass
class Picture:
    """A PNG embedded in the page."""

    title: str
    caption: str
    data: str  # base64 of the PNG bytes

    @property
    def anchor(self) -> str:
        """The figure's id in the page (its title as a slug)."""
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")

    @classmethod
    def from_file(cls, path: Path, title: str, caption: str = "") -> "Picture":
        return cls(title, caption, base64.b64encode(path.read_bytes()).decode("ascii"))


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    title: str = ""
    note: str = ""


@dataclass
class Winner:
    """One label's chosen architecture."""

    label: str
    summary: str
    facts: list[tuple[str, str]]
    drawing: Picture | None
    leaderboard: Table | None


@dataclass
class SearchReport:
    """Everything the page shows, as plain data (the template only lays it out)."""

    title: str
    folder: str
    facts: list[tuple[str, str]]
    settings: list[tuple[str, str]]
    budgets: Table
    winners: list[Winner] = field(default_factory=list)
    curves: list[Picture] = field(default_factory=list)
    runs_inside: Table | None = None
    pictures: list[Picture] = field(default_factory=list)
    analyses: list[Table] = field(default_factory=list)
    pareto: Table | None = None
    pareto_picture: Picture | None = None
    missing: list[str] = field(default_factory=list)
    generated: str = ""
    segnas_version: str = __version__


# ----- formatting ---------------------------------------------------------------------------------------------
def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _compact(value: Any, limit: int = 160) -> str:
    """A metadata or settings value in one short line."""
    text = _number(value) if isinstance(value, (int, float, bool)) or value is None else (
        value if isinstance(value, str) else json.dumps(value, default=str))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _seconds(value: Any) -> str:
    """A search's wall-clock: one number, or phases (HyperSegNAS) summed with the phases in brackets."""
    if isinstance(value, (int, float)):
        return f"{value:,.1f} s" if value < 100 else f"{value:,.0f} s"
    if isinstance(value, dict) and value:
        phases = ", ".join(f"{phase} {_seconds(seconds)}" for phase, seconds in value.items())
        return f"{_seconds(float(sum(value.values())))} ({phases})"
    return ""


def _total_seconds(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict) and value:
        return float(sum(value.values()))
    return None


# ----- the winners --------------------------------------------------------------------------------------------
def _budget_of(meta: dict[str, Any]) -> Budget | None:
    """The budget a winner was searched under: a dict (budget_fit's) or a text (HyperSegNAS) in its metadata."""
    budget = meta.get("budget")
    text = budget.get("text") if isinstance(budget, dict) else budget
    if not isinstance(text, str):
        return None
    try:
        return parse_budget(text)
    except SegnasInputError:
        return None


def _fit(meta: dict[str, Any], window: float) -> tuple[float | None, bool | None]:
    """Measured cost over budget, and whether it lies inside ``[1 - window, 1]`` of it."""
    budget, cost = _budget_of(meta), meta.get("cost")
    if budget is None or not isinstance(cost, dict) or any(COST_FIELDS[kind] not in cost for kind in budget.kinds):
        return None, None
    used = budget.cost_of(cost)
    return used / budget.value, budget.value * (1 - window) <= used <= budget.value


def _scores(meta: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value:.3f}" for key, value in meta.items()
                     if isinstance(value, float) and ("score" in key or "dice" in key))


def _summary(arch: Architecture | CellArchitecture) -> str:
    if isinstance(arch, CellArchitecture):
        return arch.summary()
    return f"topology: {int(arch.edges.sum())} of {arch.edges.size} edges active (key {arch.key()})"


def _budget_table(results: dict[str, Architecture | CellArchitecture], window: float) -> Table:
    """One row per winner; ``window``: the search's own (HyperSegNAS's profile may widen the shared one)."""
    rows = []
    for label, arch in results.items():
        meta = arch.metadata
        cost = meta.get("cost") if isinstance(meta.get("cost"), dict) else {}
        budget = _budget_of(meta)
        ratio, inside = _fit(meta, window)
        rows.append([label, budget.text if budget else "none",
                     f"{cost['memory_bytes'] / 2**20:,.0f}" if "memory_bytes" in cost else "",
                     _number(cost.get("parameters")),
                     f"{cost['flops_forward'] / 1e9:.2f}" if "flops_forward" in cost else "",
                     f"{cost['latency_ms']:.1f}" if "latency_ms" in cost else "",
                     f"{ratio:.1%}" if ratio is not None else "", _number(inside), _scores(meta),
                     _seconds(meta.get("search_seconds"))])
    return Table(["label", "budget", "memory (MiB)", "parameters", "GFLOPs", "latency (ms)", "of budget",
                  f"inside [{1 - window:.0%}, 100%]", "scores", "search time"], rows,
                 note="Cost as measured by segnas's cost module (training memory at the search's patch and batch).")


def _leaderboard(path: Path) -> Table | None:
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        return None
    header, body = rows[0], rows[1:]
    shown = body[:LEADERBOARD_ROWS]
    note = f"{len(body)} candidates" + (f"; the best {len(shown)} shown, all in {path.name}"
                                        if len(body) > len(shown) else "")
    return Table(header, [[_compact(_maybe_float(cell), 60) for cell in row] for row in shown], "leaderboard", note)


def _maybe_float(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _winners(folder: SearchFolder, results: dict[str, Architecture | CellArchitecture]) -> list[Winner]:
    winners = []
    for label, arch in results.items():
        directory = folder.budget_dir(label)
        shown = ("cost", "budget", "search_seconds")
        facts = [(key, _compact(value)) for key, value in arch.metadata.items() if key not in shown]
        drawing = directory / "arch.png"
        winners.append(Winner(label, _summary(arch), facts,
                              Picture.from_file(drawing, f"{label}: the winner") if drawing.is_file() else None,
                              _leaderboard(directory / "leaderboard.csv")))
    return winners


# ----- training runs inside the folder, pictures, analyses ----------------------------------------------------
def _run_folders(root: Path) -> list[Path]:
    return sorted(path.parent for path in root.rglob("run.json"))


def _read_log(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: the rest of the log is still good
                continue
    return rows


def _curves(root: Path, runs: list[Path], scratch: Path) -> tuple[list[Picture], Table | None]:
    """One figure per super-net run (folders named ``supernet``); the other runs inside (fine-tuning) as rows."""
    pictures, rows = [], []
    for run in runs:
        relative = run.relative_to(root).as_posix()
        entries = _read_log(run / "log.jsonl")
        if run.name == "supernet" and entries:
            series: dict[str, list[tuple[float, float]]] = {}
            for entry in entries:
                for key, value in entry.items():
                    if key not in UNPLOTTED_KEYS and isinstance(value, (int, float)) and "step" in entry:
                        series.setdefault(key, []).append((entry["step"], float(value)))
            path = training_curves_figure(series, LOSS_KEYS, scratch / f"curve{len(pictures)}.png", relative)
            pictures.append(Picture.from_file(path, f"{relative}: training curve",
                                              f"{len(entries)} log lines, last step {entries[-1].get('step')}"))
        elif run.name != "supernet":
            try:
                record = read_run(run)
            except SegnasInputError as err:
                log.warning("%s", err)
                continue
            rows.append([relative, _number(record.get("status")), _number(record.get("steps")),
                         _number((record.get("validation") or {}).get("val_dice")),
                         _seconds(record.get("train_seconds"))])
    table = Table(["run", "status", "steps", "validation Dice", "time"], rows, "other training runs inside the "
                  "search (fine-tuning)") if rows else None
    return pictures, table


def _pictures(root: Path, runs: list[Path]) -> list[Picture]:
    """Every picture in the folder except the winners' drawings and what training runs draw."""
    pictures = []
    for path in sorted(root.rglob("*.png")):
        if path.name == "arch.png" or any(run in path.parents for run in runs):
            continue
        relative = path.relative_to(root).as_posix()
        pictures.append(Picture.from_file(path, relative, CAPTIONS.get(path.name, "")))
    return pictures


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        return [item for key, value in data.items() for item in _flatten(value, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), data)]


def _analyses(root: Path) -> list[Table]:
    tables = []
    for path in sorted((root / "analysis").glob("*.json")):
        items = [(key, value) for key, value in _flatten(json.loads(path.read_text()))
                 if isinstance(value, (int, float, str, bool))]
        if items:
            tables.append(Table(["figure", "value"], [[key, _compact(value)] for key, value in items[:40]],
                                f"analysis/{path.name}", "" if len(items) <= 40 else f"{len(items)} figures; "
                                "the first 40 shown"))
    return tables


# ----- Pareto: trained runs against measured cost -------------------------------------------------------------
def _network_key(network: dict[str, Any]) -> str:
    """What identifies a network across seeds: its spec without the architecture's metadata."""
    spec = json.loads(json.dumps(network))
    if isinstance(spec.get("architecture"), dict):
        spec["architecture"].pop("metadata", None)
    return json.dumps(spec, sort_keys=True)


def _run_name(record: dict[str, Any], run: Path) -> tuple[str, str, dict[str, Any]]:
    """Name, group (searched or hand-designed) and architecture metadata of a run's network."""
    meta = (record["network"].get("architecture") or {}).get("metadata") or {}
    if meta.get("strategy"):
        budget = _budget_of(meta)
        return f"{meta['strategy']} {budget.text if budget else run.name}", "searched", meta
    return record["network"]["kind"], "hand-designed", meta


def pareto_points(runs: Sequence[str | Path], patch: Sequence[int], batch: int,
                  device: str = "cpu") -> list[dict[str, Any]]:
    """Trained runs as Pareto points: validation Dice (mean and spread over the runs of one network, e.g. seeds)
    and the network's cost measured at ``patch`` and ``batch``; refuses a run without validation Dice."""
    groups: dict[str, dict[str, Any]] = {}
    for run in map(Path, runs):
        record = read_run(run)
        dice = (record.get("validation") or {}).get("val_dice")
        if record.get("status") != "finished" or dice is None:
            raise SegnasInputError("not a finished run with a validation Dice (a run of --fold all has none)", run)
        key = _network_key(record["network"])
        if key not in groups:
            name, group, meta = _run_name(record, run)
            groups[key] = {"name": name, "group": group, "network": record["network"], "dice": [], "runs": [],
                           "search_seconds": _total_seconds(meta.get("search_seconds")), "steps": set(),
                           "per_label": {}}
        groups[key]["dice"].append(float(dice))
        for name, value in record["validation"].items():  # val_<metric>/<structure>: the trainer's per-label scores
            metric, _, structure = name.removeprefix("val_").partition("/")
            if structure and metric in PER_LABEL_METRICS and value is not None:
                groups[key]["per_label"].setdefault(metric, {}).setdefault(structure, []).append(float(value))
        groups[key]["runs"].append(run.name)
        groups[key]["steps"].add(record.get("steps"))
    points = []
    for item in groups.values():
        network = network_from_dict(item["network"])
        # a network of a larger stride than the search's space cannot take its patch: the patch padded to it
        taken = [-(-side // stride) * stride for side, stride in zip(patch, network.stride())]
        cost = measure_cost(network, taken, batch, device)
        points.append({"name": item["name"], "group": item["group"], "runs": item["runs"], "patch": taken,
                       "dice": statistics.mean(item["dice"]),
                       "dice_sd": statistics.stdev(item["dice"]) if len(item["dice"]) > 1 else None,
                       **{f"{metric}_per_label": {name: statistics.mean(values) for name, values in labels.items()}
                          for metric, labels in item["per_label"].items()},
                       "memory_bytes": cost.memory_bytes, "parameters": cost.parameters,
                       "seconds_per_step": cost.seconds_per_step,
                       "search_seconds": item["search_seconds"], "steps": sorted(s for s in item["steps"] if s)})
    return points


#: The per-structure scores a trained run's last validation holds (NSD and HD95 only where the run knew its
#: spacing), with the digits the report shows.
PER_LABEL_METRICS = {"dice": 3, "nsd": 3, "hd95": 1}


def _per_label(values: dict[str, float], digits: int) -> str:
    """``{"RV": 0.71, ...}`` as ``RV 0.710, ...`` (empty for a run without the metric)."""
    return ", ".join(f"{name} {value:.{digits}f}" for name, value in values.items())


def _pareto(points: list[dict[str, Any]], budgets: list[Budget], patch: Sequence[int], batch: int,
            scratch: Path) -> tuple[Table, Picture]:
    rows = [[p["name"], p["group"], str(len(p["runs"])), f"{p['dice']:.3f}",
             f"{p['dice_sd']:.3f}" if p["dice_sd"] is not None else "",
             *(_per_label(p.get(f"{metric}_per_label", {}), digits) for metric, digits in PER_LABEL_METRICS.items()),
             f"{p['memory_bytes'] / 2**20:,.0f}",
             f"{p['parameters']:,}", "×".join(map(str, p["patch"])), ", ".join(map(str, p["steps"])),
             _seconds(p["search_seconds"])]
            for p in sorted(points, key=lambda p: p["memory_bytes"])]
    steps = {tuple(p["steps"]) for p in points}
    note = (f"Validation Dice of each run's own fold; cost measured at patch {list(patch)}, batch {batch}, as the "
            "search measured its candidates (padded to the stride of a network that cannot take it). "
            + ("" if len(steps) <= 1 else "The runs were trained for different numbers of steps: compare with care."))
    table = Table(["network", "group", "runs", "Dice", "sd", "Dice per structure", "NSD per structure (1 mm)",
                   "HD95 per structure (mm)", "memory (MiB)", "parameters", "measured at", "steps", "search time"],
                  rows, "trained networks", note)
    path = pareto_figure(points, budgets, scratch / "pareto.png")
    return table, Picture.from_file(path, "Pareto fronts", "Validation Dice against measured training memory and "
                                    "against parameters; lines join each group's non-dominated points, dashed "
                                    "lines mark the search's budgets, bars the spread over runs; the key under "
                                    "the panels names the numbered points.")


# ----- the report ---------------------------------------------------------------------------------------------
def build_report(search_dir: str | Path, runs: Sequence[str | Path] = (), device: str | None = None) -> SearchReport:
    """Gather a search folder (and trained ``runs``) into a :class:`SearchReport`; refuses a non-search folder.
    ``device`` measures the runs' networks (default: where the search measured its winners)."""
    folder = SearchFolder(search_dir)
    record = folder.record()
    root = folder.path
    results = folder.results()
    load_strategies()
    strategy = record.get("strategy", "?")
    report = SearchReport(
        title=f"segnas search: {strategy} on {record.get('dataset', '?')}", folder=str(root.resolve()),
        facts=[("strategy", strategy), ("profile", _compact(record.get("profile"))),
               ("dataset", _compact(record.get("dataset"))), ("data folder", _compact(record.get("data_dir"))),
               ("fold", _compact(record.get("fold"))), ("seed", _compact(record.get("seed"))),
               ("written by", _compact(record.get("written_by")))],
        settings=[(key, _compact(value)) for key, value in (record.get("settings") or {}).items()],
        budgets=_budget_table(results, float((record.get("settings") or {}).get("window") or BUDGET_WINDOW)),
        winners=_winners(folder, results),
        generated=datetime.datetime.now().isoformat(timespec="seconds"))
    unfinished = sorted(path.parent.name for path in root.glob("*/state.json")
                        if not (path.parent / "arch.json").is_file())
    for label in unfinished:
        report.missing.append(f"{label}: no winner yet (the search stopped before it finished this budget); "
                              f"segnas search ... --out {root} --resume continues it")
    if not results:
        report.missing.append("no winner at all: the search has not finished any budget")
    elif not any(w.leaderboard for w in report.winners):
        report.missing.append(f"no leaderboard: {strategy} derives its winner rather than ranking candidates")
    run_folders = _run_folders(root)
    with tempfile.TemporaryDirectory() as scratch:
        report.curves, report.runs_inside = _curves(root, run_folders, Path(scratch))
        report.pictures = _pictures(root, run_folders)
        report.analyses = _analyses(root)
        if runs:
            patch, batch, device = _cost_setting(results, folder, device)
            budgets = [b for b in (_budget_of(a.metadata) for a in results.values()) if b is not None]
            points = pareto_points(runs, patch, batch, device)
            report.pareto, report.pareto_picture = _pareto(points, budgets, patch, batch, Path(scratch))
    if not report.curves:
        report.missing.append("no super-net training log (no supernet/log.jsonl in the folder)")
    try:
        offered = get_strategy(strategy, root / "search.json").analyses
    except SegnasInputError:
        offered = ()
    for analysis in offered:
        if not (root / "analysis" / f"{analysis}.json").is_file():
            report.missing.append(f"no {analysis} analysis: segnas analyze {root} {analysis}")
    if not runs:
        report.missing.append("no trained results, so no Pareto plot: train the winners (segnas train --arch "
                              f"{root}/LABEL/arch.json) and hand-designed networks (segnas train --net monai-unet), "
                              f"then segnas report {root} --runs RUN_DIR ...")
    return report


def _cost_setting(results: dict[str, Architecture | CellArchitecture], folder: SearchFolder,
                  device: str | None) -> tuple[list[int], int, str]:
    """The patch, batch and device the winners' costs were measured at (without a winner: the plan's patch,
    batch 2, CPU), so that trained networks are measured as the search measured its candidates; a CUDA device
    that this machine lacks becomes the CPU."""
    patch, batch, measured_on = list(folder.plan().patch_size), 2, "cpu"
    for arch in results.values():
        cost = arch.metadata.get("cost")
        if isinstance(cost, dict) and "patch_size" in cost:
            patch, batch, measured_on = list(cost["patch_size"]), int(cost["batch_size"]), cost.get("device", "cpu")
            break
    device = device or measured_on
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("the search measured its costs on %s; this machine has no CUDA device, so the trained networks "
                    "are measured on the CPU", device)
        device = "cpu"
    return patch, batch, device


def render_report(report: SearchReport) -> str:
    """The page's HTML (Jinja2, autoescaped)."""
    environment = jinja2.Environment(loader=jinja2.PackageLoader("segnas.report", "templates"),
                                     autoescape=jinja2.select_autoescape(["html", "j2"]),
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return environment.get_template("search_report.html.j2").render(report=report)


def write_report(search_dir: str | Path, out: str | Path | None = None, runs: Sequence[str | Path] = (),
                 force: bool = False, device: str | None = None) -> Path:
    """Write the page to ``out`` (default ``SEARCH_DIR/report.html``) in one go: an existing file is refused
    without ``force``, a failure leaves no partial file; returns the path."""
    target = Path(out) if out is not None else Path(search_dir) / "report.html"
    if target.is_dir():
        raise SegnasInputError("is a folder; give the report's file name (e.g. report.html)", target)
    if target.exists() and not force:
        raise SegnasInputError("exists; pass --force to overwrite it", target)
    if not target.parent.is_dir():
        raise SegnasInputError("the report's folder does not exist", target.parent)
    html = render_report(build_report(search_dir, runs, device))
    return atomic_write_text(target, html)

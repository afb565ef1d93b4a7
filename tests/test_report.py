"""``segnas report``: the page is parsed with an HTML parser and its parts checked; every registered strategy's
folder is reported by tests/test_strategies.py through :func:`check_report`."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from segnas.api import report, search, train
from segnas.engine.run import read_run
from segnas.errors import SegnasInputError
from segnas.networks.registry import MonaiUNetSpec
from segnas.spaces.architecture import load_architecture
from segnas.utils.files import file_mode
from tests.conftest import run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ReportPage(HTMLParser):
    """What a reader of the page sees: section ids, embedded images, tables (cell texts), list items, links."""

    def __init__(self, html: str):
        super().__init__()
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.external: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.items: list[str] = []
        self._cell: list[str] | None = None
        self._item: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "img":
            self.images.append(values.get("src") or "")
        for name in ("src", "href"):
            link = values.get(name) or ""
            if link and not link.startswith(("data:", "#")):
                self.external.append(link)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "li":
            self._item = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "li" and self._item is not None:
            self.items.append("".join(self._item).strip())
            self._item = None

    def handle_data(self, data: str) -> None:
        for sink in (self._cell, self._item):
            if sink is not None:
                sink.append(data)

    def table_with(self, header: str) -> list[list[str]]:
        return next(table for table in self.tables if table and header in table[0])


def check_report(search_dir: Path) -> ReportPage:
    """Render the folder's report and check what every strategy's page must hold: a row and a section per winner,
    every image a real embedded PNG, nothing fetched from outside, each part present or listed as missing."""
    path = report(search_dir)
    assert path == search_dir / "report.html"
    page = ReportPage(path.read_text())
    labels = sorted(p.parent.name for p in search_dir.glob("*/arch.json"))
    budgets = page.table_with("label")
    assert sorted(row[0] for row in budgets[1:]) == labels
    assert {f"winner-{label}" for label in labels} <= page.ids
    assert {"search", "budgets", "winners", "training", "pareto", "missing"} <= page.ids
    assert page.images and not page.external
    for source in page.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == PNG_SIGNATURE
    assert any("no trained results" in item for item in page.items)
    return page


@pytest.fixture(scope="module")
def searched(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HyperSegNAS search, a winner trained with two seeds and MONAI's UNet with one (2 steps each)."""
    root = tmp_path_factory.mktemp("report")
    search(tiny_dataset, root / "search", "hypersegnas", budgets=["3.5MB"], profile="tiny", device="cpu",
           show_progress=False)
    arch = load_architecture(root / "search" / "budget-3.5MB" / "arch.json")
    for seed in (0, 1):
        train(tiny_dataset, arch, root / f"winner_{seed}", steps=2, batch_size=1, seed=seed, device="cpu",
              show_progress=False)
    train(tiny_dataset, MonaiUNetSpec(1, 3, channels=(4, 8, 16, 32, 64)), root / "unet", steps=2, batch_size=1,
          device="cpu", show_progress=False)
    return root


def test_the_page_shows_winners_leaderboard_curve_and_says_what_is_missing(searched: Path, tmp_path: Path) -> None:
    folder = tmp_path / "search"
    shutil.copytree(searched / "search", folder)
    page = check_report(folder)
    budgets = page.table_with("label")
    row = dict(zip(budgets[0], budgets[1]))
    meta = load_architecture(folder / "budget-3.5MB" / "arch.json").metadata
    assert row["budget"] == "3.5MB" and row["parameters"] == f"{meta['cost']['parameters']:,}"
    assert row["scores"].startswith("supernet_score")
    leaderboard = page.table_with("finetuned_score")
    assert leaderboard[1][0] == "1"  # ranked, best first
    assert "supernet-training-curve" in page.ids
    assert any(item.startswith("no ranking analysis: segnas analyze") for item in page.items)


def test_trained_runs_become_pareto_points_with_seeds_pooled(searched: Path, tmp_path: Path) -> None:
    folder = tmp_path / "search"
    shutil.copytree(searched / "search", folder)
    out = tmp_path / "page.html"
    runs = [searched / "winner_0", searched / "winner_1", searched / "unet"]
    page = ReportPage(report(folder, out, runs).read_text())
    assert out.stat().st_mode & 0o777 == file_mode()  # readable by others as the umask allows
    table = page.table_with("group")
    rows = {row[0]: dict(zip(table[0], row)) for row in table[1:]}
    assert set(rows) == {"hypersegnas 3.5MB", "monai-unet"}
    dice = [read_run(run)["validation"]["val_dice"] for run in runs[:2]]
    assert rows["hypersegnas 3.5MB"]["runs"] == "2"
    assert rows["hypersegnas 3.5MB"]["Dice"] == f"{sum(dice) / 2:.3f}"
    assert rows["monai-unet"]["group"] == "hand-designed" and rows["monai-unet"]["sd"] == ""
    unet = read_run(runs[2])["validation"]
    assert rows["monai-unet"]["Dice per structure"] == ", ".join(
        f"{key.split('/')[1]} {value:.3f}" for key, value in unet.items() if key.startswith("val_dice/"))
    for column, metric, digits in (("NSD per structure (1 mm)", "nsd", 3), ("HD95 per structure (mm)", "hd95", 1)):
        scored = {key.split("/")[1]: value for key, value in unet.items() if key.startswith(f"val_{metric}/")}
        assert scored, f"the run's last validation has no {metric}"  # the trainer knew the plan's spacing
        assert rows["monai-unet"][column] == ", ".join(f"{name} {value:.{digits}f}" for name, value in scored.items())
    assert "pareto-fronts" in page.ids
    assert not any("no trained results" in item for item in page.items)


def test_refusals_write_nothing(searched: Path, tmp_path: Path) -> None:
    folder = tmp_path / "search"
    shutil.copytree(searched / "search", folder)
    (folder / "report.html").write_text("earlier")
    with pytest.raises(SegnasInputError, match="exists; pass --force"):
        report(folder)
    assert (folder / "report.html").read_text() == "earlier"
    with pytest.raises(SegnasInputError, match="not a segnas search folder"):
        report(searched / "unet", tmp_path / "x.html")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(searched / "unet", unfinished)
    record = json.loads((unfinished / "run.json").read_text())
    record["status"] = "running"
    (unfinished / "run.json").write_text(json.dumps(record))
    with pytest.raises(SegnasInputError, match="not a finished run"):
        report(folder, tmp_path / "y.html", [unfinished])
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "y.html").exists()
    result = run_cli("report", str(folder))
    assert result.returncode == 2 and result.stderr.startswith("segnas: error: ")
    assert "report.html: exists" in result.stderr


def test_pareto_labels_of_coinciding_points_are_staggered() -> None:
    """A network drawn twice (a search that returned the hand-designed preset) keeps both labels readable; a
    point in the right quarter of the axes is named to its left (inside the axes)."""
    import matplotlib.pyplot as plt

    from segnas.report.plots import _annotate_staggered

    fig, ax = plt.subplots()
    ax.set_xlim(0, 200)
    _annotate_staggered(ax, [(65.0, 0.864, "preset"), (65.0, 0.864, "search"), (160.0, 0.87, "unet")], log_x=False)
    offsets = {text.get_text(): text.xyann for text in ax.texts}
    sides = {text.get_text(): text.get_horizontalalignment() for text in ax.texts}
    plt.close(fig)
    assert offsets["preset"][1] != offsets["search"][1] and offsets["unet"][1] == offsets["preset"][1]
    assert offsets["unet"][0] < 0 < offsets["preset"][0] and (sides["unet"], sides["preset"]) == ("right", "left")


def test_pareto_points_carry_numbers_and_a_key_names_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each point is labelled by its number in memory order, the same in both panels, and the key under the
    panels names every network once with its group."""
    import segnas.report.plots as plots

    drawn: list = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or path)
    points = [{"name": name, "group": group, "dice": dice, "dice_sd": 0.003, "memory_bytes": memory * 2**20,
               "parameters": parameters}
              for name, group, dice, memory, parameters in (("unet-32", "hand-designed", 0.872, 475, 19_218_794),
                                                            ("searched-a", "searched", 0.871, 245, 2_262_291),
                                                            ("unet-8", "hand-designed", 0.856, 73, 1_203_362))]
    plots.pareto_figure(points, [], tmp_path / "pareto.png")
    memory_panel, parameter_panel, key = drawn[0].axes
    labels = {text.get_text(): text.xy for text in memory_panel.texts}
    assert labels == {"1": (73.0, 0.856), "2": (245.0, 0.871), "3": (475.0, 0.872)}
    assert sorted(text.get_text() for text in parameter_panel.texts) == ["1", "2", "3"]
    assert [text.get_text() for text in key.texts] == ["1  unet-8 (hand-designed)", "2  searched-a (searched)",
                                                       "3  unet-32 (hand-designed)"]


def test_pareto_figure_adds_a_step_time_panel_and_draws_each_limit_of_a_combined_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import segnas.report.plots as plots
    from segnas.cost.budget import parse_budget

    drawn: list = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or path)
    points = [{"name": name, "group": "hand-designed", "dice": 0.8, "dice_sd": None, "memory_bytes": memory * 2**20,
               "parameters": 10**6, "seconds_per_step": seconds} for name, memory, seconds in (("a", 100, 0.4),
                                                                                              ("b", 300, 1.1))]
    plots.pareto_figure(points, [parse_budget("250MiB+800ms/step")], tmp_path / "pareto.png")
    memory_panel, parameter_panel, step_panel, _ = drawn[0].axes
    assert step_panel.get_xlabel() == "measured training step (s)"
    assert [line.get_xdata()[0] for line in memory_panel.lines if line.get_linestyle() == "--"] == [250.0]
    assert [line.get_xdata()[0] for line in step_panel.lines if line.get_linestyle() == "--"] == [0.8]
    assert not [line for line in parameter_panel.lines if line.get_linestyle() == "--"]


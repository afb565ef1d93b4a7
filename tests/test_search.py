"""HyperSegNAS search: budgets, candidate collection under a measured budget, the CLI end to end, resume."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from segnas.cost.budget import budget_fit, parse_budget
from segnas.cost.measure import CostReport
from segnas.errors import SegnasInputError
from segnas.spaces import Architecture, TopologySpace
from segnas.spaces.presets import extreme_architectures
from segnas.strategies.hypersegnas.candidates import collect_candidates, cost_proxy
from tests.conftest import run_cli, run_cli_here


def test_budget_units() -> None:
    assert parse_budget("4GB").kind == "memory" and parse_budget("4GB").value == 4e9
    assert parse_budget("3GiB").value == 3 * 2**30
    assert parse_budget("2.5Mparams").kind == "parameters" and parse_budget("2.5Mparams").value == 2.5e6
    assert parse_budget("20GFLOPs").kind == "flops" and parse_budget("20GFLOPs").value == 20e9
    assert parse_budget("150ms").kind == "latency" and parse_budget("0.2s").value == 200.0
    assert parse_budget("4GB").label() == "budget-4GB"
    assert parse_budget("1.2s/step").kind == "step" and parse_budget("800ms/step").value == 800.0
    assert parse_budget("1e+6params").value == 1e6  # an exponent's + is not a join
    for bad in ("4 parsecs", "GB", "-1GB", "4XB", "2/step", "250MiB+"):
        with pytest.raises(SegnasInputError, match="not understood"):
            parse_budget(bad)
    with pytest.raises(SegnasInputError, match="limits one kind twice"):
        parse_budget("1GB+200MiB")


def test_a_combined_budget_is_met_only_when_every_limit_holds() -> None:
    budget = parse_budget("250MiB+1.2s/step")
    assert budget.kinds == ("memory", "step") and budget.label() == "budget-250MiB-1.2sstep"
    assert [limit.text for limit in budget.limits()] == ["250MiB", "1.2s/step"]

    def report(mib: float, seconds: float) -> CostReport:
        return CostReport(parameters=1, flops_forward=1.0, memory_bytes=int(mib * 2**20), memory_method="fake",
                          latency_ms=1.0, seconds_per_step=seconds, device="cpu", patch_size=[8, 8, 8], batch_size=1)

    assert budget.cost_of(report(245, 0.6)) == pytest.approx(245 * 2**20)  # memory the tightest, nearly spent
    assert budget.cost_of(report(100, 1.2)) == pytest.approx(budget.value)  # the step time exactly spent
    slow = report(100, 1.5)  # under the memory limit, over the step ceiling: over the budget
    assert budget.cost_of(slow) > budget.value and budget.share(slow) == pytest.approx(1.25)
    fit = budget_fit(budget, slow)
    assert not fit["inside_window"] and [limit["ratio"] for limit in fit["limits"]] == pytest.approx([0.4, 1.25])
    assert budget.cost_of(report(100, 1.5).to_dict()) == budget.cost_of(slow)  # a stored report reads the same


def _fake_measure(arch: Architecture) -> CostReport:
    """A deterministic cost that follows the proxy with architecture-specific noise (like real memory)."""
    noise = 1 + 0.05 * (int(arch.key()[:6], 16) / 16**6 - 0.5)
    memory = int(1e6 * cost_proxy(arch) * noise + 5e7)
    return CostReport(parameters=1, flops_forward=1.0, memory_bytes=memory, memory_method="fake", latency_ms=1.0,
                      seconds_per_step=1.0, device="cpu", patch_size=[16, 16, 16], batch_size=1)


@pytest.mark.parametrize("fraction", [0.04, 0.5, 0.95])
def test_collector_reaches_small_and_large_budgets(fraction: float) -> None:
    space = TopologySpace()
    small, large = (_fake_measure(a).memory_bytes for a in extreme_architectures(space))
    budget = parse_budget(f"{small + fraction * (large - small):.0f}B")
    accepted = []
    state = collect_candidates(space, budget, _fake_measure, count=8, window=0.03, seed=0,
                               on_accept=lambda arch, report: accepted.append((arch, report)))
    assert len(accepted) == 8, f"only {len(accepted)} after {state.measured} measurements"
    for arch, report in accepted:
        assert arch.problems() == []
        assert budget.value * 0.97 <= report.memory_bytes <= budget.value
    assert state.measured <= 60  # the sampler reaches the window; rejection sampling would need thousands
    assert len({a.key() for a, _ in accepted}) == 8


def test_space_extremes_are_feasible_and_ordered() -> None:
    small, large = extreme_architectures(TopologySpace())
    assert cost_proxy(small) < cost_proxy(large)
    assert small.edges.sum() == 12 and large.edges.all()


@pytest.fixture(scope="module")
def tiny_search(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A full tiny search; the budget is the middle of the tiny space's measured memory range."""
    from segnas.cost.measure import measure_cost
    from segnas.networks.registry import TopologyNetworkSpec
    from segnas.strategies.hypersegnas.strategy import PROFILES

    space = PROFILES["tiny"].space
    costs = [measure_cost(TopologyNetworkSpec(1, 3, a, "mean", 0.5), [24, 24, 24], 1).memory_bytes
             for a in extreme_architectures(space)]
    budget = f"{int(np.mean(costs) * 1.2)}B"
    out = tmp_path_factory.mktemp("search") / "s"
    result = run_cli("search", tiny_dataset, "--budget", budget, "--profile", "tiny", "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, budget


def test_search_writes_architecture_leaderboard_and_picture(tiny_search: tuple[Path, str]) -> None:
    out, budget = tiny_search
    folder = out / f"budget-{budget}"
    arch = Architecture.load(folder / "arch.json")
    meta = arch.metadata
    assert meta["strategy"] == "hypersegnas" and meta["budget"] == budget
    assert meta["cost"]["memory_bytes"] <= meta["budget_value"]
    assert 0 <= meta["finetuned_score"] <= 1 and meta["candidates_measured"] >= meta["candidates_accepted"] >= 1
    assert set(meta["search_seconds"]) == {"collection", "scoring", "finetuning"}
    assert meta["search_seconds"]["finetuning"] > 0  # the cost of the search is recorded with its result
    rows = list(csv.DictReader((folder / "leaderboard.csv").open()))
    assert len(rows) == meta["candidates_accepted"] and rows[0]["rank"] == "1"
    assert (folder / "arch.png").stat().st_size > 5000
    assert (out / "supernet" / "model_final.pt").is_file()


def test_search_resume_reuses_measurements_and_scores(tiny_search: tuple[Path, str], tiny_dataset: Path) -> None:
    out, budget = tiny_search
    state_file = out / f"budget-{budget}" / "state.json"
    before = json.loads(state_file.read_text())
    result = run_cli("search", tiny_dataset, "--budget", budget, "--profile", "tiny", "--out", out, "--resume",
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    after = json.loads(state_file.read_text())
    assert after["collection"]["measured"] == before["collection"]["measured"]
    assert after["candidates"] == before["candidates"]  # nothing re-measured or re-scored


def test_search_resume_with_new_search_settings_keeps_the_supernet(tiny_search: tuple[Path, str],
                                                                   tiny_dataset: Path, tmp_path: Path) -> None:
    from segnas.strategies.hypersegnas.strategy import PROFILES

    out, budget = tiny_search
    copy = tmp_path / "s"
    shutil.copytree(out, copy)
    supernet_file = copy / "supernet" / "model_final.pt"
    supernet_before = supernet_file.read_bytes()
    result = run_cli("search", tiny_dataset, "--budget", budget, "--profile", "tiny", "--out", copy, "--resume",
                     "--finetune-steps", "3", "--finetune-lr-factor", "1", "--score-cases", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "searching this budget again" in result.stdout + result.stderr
    assert supernet_file.read_bytes() == supernet_before  # the super-net was not trained again
    state = json.loads((copy / f"budget-{budget}" / "state.json").read_text())
    assert state["settings"]["finetune_steps"] == 3 and state["settings"]["finetune_lr_factor"] == 1
    assert state["settings"]["score_cases"] == 1
    assert all("supernet_score" in item for item in state["candidates"].values())
    checkpoints = list((copy / f"budget-{budget}" / "finetune").glob("*/checkpoint_last.pt"))
    assert checkpoints  # the top candidate was fine-tuned again, with the new settings
    for checkpoint in checkpoints:
        trained = torch.load(checkpoint, weights_only=False)
        assert trained["step"] == 3 and trained["config"]["lr"] == PROFILES["tiny"].lr  # factor 1
    settings = json.loads((copy / "search.json").read_text())["settings"]
    assert settings["finetune_steps"] == 3  # later commands (analyze) see the settings the search now uses
    result = run_cli("search", tiny_dataset, "--budget", budget, "--profile", "tiny", "--out", copy, "--resume",
                     "--supernet-steps", "5", "--device", "cpu")
    assert result.returncode == 2 and "settings.supernet_steps: 4 -> 5" in result.stderr


def test_preset_candidate_is_fine_tuned_beside_the_searched_ones(tiny_search: tuple[Path, str],
                                                                 tiny_dataset: Path, tmp_path: Path) -> None:
    """``--preset-candidate on``: the space's U-Net preset, measured under the budget, joins the candidates
    whatever its super-net rank and is fine-tuned; the winner is the best fine-tuned estimate of them all."""
    from segnas.spaces.presets import unet_architecture
    from segnas.strategies.hypersegnas.strategy import PROFILES

    out, budget = tiny_search
    copy = tmp_path / "s"
    shutil.copytree(out, copy)
    result = run_cli("search", tiny_dataset, "--budget", budget, "--profile", "tiny", "--out", copy, "--resume",
                     "--preset-candidate", "on", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((copy / f"budget-{budget}" / "state.json").read_text())
    preset = state["candidates"][unet_architecture(PROFILES["tiny"].space).key()]
    assert preset["preset"] == "unet" and preset["cost"]["memory_bytes"] <= parse_budget(budget).value
    finetuned = {key: item["finetuned_score"] for key, item in state["candidates"].items() if "finetuned_score" in item}
    assert len(finetuned) == PROFILES["tiny"].top_n + ("preset" not in max(
        state["candidates"].values(), key=lambda item: item["supernet_score"]))  # top N and the preset
    meta = Architecture.load(copy / f"budget-{budget}" / "arch.json").metadata
    assert meta["finetuned_score"] == max(finetuned.values())
    assert ("preset" in meta) == (preset["finetuned_score"] == max(finetuned.values()))
    rows = list(csv.DictReader((copy / f"budget-{budget}" / "leaderboard.csv").open()))
    assert [row["preset"] for row in rows].count("unet") == 1


def test_search_refuses_bad_budgets_and_foreign_folders(tiny_search: tuple[Path, str], tiny_dataset: Path,
                                                        tmp_path: Path) -> None:
    out, budget = tiny_search
    result = run_cli_here("search", tiny_dataset, "--budget", "4 parsecs", "--profile", "tiny", "--out", tmp_path / "x")
    assert result.returncode == 2 and "not understood" in result.stderr and not (tmp_path / "x").exists()
    result = run_cli_here("search", tiny_dataset, "--budget", "1TB", "--profile", "tiny", "--out", tmp_path / "big",
                     "--device", "cpu")
    assert result.returncode == 2 and "outside the memory range that strategy hypersegnas can reach" in result.stderr
    assert "MiB, " in result.stderr and "(measured)" in result.stderr  # the range is in the message
    assert not (tmp_path / "big").exists()  # refused before any training or writing
    result = run_cli_here("search", tiny_dataset, "--budget", budget, "--profile", "cpu", "--out", out, "--resume")
    assert result.returncode == 2 and "other settings" in result.stderr and "profile" in result.stderr


def test_two_process_search_matches_single_process_candidates(tiny_search: tuple[Path, str], tiny_dataset: Path,
                                                              tmp_path: Path) -> None:
    """torchrun, 2 CPU processes on gloo: DDP super-net training, scoring and fine-tuning split across ranks.

    Candidate collection measures on rank 0 with the same seed, so the candidates and their measured costs
    equal the single-process run's; scores differ because rank 1 trains the super-net on its own batches.
    """
    import os
    import subprocess
    import sys

    single, budget = tiny_search
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "segnas", "search", str(tiny_dataset), "--budget", budget, "--profile", "tiny",
               "--out", str(out), "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ours = json.loads((out / f"budget-{budget}" / "state.json").read_text())
    theirs = json.loads((single / f"budget-{budget}" / "state.json").read_text())
    assert sorted(ours["candidates"]) == sorted(theirs["candidates"])
    for key in ours["candidates"]:
        assert ours["candidates"][key]["cost"]["memory_bytes"] == theirs["candidates"][key]["cost"]["memory_bytes"]
        assert "supernet_score" in ours["candidates"][key]
    supernet_run = json.loads((out / "supernet" / "run.json").read_text())
    assert supernet_run["world_size"] == 2 and supernet_run["validation"]["ranks_in_sync"] is True
    assert Architecture.load(out / f"budget-{budget}" / "arch.json").metadata["finetuned_score"] >= 0


def test_rank_correlations() -> None:
    from segnas.strategies.hypersegnas.analysis import rank_correlations

    assert rank_correlations([1, 2, 3, 4], [10, 20, 30, 40])["kendall_tau"] == pytest.approx(1.0)
    assert rank_correlations([1, 2, 3, 4], [40, 30, 20, 10])["spearman_rho"] == pytest.approx(-1.0)


def test_finetuned_network_resumes_a_finished_run_without_training(tiny_search: tuple[Path, str],
                                                                    tmp_path: Path) -> None:
    from segnas.api import open_search

    out, _ = tiny_search
    search = open_search(out, "cpu")
    arch = extreme_architectures(search.profile.space)[1]
    trained = search.finetuned_network(arch, tmp_path / "ft", steps=10, lr_factor=1.0)
    log = (tmp_path / "ft" / "log.jsonl").read_text()
    reloaded = search.finetuned_network(arch, tmp_path / "ft", steps=10, lr_factor=1.0, resume=True)
    assert (tmp_path / "ft" / "log.jsonl").read_text() == log  # not one step trained again
    for a, b in zip(trained.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)
    fresh = search.finetuned_network(arch, tmp_path / "other", steps=10, lr_factor=1.0, resume=True)
    assert search.evaluator.score(fresh) == search.evaluator.score(trained)  # no checkpoint: trains as without resume


def test_analyze_ranking_trains_candidates_and_reports_correlations(tiny_search: tuple[Path, str],
                                                                    tmp_path: Path) -> None:
    out, budget = tiny_search
    result = run_cli("analyze", "ranking", out, "--budget", budget, "--count", "3", "--steps", "2",
                     "--out", tmp_path / "ranking", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "ranking" / "ranking.json").read_text())
    assert len(report["architectures"]) == 3
    assert -1 <= report["finetuned"]["kendall_tau"] <= 1 or np.isnan(report["finetuned"]["kendall_tau"])
    assert all((tmp_path / "ranking" / "standalone" / "2-steps" / r["key"] / "model_final.pt").is_file()
               for r in report["architectures"])
    assert (tmp_path / "ranking" / "ranking.png").stat().st_size > 5000


def test_analyze_ranking_of_random_architectures_spans_memory_and_resumes(tiny_search: tuple[Path, str],
                                                                          tmp_path: Path) -> None:
    out, _ = tiny_search
    args = ("analyze", "ranking", out, "--random", "3", "--seed", "1", "--steps", "2", "--out", tmp_path / "r",
            "--device", "cpu")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "r" / "ranking.json").read_text())
    memory = [row["memory_bytes"] for row in report["architectures"]]
    assert len(memory) == 3 and memory == sorted(memory) and memory[0] < memory[-1]
    assert "random" in report["selection"]
    weights = [tmp_path / "r" / "standalone" / "2-steps" / row["key"] / "model_final.pt" for row in report["architectures"]]
    stamps = [w.stat().st_mtime_ns for w in weights]
    assert run_cli(*args).returncode == 0
    assert [w.stat().st_mtime_ns for w in weights] == stamps  # resumed: nothing trained again
    assert json.loads((tmp_path / "r" / "ranking.json").read_text()) == report


def test_a_ranking_with_every_estimate_known_trains_no_super_net(tiny_search: tuple[Path, str], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A ranking spans sessions on ACDC: the estimates come from an earlier session's record, the ground truth from
    a benchmark's own trainer (``standalone``); then neither the super-net nor a stand-alone run is trained here,
    and each estimate is reported (``progress``) for the record."""
    from segnas.api import open_search
    from segnas.strategies.hypersegnas.analysis import analyze_ranking, spread_architectures

    out, _ = tiny_search
    search = open_search(out, "cpu", show_progress=False)
    architectures = spread_architectures(search, 3, 1)
    known = {key: {"supernet_score": 0.1 * rank, "finetuned_score": 0.2 * rank}
             for rank, key in enumerate(architectures)}
    truths = {key: 0.3 * rank for rank, key in enumerate(architectures)}
    monkeypatch.setattr(search, "train_supernet", lambda: pytest.fail("the super-net was trained"))
    reported: list[dict] = []
    result = analyze_ranking(search, architectures, 2, tmp_path / "r", "three", known,
                             standalone=lambda key, arch: truths[key], progress=reported.append)
    assert [row["standalone"] for row in result["architectures"]] == list(truths.values())
    assert result["finetuned"]["kendall_tau"] == pytest.approx(1.0)
    assert reported[-1] == known and not (tmp_path / "r" / "standalone").exists()


def test_analyze_hypernet_draws_eq6_and_eq7(tiny_search: tuple[Path, str], tiny_dataset: Path,
                                            tmp_path: Path) -> None:
    out, _ = tiny_search
    result = run_cli("analyze", "hypernet", out, "--image", tiny_dataset / "imagesTr" / "synth_000.nii.gz",
                     "--label", tiny_dataset / "labelsTr" / "synth_000.nii.gz", "--stride", "8",
                     "--out", tmp_path / "hyper", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "hyper" / "hypernet.json").read_text())
    assert summary["eq6_mean"] >= 0 and summary["eq7_mean"] > 0  # two architectures give different weights
    assert "eq6_foreground" in summary and (tmp_path / "hyper" / "hypernet.png").stat().st_size > 5000

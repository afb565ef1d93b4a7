"""How the benchmarks train the networks they compare (benchmarks/common.py): a recorded run stands in for a new
one only when it trained the same network the same way (long benchmarks span sessions: the results file is the
record, and a run of another recipe would mix two recipes in one table)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from segnas.data.dataset import load_dataset
from segnas.data.plan import make_plan
from segnas.engine.run import read_run
from segnas.networks.registry import CellUNetSpec, MonaiUNetSpec, cell_unet_host
from segnas.spaces.cells import UNET_CELL_TYPES, CellArchitecture, CellSpace, random_genotype

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def common() -> Any:
    """``benchmarks/common.py`` as a module (the benchmarks import it by that name)."""
    spec = importlib.util.spec_from_file_location("common", BENCHMARKS / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_recorded_runs_are_reused_only_for_the_recipe_they_trained_with(common: Any, tiny_dataset: Path,
                                                                        tmp_path: Path) -> None:
    spec = load_dataset(tiny_dataset)
    plan = make_plan(spec, stride=16, show_progress=False)
    network = MonaiUNetSpec(plan.num_channels, plan.num_classes, channels=(2, 4, 8, 16, 32), num_res_units=1)
    args = SimpleNamespace(steps=2, seeds=[0], smoke=False)
    # a run recorded before recipes were named: it trained with the benchmarks' own recipe
    recorded = {"seed": 0, "train_steps": 2, "mean_dice": 0.5, "mean_nsd": 0.4, "dice": {}}
    done = {"unet": {"fingerprint": common.network_fingerprint(network), "runs": [recorded]}}

    reused = common.train_networks(args, {"unet": network}, tiny_dataset, spec, plan, tmp_path / "a", "cpu",
                                   done=done)
    assert reused["networks"]["unet"]["runs"] == [recorded] and reused["batch_size"] == 4
    assert not (tmp_path / "a").exists()

    trained = common.train_networks(args, {"unet": network}, tiny_dataset, spec, plan, tmp_path / "b", "cpu",
                                    done=done, recipe="defaults")
    run = trained["networks"]["unet"]["runs"][0]
    assert run is not recorded and run["recipe"] == "defaults" and run["train_steps"] == 2
    assert trained["recipe"] == "defaults" and trained["batch_size"] == 2
    record = read_run(tmp_path / "b" / "unet_0")
    assert record["train"]["batch_size"] == 2 and record["augmentation"] == "full"


def test_each_dataset_has_its_own_results_file_and_work_folder(common: Any, tiny_dataset: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hippocampus figures keep their files; another dataset's go beside them, never over them, and its
    searches and runs live in a work folder of their own (a search folder of one dataset cannot resume another's)."""
    name = load_dataset(tiny_dataset).name.lower()
    args = SimpleNamespace(smoke=False, data=tiny_dataset, results=tmp_path)
    assert common.result_path(args, "pareto") == tmp_path / f"pareto_{name}.json"
    assert common.result_path(args, "pareto", ".png") == tmp_path / f"pareto_{name}.png"
    assert common.result_path(SimpleNamespace(smoke=True, data=None, results=tmp_path), "pareto") == \
        tmp_path / "pareto_smoke.json"
    monkeypatch.setattr(common, "configure_logging", lambda: None)  # the process's logging stays the tests'
    parser = common.benchmark_parser("doc", ["run"], "bench", subjects=True, recipes=True)
    parsed = parser.parse_args(["run", "--data", str(tiny_dataset), "--work", str(tmp_path / "w"),
                                "--group-by", "synth", "--recipe", "defaults"])
    assert parsed.work == tmp_path / "w" / name and parsed.group_by == "synth" and parsed.recipe == "defaults"


def _benchmark(name: str) -> Any:
    """``benchmarks/<name>.py`` as a module (after :func:`common`: it imports it by that name)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_later_session_trains_the_searched_cells_from_the_results_file_alone(common: Any, tiny_dataset: Path,
                                                                                tmp_path: Path) -> None:
    """ACDC's searches and their training take several sessions, and a session's work folder does not outlive it:
    the train parts rebuild the searched networks and their plan from what the search part recorded."""
    two_case_subject = r"synth_00(?=[01])|synth_\d+"
    plan = make_plan(load_dataset(tiny_dataset), stride=4, show_progress=False, group_by=two_case_subject)
    space = CellSpace(("zero", "skip_connect", "conv_3x3x3"), nodes=2, placement="encoder-decoder")
    arch = CellArchitecture(space, cell_unet_host(1, plan.num_classes, 4, 3),
                            {t: random_genotype(space, np.random.default_rng(7)) for t in UNET_CELL_TYPES},
                            {"search_seconds": 12.0})
    record = json.loads(json.dumps({"searches": {"search_gumbel": {"architecture": common.architecture_record(arch)}},
                                    "plan": plan.to_dict()}))  # as the results file holds it
    assert "metadata" not in record["searches"]["search_gumbel"]["architecture"]

    scalable = _benchmark("scalable_nas")
    args = SimpleNamespace(work=tmp_path / "gone", data=tiny_dataset)  # no search folder: only the record
    networks, rebuilt_plan = scalable._networks(args, record)
    assert rebuilt_plan == plan and rebuilt_plan.subjects == plan.subjects
    assert networks["searched"].architecture.cells == arch.cells
    assert common.network_fingerprint(networks["searched"]) == \
        common.network_fingerprint(CellUNetSpec(1, plan.num_classes, arch))
    with pytest.raises(SystemExit, match="run the search part"):  # nothing recorded, no folder: said so
        scalable._networks(args, {"searches": {}})

    iac_lth = _benchmark("iac_lth")  # the same reading for IAC-LTH's two searches
    both = {"searches": {name: record["searches"]["search_gumbel"] for name in ("full", "lth")}, "plan": record["plan"]}
    full, lth, rebuilt_plan = iac_lth._searched(args, both)
    assert full.cells == lth.cells == arch.cells and rebuilt_plan == plan

"""Versioned files: every format upgrades its older versions, refuses newer ones, and the files that older
segnas versions wrote (run folders, search folders, checkpoints, models, the cost cache, results) still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segnas.cost.measure import METHOD_VERSION, CostReport, _read_cache, cache_path, measure_cost
from segnas.engine.run import load_model, read_run, run_network
from segnas.engine.trainer import read_checkpoint
from segnas.errors import SegnasInputError
from segnas.formats import FORMATS, RESULT_FORMAT
from segnas.networks.registry import (MonaiUNetSpec, TopologyNetworkSpec, list_networks, network_class,
                                      network_from_dict)
from segnas.spaces import ArchitectureSampler, TopologySpace
from segnas.strategies.folder import SearchFolder

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
TINY = TopologySpace(num_blocks=3, num_depths=2, channel_mul=0.125)


def _ensure_all_formats_declared() -> None:
    import segnas.api  # noqa: F401  (imports every module that declares a format)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_upgrades_each_older_version_and_refuses_newer(name: str) -> None:
    _ensure_all_formats_declared()
    fmt = FORMATS[name]
    first = 1 if fmt.unversioned is None else fmt.unversioned
    assert all(v in fmt.upgrades for v in range(first, fmt.version)), f"{name}: an older version has no upgrade"
    stamped = fmt.stamp({})
    assert stamped["format"] == name and set(stamped["written_by"]) == {"segnas", "torch", "monai"}
    with pytest.raises(SegnasInputError, match=f"format version {fmt.version + 1}.*upgrade segnas"):
        fmt.load({**stamped, "version": fmt.version + 1}, "f.json")
    with pytest.raises(SegnasInputError, match="not a segnas"):
        fmt.load({"format": "something.else", "version": 1}, "f.json")


def test_saved_files_record_the_versions_that_wrote_them(tmp_path: Path) -> None:
    path = ArchitectureSampler(TINY, 0).sample().save(tmp_path / "a.json")
    written = json.loads(path.read_text())["written_by"]
    assert written["torch"] == torch.__version__ and written["segnas"]


def test_run_folder_of_version_1_is_upgraded(tmp_path: Path) -> None:
    """A run.json of segnas 0.1's first format: monai-unet with its defaults left out."""
    (tmp_path / "run.json").write_text(json.dumps({
        "format": "segnas.run", "version": 1, "dataset": "X", "fold": 0, "status": "finished",
        "network": {"kind": "monai-unet", "in_channels": 1, "out_channels": 3}}))
    record = read_run(tmp_path)
    assert record["version"] == 2 and record["network"]["channels"] == [16, 32, 64, 128, 256]
    assert run_network(tmp_path) == MonaiUNetSpec(1, 3)


def test_model_and_checkpoint_without_header_still_load(tmp_path: Path) -> None:
    arch = ArchitectureSampler(TINY, 1).sample()
    spec = TopologyNetworkSpec(1, 3, arch)
    net = spec.build()
    old_spec = {"kind": "topology", "architecture": arch.to_dict(), "merge": "mean", "in_channels": 1,
                "out_channels": 3}  # as segnas wrote it before specs were typed: no fixed_channel_weight
    torch.save({"network": old_spec, "state_dict": net.state_dict()}, tmp_path / "model_final.pt")
    model, loaded = load_model(tmp_path / "model_final.pt")
    assert loaded == spec
    for a, b in zip(model.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)
    torch.save({"step": 3, "model": net.state_dict()}, tmp_path / "checkpoint_last.pt")
    assert read_checkpoint(tmp_path / "checkpoint_last.pt")["version"] == 1


def test_search_records_of_version_1_are_upgraded(tmp_path: Path) -> None:
    space = TINY.to_dict()
    hyper = {"format": "segnas.search", "version": 1, "strategy": "hypersegnas", "dataset": "X", "space": space,
             "profile": "tiny", "variant": "noanneal", "fold": 0, "seed": 0, "settings": {"space": space, "top_n": 1},
             "data_dir": "/data/X"}
    dints = {"format": "segnas.search", "version": 1, "strategy": "dints", "dataset": "X", "space": space,
             "profile": "tiny", "fold": 0, "seed": 0}
    for name, record in (("hyper", hyper), ("dints", dints)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "search.json").write_text(json.dumps(record))
        (tmp_path / name / "budget-1MB").mkdir()
        (tmp_path / name / "budget-1MB" / "state.json").write_text(json.dumps({"candidates": {}}))
    upgraded = SearchFolder(tmp_path / "hyper").record()
    assert upgraded["settings"]["variant"] == "noanneal" and upgraded["settings"]["top_n"] == 1
    assert "space" not in upgraded and "variant" not in upgraded
    old_dints = SearchFolder(tmp_path / "dints").record()
    assert old_dints["settings"]["space"] == space and old_dints["data_dir"] is None
    assert old_dints["settings"]["patch_size"] is None  # version 3: DiNTS searched the plan's patch
    assert "patch_size" not in upgraded["settings"]
    assert SearchFolder(tmp_path / "dints").load_state("budget-1MB") == {"candidates": {}}
    with pytest.raises(SegnasInputError, match="does not say where its dataset is"):
        from segnas.api import open_search

        open_search(tmp_path / "dints")


def test_cost_cache_of_version_0_is_kept_and_not_reused(tmp_path: Path) -> None:
    """Version 0 was a bare {key: report} without the method version: kept, never hit again."""
    report = CostReport(1, 1.0, 1, "fake", 1.0, 1.0, "cpu", [8, 8, 8], 1)
    cache_path().parent.mkdir(parents=True, exist_ok=True)
    cache_path().write_text(json.dumps({"oldkey": report.to_dict()}))
    assert set(_read_cache(cache_path())) == {"oldkey"}
    measured = measure_cost(TopologyNetworkSpec(1, 2, ArchitectureSampler(TINY, 0).sample()), [8, 8, 8], 1, steps=1)
    assert measured.memory_bytes > 1  # measured anew: the old entry's key lacks the method version
    entries = _read_cache(cache_path())
    assert "oldkey" in entries and any(e.get("method_version") == METHOD_VERSION for e in entries.values())


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_committed_benchmark_results_still_load(path: Path) -> None:
    result = RESULT_FORMAT.read_json(path)
    assert result["version"] == RESULT_FORMAT.version and set(result) - {"format", "version"}


@pytest.mark.parametrize("kind", list_networks())
def test_every_registered_network_builds_trains_and_round_trips_through_a_run_folder(kind: str,
                                                                                     tmp_path: Path) -> None:
    """timm's test_models in spirit: each registered kind, built small, runs forward and backward, and its spec
    and weights come back from a run folder's files unchanged."""
    from segnas.engine.run import RUN_FORMAT, save_model

    spec = network_class(kind).example(1, 3)
    assert network_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    net = spec.build()
    patch = [2 * s for s in spec.stride()]
    x = torch.randn(1, 1, *patch)
    out = net(x, **spec.forward_kwargs())
    assert out.shape == (1, 3, *patch)
    out.float().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    RUN_FORMAT.write_json(tmp_path / "run.json", {"network": spec.to_dict()})
    save_model(tmp_path / "model_final.pt", net, spec)
    assert run_network(tmp_path) == spec
    loaded, loaded_spec = load_model(tmp_path / "model_final.pt")
    net.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x, **spec.forward_kwargs()), net(x, **spec.forward_kwargs()))
    assert loaded_spec == spec


def test_unknown_network_kind_is_a_clear_error() -> None:
    with pytest.raises(SegnasInputError, match="unknown network kind 'resnet'"):
        network_from_dict({"kind": "resnet", "in_channels": 1, "out_channels": 2})
    with pytest.raises(SegnasInputError, match="has no field"):
        network_from_dict({"kind": "monai-unet", "in_channels": 1, "out_channels": 2, "depth": 3})


def test_the_changelog_names_the_version_files_record() -> None:
    """CHANGELOG.md's newest version is the one every file records and the installed package's metadata says."""
    import re
    from importlib.metadata import version

    from segnas.formats import written_by
    from segnas.version import __version__

    changelog = (Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text()
    newest = re.search(r"^## \[(\d+\.\d+\.\d+)\]", changelog, re.MULTILINE)
    assert newest and newest.group(1) == __version__ == written_by()["segnas"] == version("segnas")

"""The commands as a user runs them: arch, cost, predict (geometry), evaluate, download, demo, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segnas.cost.measure import measure_cost
from segnas.engine.postprocess import keep_largest_component
from segnas.engine.run import read_run
from segnas.networks.registry import TopologyNetworkSpec
from segnas.spaces import Architecture, TopologySpace, unet_architecture
from segnas.utils.runtime import precision_name
from tests.conftest import TINY_SPACE, run_cli, run_cli_here

TINY_SPACE_ARGS = ["--blocks", "3", "--depths", "2", "--channel-mul", "0.125"]


def test_arch_sample_show_validate_preset(tmp_path: Path) -> None:
    result = run_cli_here("arch", "sample", *TINY_SPACE_ARGS, "--seed", "4", "--count", "3", "--out", tmp_path / "many")
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "many").glob("*.json"))
    assert len(files) == 3 and all(f.with_suffix(".png").stat().st_size > 5000 for f in files)
    assert Architecture.load(files[0]).space == TINY_SPACE
    again = run_cli_here("arch", "sample", *TINY_SPACE_ARGS, "--seed", "4", "--count", "3", "--out", tmp_path / "again")
    assert again.returncode == 0
    assert [Architecture.load(f).key() for f in files] == \
        [Architecture.load(f).key() for f in sorted((tmp_path / "again").glob("*.json"))]

    shown = run_cli_here("arch", "show", files[0], "--png", tmp_path / "shown.png")
    assert shown.returncode == 0 and "MONAI arch_code_a" in shown.stdout and (tmp_path / "shown.png").exists()
    assert run_cli_here("arch", "validate", files[0]).returncode == 0

    preset = run_cli_here("arch", "preset", "unet", "--out", tmp_path / "unet.json")
    assert preset.returncode == 0
    assert Architecture.load(tmp_path / "unet.json").key() == unet_architecture(Architecture.load(
        tmp_path / "unet.json").space).key()
    refused = run_cli_here("arch", "preset", "unet", "--out", tmp_path / "unet.json")
    assert refused.returncode == 2 and "--force" in refused.stderr


def test_arch_show_says_the_pooling_per_axis(tmp_path: Path) -> None:
    from segnas.networks.registry import CellUNetSpec, cell_unet_host
    from segnas.spaces.cells import CellArchitecture

    thick = [[2, 2, 1], [2, 2, 2], [2, 2, 2]]
    unet_architecture(TopologySpace(num_blocks=4, num_depths=3, channel_mul=0.125, strides=thick)).save(
        tmp_path / "topology.json")
    cells = CellUNetSpec.example().architecture
    CellArchitecture(cells.space, cell_unet_host(1, 3, 4, 3, thick[:2]), cells.cells).save(tmp_path / "cells.json")
    unet_architecture(TINY_SPACE).save(tmp_path / "isotropic.json")
    for name, expected in [("topology", "pooling: per level [[2, 2, 1], [2, 2, 2], [2, 2, 2]]; total stride [8, 8, 4]"),
                           ("cells", "pooling: per level [[2, 2, 1], [2, 2, 2]]; total stride [4, 4, 2]"),
                           ("isotropic", "pooling: every axis halved per level; total stride [4, 4, 4]")]:
        shown = run_cli_here("arch", "show", tmp_path / f"{name}.json")
        assert shown.returncode == 0 and expected in shown.stdout, shown.stdout + shown.stderr


def test_invalid_architecture_files_are_explained(tmp_path: Path) -> None:
    arch = unet_architecture(TopologySpace())
    data = arch.to_dict()
    data["edges"][11] = [0] * 10
    (tmp_path / "empty_block.json").write_text(json.dumps(data))
    other_space = arch.to_dict()
    other_space["space"]["num_blocks"] = 10  # edges and ops are 12 x 10: they belong to another space
    (tmp_path / "other_space.json").write_text(json.dumps(other_space))
    (tmp_path / "garbage.json").write_text("[1, 2")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    cases = {"empty_block.json": "block 11 has no active edge", "garbage.json": "not valid JSON",
             "other_space.json": "'edges' has shape (12, 10) but the space needs (10, 10)",
             "other.json": "not a segnas architecture", "missing.json": "architecture file does not exist"}
    for name, message in cases.items():
        result = run_cli_here("arch", "validate", tmp_path / name)
        assert result.returncode == 2, name
        assert f"{tmp_path / name}: " in result.stderr and message in result.stderr, result.stderr


def test_cost_command_measures_and_caches(tmp_path: Path) -> None:
    arch = unet_architecture(TINY_SPACE).save(tmp_path / "a.json")
    result = run_cli_here("cost", "--arch", arch, "--patch", "16", "16", "16", "--batch", "1", "--out-channels", "3",
                     "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["parameters"] > 0 and report["flops_forward"] > 0 and report["memory_bytes"] > 0
    assert report["memory_method"] == "cpu-saved-tensors" and report["precision"] == precision_name("cpu")
    float32 = run_cli_here("cost", "--arch", arch, "--patch", "16", "16", "16", "--batch", "1", "--out-channels", "3",
                      "--no-amp")
    assert float32.returncode == 0 and "precision         float32 (as segnas train --no-amp runs it)" in float32.stdout
    bad_patch = run_cli_here("cost", "--arch", arch, "--patch", "16", "18", "16")
    assert bad_patch.returncode == 2 and "multiple of 4" in bad_patch.stderr


def test_measured_memory_grows_with_batch_and_architecture() -> None:
    small = TopologyNetworkSpec(1, 2, unet_architecture(TINY_SPACE))
    one = measure_cost(small, [16, 16, 16], 1, steps=2)
    two = measure_cost(small, [16, 16, 16], 2, steps=2)
    assert two.memory_bytes > one.memory_bytes
    parameter_bytes = one.parameters * 4
    # activations are measured, not the parameters alone: weights + grads + 2 Adam moments is 4x params
    assert one.memory_bytes > 4 * parameter_bytes
    cached = measure_cost(small, [16, 16, 16], 1, steps=2)
    assert cached == one


def test_the_step_time_leaves_out_a_slow_first_step() -> None:
    """A first step slowed by 0.5 s (as first-touch allocations slow it) does not reach the measured step time."""
    import time as clock

    from segnas.cost.measure import _training_steps

    class SlowFirstCall(torch.nn.Conv3d):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            SlowFirstCall.calls += 1
            if SlowFirstCall.calls == 1:
                clock.sleep(0.5)
            return super().forward(x)

    model = SlowFirstCall(1, 2, 3, padding=1)
    image, label = torch.randn(1, 1, 8, 8, 8), torch.randint(0, 2, (1, 1, 8, 8, 8))
    _, seconds = _training_steps(model, image, label, steps=1, amp=False)
    assert SlowFirstCall.calls == 2 and seconds < 0.25


def test_cost_is_measured_in_the_execution_mode_training_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default is the trainer's (the device's native reduced precision), recorded and kept apart in the cache
    from float32's; under bfloat16 the saved activations are half as wide, so a budget sees it (bfloat16 forced,
    emulated where the CPU lacks it, so every machine checks it)."""
    import segnas.utils.runtime as runtime

    small = TopologyNetworkSpec(1, 2, unet_architecture(TINY_SPACE))
    native = measure_cost(small, [16, 16, 16], 2, steps=1)
    assert native.precision == precision_name("cpu")
    monkeypatch.setattr(runtime, "autocast_dtype", lambda device: torch.bfloat16)
    mixed = measure_cost(small, [16, 16, 16], 2, steps=2)
    float32 = measure_cost(small, [16, 16, 16], 2, steps=2, amp=False)
    assert mixed.precision == "bfloat16" and float32.precision == "float32"
    assert measure_cost(small, [16, 16, 16], 2, steps=2, amp=False) == float32  # its own cache entry
    assert mixed.memory_bytes < float32.memory_bytes


@pytest.fixture(scope="module")
def trained_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    arch = unet_architecture(TINY_SPACE).save(root / "arch.json")
    run = root / "run"
    result = run_cli("train", tiny_dataset, "--arch", arch, "--out", run, "--steps", "6", "--batch", "1",
                     "--stride", "8", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    validation = read_run(run)["validation"]
    for line, metric in zip(result.stdout.splitlines()[1:4], ("Dice", "NSD 1 mm", "HD95 mm")):  # per structure
        assert line.startswith(f"validation {metric} ") and line.count(",") == len(validation) // 3 - 2
    return run


def test_predict_keeps_input_geometry_and_evaluate_writes_tables(trained_run: Path, tiny_dataset: Path,
                                                                 tmp_path: Path) -> None:
    # An input with an oblique, flipped affine and a shape unlike the training patch
    source = nib.load(str(tiny_dataset / "imagesTr" / "synth_000.nii.gz"))
    data = np.asarray(source.dataobj)[:22, :19, :23]
    affine = np.array([[0, -1.0, 0, 40], [1.0, 0, 0, -7], [0, 0, 1.0, 3], [0, 0, 0, 1]])
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(data, affine), str(inputs / "odd.nii.gz"))
    out = tmp_path / "pred"
    result = run_cli("predict", trained_run, "--input", inputs, "--output", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    mask = nib.load(str(out / "odd.nii.gz"))
    assert mask.shape == data.shape
    np.testing.assert_allclose(mask.affine, affine)
    assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(affine)
    assert mask.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    again = run_cli("predict", trained_run, "--input", inputs, "--output", out)
    assert again.returncode == 2 and "--force" in again.stderr

    labels = tmp_path / "labels"
    labels.mkdir()
    label = np.asarray(nib.load(str(tiny_dataset / "labelsTr" / "synth_000.nii.gz")).dataobj)[:22, :19, :23]
    nib.save(nib.Nifti1Image(label, affine), str(labels / "odd.nii.gz"))
    result = run_cli("evaluate", out, "--labels", labels, "--dataset-json", tiny_dataset / "dataset.json",
                     "--nsd-tolerance", "1", "2")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["label_name"] for r in rows] == ["inner", "outer"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_label"]) == {"inner", "outer"} and summary["nsd_tolerance_mm"] == {"inner": 1.0,
                                                                                              "outer": 2.0}


def test_predict_mirrors_by_default_and_tta_none_predicts_once(trained_run: Path, tiny_dataset: Path,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import segnas.engine.predict as predict_module
    from segnas.api import predict
    from segnas.cli.main import _tta, build_parser

    seen: list[str] = []
    real = predict_module.ensemble_probabilities

    def recording(models, image, overlap, tta, amp):  # type: ignore[no-untyped-def]
        seen.append(tta)
        return real(models, image, overlap, tta, amp=amp)

    monkeypatch.setattr(predict_module, "ensemble_probabilities", recording)
    image = tiny_dataset / "imagesTr" / "synth_000.nii.gz"
    for options, expected in (({}, "flips"), ({"tta": "none"}, "none")):
        predict(trained_run, image, tmp_path / expected, device="cpu", show_progress=False, **options)
        assert seen == [expected]
        seen.clear()
    # The command line passes --tta only when given (not main() here: it configures the process's logging)
    command = ["predict", str(trained_run), "--input", str(image), "--output", str(tmp_path / "x")]
    assert _tta(build_parser().parse_args(command)) == {}
    assert _tta(build_parser().parse_args([*command, "--tta", "none"])) == {"tta": "none"}


def test_postprocess_decides_on_validation_and_predict_applies_it(trained_run: Path, tiny_dataset: Path,
                                                                  tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert json.loads((run / "run.json").read_text())["precision"] in ("bfloat16", "float32")
    result = run_cli("postprocess", run, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    decision = json.loads((run / "postprocessing.json").read_text())
    assert decision["format"] == "segnas.postprocessing" and set(decision["labels"]) == {"1", "2"}
    assert decision["tta"] == "flips"  # decided on masks predicted as segnas predict predicts by default
    assert "validation cases" in result.stdout and "inner: Dice" in result.stdout
    assert len(list((run / "validation_predictions").glob("*.nii.gz"))) == decision["cases"]
    again = run_cli("postprocess", run)
    assert again.returncode == 2 and "--force" in again.stderr
    # a decision that keeps every label's largest component shows in the masks predict writes
    decision.update(foreground=True, labels={"1": True, "2": True})
    (run / "postprocessing.json").write_text(json.dumps(decision))
    image = tiny_dataset / "imagesTr" / "synth_000.nii.gz"
    for flag, out in (([], "kept"), (["--no-postprocess"], "raw")):
        result = run_cli("predict", run, "--input", image, "--output", tmp_path / out, "--device", "cpu", *flag)
        assert result.returncode == 0, result.stderr
    kept, raw = (np.asarray(nib.load(str(tmp_path / out / "synth_000.nii.gz")).dataobj) for out in ("kept", "raw"))
    assert np.array_equal(kept, keep_largest_component(keep_largest_component(raw), [1, 2]))


def test_evaluate_scores_known_masks(tmp_path: Path) -> None:
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[5:15, 5:15, 5:15] = 1
    half = truth.copy()
    half[5:10] = 0
    for folder, data in (("pred", half), ("ref", truth)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / folder / "a.nii.gz"))
    result = run_cli("evaluate", tmp_path / "pred", "--labels", tmp_path / "ref", "--out", tmp_path / "scores")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert summary["per_label"]["1"]["dice"] == pytest.approx(2 * 500 / 1500)
    assert summary["per_label"]["1"]["hd95"] == pytest.approx(5.0)


def test_predict_refuses_bad_inputs(trained_run: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.nii.gz").write_bytes(b"not an image")
    result = run_cli_here("predict", trained_run, "--input", tmp_path / "in", "--output", tmp_path / "out")
    assert result.returncode == 2 and "broken.nii.gz: not a readable NIfTI image" in result.stderr
    assert not (tmp_path / "out").exists()
    result = run_cli_here("predict", tmp_path, "--input", tmp_path / "in", "--output", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.startswith(f"segnas: error: {tmp_path}: not a run folder")


def test_train_refuses_architecture_whose_stride_does_not_fit_the_patch(tiny_dataset: Path, tmp_path: Path) -> None:
    arch = unet_architecture(TopologySpace()).save(tmp_path / "deep.json")  # total stride 16
    result = run_cli_here("train", tiny_dataset, "--arch", arch, "--out", tmp_path / "run", "--patch", "24", "24", "24")
    assert result.returncode == 2 and "multiple of 16" in result.stderr
    assert not (tmp_path / "run").exists()


def test_download_goes_through_monai_decathlon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import monai.apps.datasets

    from segnas.data.download import download_msd
    from segnas.errors import SegnasInputError

    calls = []

    def fake_download(url, filepath, hash_val=None, hash_type="md5", output_dir=".", progress=True, **_):
        calls.append(url)
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(monai.apps.datasets, "download_and_extract", fake_download)
    with pytest.raises(ConnectionError):
        download_msd("Task04_Hippocampus", tmp_path)
    assert calls == [monai.apps.datasets.DecathlonDataset.resource["Task04_Hippocampus"]]
    with pytest.raises(SegnasInputError, match="unknown MSD task"):
        download_msd("Task99_Nothing", tmp_path)


@pytest.mark.parametrize("strategy", ["hypersegnas", "iac-lth"])  # two budgets; no budget
def test_demo_searches_retrains_predicts_and_evaluates(strategy: str, tmp_path: Path) -> None:
    result = run_cli("demo", "--out", tmp_path / "demo", "--steps", "20", "--device", "cpu", "--strategy", strategy)
    assert result.returncode == 0, result.stderr
    demo = tmp_path / "demo"
    for produced in ("data/dataset.json", "search/search.json", "run/model_final.pt", "predictions/metrics.csv",
                     "predictions/summary.json"):
        assert (demo / produced).exists(), produced
    winners = sorted(path.parent.name for path in (demo / "search").glob("*/arch.json"))
    assert len(winners) == (2 if strategy == "hypersegnas" else 1)
    assert all(f"      {label}: " in result.stdout for label in winners)  # the budget table
    assert len(list((demo / "predictions").glob("*.nii.gz"))) == 4
    assert "demo finished" in result.stdout
    assert run_cli("demo", "--out", demo, "--steps", "1").returncode == 2  # never overwrites silently


def test_fold_all_trains_on_every_case_and_predict_ensembles_runs_with_flips(trained_run: Path, tiny_dataset: Path,
                                                                              tmp_path: Path) -> None:
    arch = unet_architecture(TINY_SPACE).save(tmp_path / "arch.json")
    final = tmp_path / "final"
    result = run_cli("train", tiny_dataset, "--arch", arch, "--out", final, "--steps", "2", "--batch", "1",
                     "--stride", "8", "--device", "cpu", "--fold", "all")
    assert result.returncode == 0, result.stderr
    record = json.loads((final / "run.json").read_text())
    assert record["fold"] == "all" and record["validation_cases"] == 0 and "validation_split" in record
    out = tmp_path / "pred"
    result = run_cli("predict", trained_run, final, "--input", tiny_dataset / "imagesTr" / "synth_000.nii.gz",
                     "--output", out, "--tta", "flips", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    source = nib.load(str(tiny_dataset / "imagesTr" / "synth_000.nii.gz"))
    assert nib.load(str(out / "synth_000.nii.gz")).shape == source.shape[:3]
    bad_fold = run_cli("train", tiny_dataset, "--arch", arch, "--out", tmp_path / "x", "--fold", "last")
    assert bad_fold.returncode != 0 and "a fold number or 'all'" in bad_fold.stderr


def test_search_help_says_what_budgets_each_strategy_takes() -> None:
    from segnas.api import get_strategy, list_strategies

    shown = run_cli("search", "--help")
    assert shown.returncode == 0
    assert "budgets: \n" not in shown.stdout and not shown.stdout.rstrip().endswith("budgets:")
    text = " ".join(shown.stdout.split())  # argparse wraps nothing in the listing, but be safe
    for name in list_strategies():
        assert get_strategy(name).budget_words() in text, name
    assert "iac-lth" in text and "takes no budget" in text and "(optional)" in text

"""Dataset reading (MSD and nnU-Net v2), validation of malformed input, fingerprint, plan, folds, batches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segnas.data.dataset import load_dataset, scan_dataset
from segnas.data.plan import Plan, make_plan, patch_size, target_spacing
from segnas.data.transforms import TrainingBatches, augmentation, cached_cases
from segnas.engine.trainer import TrainConfig
from segnas.errors import SegnasInputError
from tests.conftest import run_cli


def _copy(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / dataset.name))


def _rewrite(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    old = nib.load(str(path))
    nib.save(nib.Nifti1Image(data, old.affine if affine is None else affine), str(path))


def _break_missing(root: Path) -> str:
    (root / "labelsTr" / "synth_002.nii.gz").unlink()
    return "case synth_002: label file is missing"


def _break_corrupt(root: Path) -> str:
    path = root / "imagesTr" / "synth_001.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    return "case synth_001: image is not a readable NIfTI file"


def _break_shape(root: Path) -> str:
    _rewrite(root / "labelsTr" / "synth_003.nii.gz", np.zeros((24, 24, 20), np.uint8))
    return "case synth_003: label shape (24, 24, 20) differs from image shape (24, 24, 24)"


def _break_affine(root: Path) -> str:
    path = root / "labelsTr" / "synth_000.nii.gz"
    _rewrite(path, np.asarray(nib.load(str(path)).dataobj), np.diag([2.0, 1.0, 1.0, 1.0]))
    return "case synth_000: label affine differs from the image affine"


def _break_label_values(root: Path) -> str:
    path = root / "labelsTr" / "synth_004.nii.gz"
    data = np.asarray(nib.load(str(path)).dataobj).copy()
    data[0, 0, 0] = 7
    _rewrite(path, data)
    return "case synth_004: label values [7] are not declared in dataset.json"


def _break_nan(root: Path) -> str:
    path = root / "imagesTr" / "synth_005.nii.gz"
    data = np.asarray(nib.load(str(path)).dataobj).copy()
    data[1, 2, 3] = np.nan
    _rewrite(path, data)
    return "case synth_005: image holds 1 NaN/inf voxel(s)"


def _break_empty(root: Path) -> str:
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"] = []
    (root / "dataset.json").write_text(json.dumps(meta))
    return "the dataset has no training cases"


def _break_json(root: Path) -> str:
    (root / "dataset.json").write_text("{not json")
    return "dataset.json: not valid JSON"


BREAKAGES = [_break_missing, _break_corrupt, _break_shape, _break_affine, _break_label_values, _break_nan,
             _break_empty, _break_json]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__[7:])
def test_plan_refuses_malformed_dataset_with_one_clear_error(breakage, tiny_dataset: Path, tmp_path: Path) -> None:
    root = _copy(tiny_dataset, tmp_path)
    expected = breakage(root)
    out = tmp_path / "plan_out"
    result = run_cli("plan", root, "--out", out)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()  # nothing partial written


def test_float_labels_with_integer_values_are_accepted(tiny_dataset: Path, tmp_path: Path) -> None:
    root = _copy(tiny_dataset, tmp_path)  # like hippocampus_003 and _243, stored as float32
    path = root / "labelsTr" / "synth_000.nii.gz"
    _rewrite(path, np.asarray(nib.load(str(path)).dataobj).astype(np.float32))
    facts = scan_dataset(load_dataset(root), show_progress=False)
    assert set(facts[0].label_voxels) <= {0, 1, 2}


def test_nnunet_raw_layout_with_splits(tiny_dataset: Path, tmp_path: Path) -> None:
    msd = load_dataset(tiny_dataset)
    root = tmp_path / "Dataset099_Tiny"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in msd.cases:
        shutil.copy(case.images[0], root / "imagesTr" / f"{case.case_id}_0000.nii.gz")
        shutil.copy(case.label, root / "labelsTr" / f"{case.case_id}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "inner": 1, "outer": 2},
        "numTraining": 6, "file_ending": ".nii.gz"}))
    ids = sorted(c.case_id for c in msd.cases)
    splits = [{"train": ids[:4], "val": ids[4:]}, {"train": ids[2:], "val": ids[:2]}]
    (root / "splits_final.json").write_text(json.dumps(splits))
    spec = load_dataset(root)
    assert spec.layout == "nnunet" and spec.labels == {0: "background", 1: "inner", 2: "outer"}
    assert spec.cases[0].images[0].name.endswith("_0000.nii.gz")
    plan = make_plan(spec, stride=8, show_progress=False)
    assert plan.folds == splits


def test_hippocampus_plan_matches_nnunet_rules(hippocampus: Path, tmp_path: Path) -> None:
    spec = load_dataset(hippocampus)
    plan = make_plan(spec, stride=16, show_progress=False)
    assert len(spec.cases) == 208 and plan.num_classes == 3
    assert plan.target_spacing == [1.0, 1.0, 1.0]
    assert plan.fingerprint["median_shape"] == [35.0, 50.0, 36.0]
    assert plan.patch_size == [48, 64, 48]  # the median rounded up to the stride
    assert plan.normalisation == [{"scheme": "zscore"}]  # MRI: per-case z-score
    vals = [set(f["val"]) for f in plan.folds]
    assert len(vals) == 5 and set().union(*vals) == {c.case_id for c in spec.cases}
    assert sum(len(v) for v in vals) == 208
    for fold in plan.folds:
        assert not set(fold["train"]) & set(fold["val"])
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan


def test_plan_rules_for_anisotropic_and_large_data() -> None:
    spacings = np.array([[0.8, 0.8, 5.0]] * 8 + [[0.8, 0.8, 2.5]] * 2)
    assert target_spacing(spacings).tolist() == [0.8, 0.8, 2.5]
    large = patch_size(np.array([300.0, 300.0, 100.0]), 16, 128**3)
    assert large == [128, 144, 112]  # shrunk along the longest axis until within 128^3 voxels
    assert np.prod(large) <= 128**3
    assert all(p % 16 == 0 for p in patch_size(np.array([33.0, 17.0, 5.0]), 16, 128**3))


def test_training_batches_depend_only_on_seed_and_step(tiny_dataset: Path) -> None:
    spec = load_dataset(tiny_dataset)
    plan = make_plan(spec, stride=8, show_progress=False)
    cases = cached_cases(spec, plan, plan.fold(0)["train"], show_progress=False)
    batches = TrainingBatches(cases, augmentation(plan, "full"), 2, seed=5, num_steps=10)
    first = batches[3]
    assert first["image"].shape == (2, 1, *plan.patch_size) and first["label"].shape == (2, 1, *plan.patch_size)
    assert first["image"].dtype == torch.float32 and first["label"].dtype == torch.uint8
    _ = batches[4]
    again = batches[3]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    assert not torch.equal(first["image"], batches[4]["image"])
    image = cases[0]["image"]
    assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1) < 1e-2  # per-case z-score


def test_subjects_stay_on_one_side_of_every_fold() -> None:
    from segnas.data.plan import make_folds, subjects_of

    ids = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 11) for f in (1, 12)]
    subjects = subjects_of(ids, r"patient\d+")
    assert len(subjects) == 10
    for fold in make_folds(ids, 5, subjects=subjects):
        train = {c.split("_")[0] for c in fold["train"]}
        assert not train & {c.split("_")[0] for c in fold["val"]} and len(fold["val"]) == 4
    assert make_folds(ids, 5) == make_folds(ids, 5, subjects=subjects_of(ids, None))  # one case, one subject
    with pytest.raises(SegnasInputError, match="groups nothing"):
        subjects_of(ids, r"frame\d+_?.*|patient\d+_frame\d+")
    with pytest.raises(SegnasInputError, match="finds no subject"):
        subjects_of(ids + ["other"], r"patient\d+")
    with pytest.raises(SegnasInputError, match="cannot make 5 folds"):
        make_folds(ids[:6], 5, subjects=subjects_of(ids[:6], r"patient\d+"))


def test_thick_slices_are_pooled_fewer_times() -> None:
    from segnas.data.plan import pooling_schedule, total_stride

    acdc = pooling_schedule([1.5625, 1.5625, 10.0], [216.0, 256.0, 9.0], 4)
    assert acdc == [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]] and total_stride(acdc) == [16, 16, 4]
    assert pooling_schedule([1.0, 1.0, 1.0], [35.0, 50.0, 36.0], 4) == [[2, 2, 2]] * 4  # Hippocampus unchanged
    assert patch_size(np.array([216.0, 256.0, 9.0]), [16, 16, 4], 128**3) == [224, 256, 12]


def test_thick_slices_are_rotated_and_scaled_within_the_slices(tiny_dataset: Path) -> None:
    from dataclasses import replace

    from monai.transforms import RandAffined

    from segnas.data.transforms import slice_axis, spatial_augmentation_ranges

    isotropic = make_plan(load_dataset(tiny_dataset), stride=8, show_progress=False)
    thick = replace(isotropic, target_spacing=[1.5, 1.5, 10.0], patch_size=[32, 32, 8])
    assert slice_axis(isotropic) is None and slice_axis(thick) == 2
    assert spatial_augmentation_ranges(isotropic, "full") == ([np.pi / 12] * 3, [0.15] * 3)
    assert spatial_augmentation_ranges(thick, "full") == ([0.0, 0.0, np.pi], [0.15, 0.15, 0.0])
    assert spatial_augmentation_ranges(thick, "full-3d") == ([np.pi / 12] * 3, [0.15] * 3)
    affine = next(t for t in augmentation(thick, "full").transforms if isinstance(t, RandAffined))
    affine.prob = 1.0
    image = torch.zeros(1, 32, 32, 8)
    image[0, 8:24, 10:20, 3] = 1  # one slice marked: no voxel of it may move to another slice
    for seed in range(5):
        affine.set_random_state(seed)
        moved = affine({"image": image, "label": image.clone()})["label"]
        assert float(moved.sum()) > 0 and float(moved[0, :, :, [0, 1, 2, 4, 5, 6, 7]].sum()) == 0


def test_a_label_missing_from_some_cases_is_noted_in_the_plan(tiny_dataset: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    path = data / "labelsTr" / "synth_001.nii.gz"
    label = nib.load(str(path))
    values = np.asarray(label.dataobj).copy()
    values[values == 2] = 1  # this case holds no label 2
    nib.save(nib.Nifti1Image(values, label.affine), str(path))
    result = run_cli("plan", data, "--out", tmp_path / "plan")
    assert result.returncode == 0, result.stderr
    assert "note: label 2 (outer) is absent from 1 of 6 cases" in result.stdout
    plan = Plan.load(tmp_path / "plan" / "plan.json")
    assert plan.fingerprint["cases_without_label"] == {"2": 1}
    assert "cases_without_label" not in make_plan(load_dataset(tiny_dataset), show_progress=False).fingerprint


def test_the_plan_command_caps_the_patch_as_the_library_does() -> None:
    """`segnas plan`'s default patch cap is the library's (sized for CPU step time), and it keeps ACDC's in-plane
    sides at 160 while Hippocampus's patch stays whole."""
    from segnas.cli.main import build_parser
    from segnas.data.plan import DEFAULT_MAX_PATCH_VOXELS

    assert build_parser().parse_args(["plan", "data"]).max_patch_voxels == DEFAULT_MAX_PATCH_VOXELS
    assert patch_size(np.array([216.0, 256.0, 9.0]), [16, 16, 4], DEFAULT_MAX_PATCH_VOXELS) == [160, 160, 12]
    assert patch_size(np.array([36.0, 50.0, 35.0]), 16, DEFAULT_MAX_PATCH_VOXELS) == [48, 64, 48]


def test_the_foreground_share_centres_that_share_of_patches_on_a_label(tiny_dataset: Path) -> None:
    """``--foreground 1`` puts a label voxel in every patch; 0.5 is the sampling segnas always had."""
    from dataclasses import replace

    spec = load_dataset(tiny_dataset)
    plan = replace(make_plan(spec, stride=8, show_progress=False), patch_size=[8, 8, 8])
    cases = cached_cases(spec, plan, plan.fold(0)["train"], show_progress=False)
    always = TrainingBatches(cases, augmentation(plan, "none", foreground=1.0), 2, seed=1, num_steps=20)
    assert all(bool((always[step]["label"][index] > 0).any()) for step in range(20) for index in range(2))
    half, default = (TrainingBatches(cases, chain, 2, seed=1, num_steps=5)
                     for chain in (augmentation(plan, "none", foreground=0.5), augmentation(plan, "none")))
    assert all(torch.equal(half[s]["label"], default[s]["label"]) for s in range(5))
    with pytest.raises(ValueError, match="foreground share"):
        augmentation(plan, "none", foreground=1.5)
    with pytest.raises(SegnasInputError, match="--foreground"):
        TrainConfig(foreground=-0.1)

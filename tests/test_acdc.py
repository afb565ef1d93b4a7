"""The real ACDC data (skipped in a clone without ``../shared``): folds grouped by patient, a plan that pools the
thick-slice axis fewer times, and a few training steps and a prediction with per-axis strides on a few patients.
Kept small: the figures on ACDC come from ``benchmarks/recipe.py``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segnas.api import predict, train
from segnas.data.dataset import load_dataset
from segnas.data.plan import Plan, first_levels, make_plan, total_stride
from segnas.networks.registry import MonaiUNetSpec
from tests.conftest import run_cli

PATIENT = r"patient\d+"


def _patient(case: str) -> str:
    found = re.search(PATIENT, case)
    assert found, case
    return found.group(0)


def test_acdc_plan_keeps_each_patient_on_one_side_and_pools_slices_fewer_times(acdc: Path, tmp_path: Path) -> None:
    result = run_cli("plan", acdc, "--group-by", PATIENT, "--out", tmp_path / "plan")
    assert result.returncode == 0, result.stderr
    assert "160 cases from 80 subjects" in result.stdout + result.stderr
    plan = Plan.load(tmp_path / "plan" / "plan.json")
    assert len(plan.subjects) == 80
    for fold in range(5):
        train_patients = {_patient(case) for case in plan.fold(fold)["train"]}
        val_patients = {_patient(case) for case in plan.fold(fold)["val"]}
        assert not train_patients & val_patients
        assert len(train_patients | val_patients) == 80
    stride = total_stride(plan.pool_strides)
    assert stride[2] < stride[0] == stride[1]  # 10 mm slices are pooled fewer times than 1.56 mm pixels
    assert all(side % axis == 0 for side, axis in zip(plan.patch_size, stride))


def _few_patients(acdc: Path, out: Path, patients: int) -> Path:
    """A dataset folder of the first ``patients`` patients' frames (links to the real files, nothing copied)."""
    meta = json.loads((acdc / "dataset.json").read_text())
    keep = sorted({_patient(entry["image"]) for entry in meta["training"]})[:patients]
    meta["training"] = [entry for entry in meta["training"] if _patient(entry["image"]) in keep]
    meta["numTraining"] = len(meta["training"])
    for folder in ("imagesTr", "labelsTr"):
        (out / folder).mkdir(parents=True)
    for entry in meta["training"]:
        for key in ("image", "label"):
            relative = Path(entry[key])
            (out / relative).symlink_to((acdc / relative).resolve())
    (out / "dataset.json").write_text(json.dumps(meta))
    return out


def test_acdc_trains_with_per_axis_strides_and_predicts_in_each_input_geometry(acdc: Path, tmp_path: Path) -> None:
    data = _few_patients(acdc, tmp_path / "Task27_ACDC", patients=5)
    spec = load_dataset(data)
    plan = make_plan(spec, group_by=PATIENT, show_progress=False)
    strides = first_levels(plan.pool_strides, 4)
    assert strides is not None and strides[0][2] == 1  # the first level keeps the thick slices
    network = MonaiUNetSpec(1, 4, channels=(4, 8, 16, 32, 64), strides=strides, num_res_units=1)
    patch = [64, 64, plan.patch_size[2]]
    run = train(data, network, tmp_path / "run", plan=plan, steps=2, patch=patch, device="cpu",
                show_progress=False)
    assert run["status"] == "finished"
    validation = plan.fold(0)["val"]
    assert {_patient(case) for case in validation}.isdisjoint({_patient(case) for case in plan.fold(0)["train"]})
    images = tmp_path / "images"
    images.mkdir()
    for case in validation:
        (images / f"{case}.nii.gz").symlink_to((data / "imagesTr" / f"{case}.nii.gz").resolve())
    predict(tmp_path / "run", images, tmp_path / "predictions", device="cpu", show_progress=False)
    for case in validation:
        image = nib.load(images / f"{case}.nii.gz")
        mask = nib.load(tmp_path / "predictions" / f"{case}.nii.gz")
        assert mask.shape == image.shape
        np.testing.assert_allclose(mask.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2, 3}


@pytest.mark.parametrize("case", ["patient001_frame01"])
def test_acdc_volumes_are_thick_sliced(acdc: Path, case: str) -> None:
    zooms = nib.load(acdc / "imagesTr" / f"{case}.nii.gz").header.get_zooms()[:3]
    assert zooms[2] > 3 * zooms[0]  # the anisotropy the plan's per-axis pooling is for

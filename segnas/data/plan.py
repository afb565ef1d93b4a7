"""Dataset fingerprint and training plan, derived the way nnU-Net derives them.

* **fingerprint**: per-case spacing and shape, foreground intensity statistics per channel (0.5/99.5
  percentiles, mean, std over up to 10,000 sampled foreground voxels per case), voxel fraction per label.
* **plan**:
  - target spacing: the median spacing per axis; when the coarsest axis is more than 3x the finest, that
    axis takes the 10th percentile instead (nnU-Net's rule for anisotropic data);
  - patch size: the median image shape at the target spacing, rounded *up* to a multiple of the network's
    total stride (images smaller than the patch are padded), then shrunk axis by axis while it exceeds
    ``max_patch_voxels``;
  - normalisation per channel: CT clips to the foreground 0.5/99.5 percentiles then z-scores with the
    foreground mean/std; every other modality z-scores each case on its own;
  - five folds from a seeded shuffle of the case ids, or nnU-Net's ``splits_final.json`` when present.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segnas.data.dataset import CaseFacts, DatasetSpec, LabelsAndChannels, scan_dataset
from segnas.errors import SegnasInputError
from segnas.formats import FileFormat

PLAN_FORMAT = FileFormat("segnas.plan", 1, what="plan file")
#: The ``fold`` that trains on every case with no validation split (``segnas train --fold all``).
ALL_CASES = "all"


def fingerprint(spec: DatasetSpec, facts: list[CaseFacts]) -> dict[str, Any]:
    """Summary statistics of a validated dataset (plain JSON types)."""
    spacings = np.array([f.spacing for f in facts])
    shapes = np.array([f.shape for f in facts])
    intensities = []
    for channel in range(spec.num_channels):
        values = np.concatenate([f.foreground_samples[channel] for f in facts])
        intensities.append({
            "mean": float(values.mean()), "std": float(values.std()),
            "percentile_00_5": float(np.percentile(values, 0.5)), "percentile_99_5": float(np.percentile(values, 99.5)),
            "min": float(values.min()), "max": float(values.max()),
        })
    total_voxels = float(np.prod(shapes, axis=1).sum())
    fractions = {str(label): sum(f.label_voxels.get(label, 0) for f in facts) / total_voxels for label in spec.labels}
    return {
        "num_cases": len(facts),
        "spacings": spacings.tolist(), "shapes": shapes.tolist(),
        "median_spacing": np.median(spacings, axis=0).tolist(), "median_shape": np.median(shapes, axis=0).tolist(),
        "min_shape": shapes.min(axis=0).tolist(), "max_shape": shapes.max(axis=0).tolist(),
        "intensity": intensities, "label_fraction": fractions,
    }


@dataclass
class Plan(LabelsAndChannels):
    """Everything the data pipeline and the trainer need to know about a dataset."""

    dataset_name: str
    dataset_root: str
    layout: str
    channel_names: list[str]
    labels: dict[int, str]
    target_spacing: list[float]
    patch_size: list[int]
    stride: int
    normalisation: list[dict[str, Any]]
    folds: list[dict[str, list[str]]]
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def fold(self, index: int | str) -> dict[str, list[str]]:
        """Fold ``index``'s training and validation case ids; ``"all"`` (:data:`ALL_CASES`): every case for
        training and none for validation, nnU-Net's final model."""
        if index == ALL_CASES:
            return {"train": sorted(self.folds[0]["train"] + self.folds[0]["val"]), "val": []}
        if not isinstance(index, int) or not 0 <= index < len(self.folds):
            raise SegnasInputError(f"fold {index} does not exist; the plan has folds 0..{len(self.folds) - 1}")
        return self.folds[index]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = {str(k): v for k, v in self.labels.items()}
        return data

    def save(self, path: str | Path) -> Path:
        return PLAN_FORMAT.write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        path = Path(path)
        if path.is_dir():
            path = path / "plan.json"
        data = PLAN_FORMAT.read_json(path)
        for key in ("format", "version", "written_by"):
            data.pop(key, None)
        try:
            data["labels"] = {int(k): v for k, v in data["labels"].items()}
            return cls(**data)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise SegnasInputError(f"plan is incomplete or damaged ({type(err).__name__}: {err})", path) from err


def target_spacing(spacings: np.ndarray) -> np.ndarray:
    """Median spacing; an axis coarser than 3x the finest takes its 10th percentile (nnU-Net)."""
    target = np.median(spacings, axis=0)
    coarse = int(np.argmax(target))
    if target[coarse] > 3 * np.min(target):
        target[coarse] = max(np.percentile(spacings[:, coarse], 10), np.min(target) * 3)
    return target


def patch_size(median_shape: np.ndarray, stride: int, max_patch_voxels: int) -> list[int]:
    """Median shape rounded up to a multiple of ``stride``, shrunk along its longest axis while too large."""
    patch = np.maximum(np.ceil(median_shape / stride) * stride, stride).astype(int)
    while np.prod(patch) > max_patch_voxels and patch.max() > stride:
        patch[int(np.argmax(patch))] -= stride
    return patch.tolist()


def make_folds(case_ids: list[str], num_folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    """``num_folds`` disjoint validation sets from a seeded shuffle of the sorted case ids."""
    if len(case_ids) < num_folds:
        raise SegnasInputError(f"{len(case_ids)} case(s) cannot make {num_folds} folds")
    ids = sorted(case_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = np.array_split(order, num_folds)
    return [{"train": sorted(ids[i] for i in order if i not in set(part)), "val": sorted(ids[i] for i in part)}
            for part in parts]


def make_plan(spec: DatasetSpec, stride: int = 16, max_patch_voxels: int = 128**3, num_folds: int = 5,
              facts: list[CaseFacts] | None = None, show_progress: bool = True) -> Plan:
    """Validate the dataset, fingerprint it and derive the plan."""
    facts = facts if facts is not None else scan_dataset(spec, show_progress)
    fp = fingerprint(spec, facts)
    spacing = target_spacing(np.array(fp["spacings"]))
    resampled = np.array(fp["shapes"]) * np.array(fp["spacings"]) / spacing
    patch = patch_size(np.median(resampled, axis=0), stride, max_patch_voxels)
    normalisation = []
    for channel, name in enumerate(spec.channel_names):
        stats = fp["intensity"][channel]
        if name.strip().upper() == "CT":
            normalisation.append({"scheme": "ct", "clip": [stats["percentile_00_5"], stats["percentile_99_5"]],
                                  "mean": stats["mean"], "std": max(stats["std"], 1e-8)})
        else:
            normalisation.append({"scheme": "zscore"})
    ids = [case.case_id for case in spec.cases]
    if spec.splits:
        folds = [{"train": list(s["train"]), "val": list(s["val"])} for s in spec.splits]
        unknown = {c for fold in folds for c in fold["train"] + fold["val"]} - set(ids)
        if unknown:
            raise SegnasInputError(f"splits_final.json names cases that are not in the dataset: {sorted(unknown)[:5]}",
                                   spec.root)
    else:
        folds = make_folds(ids, num_folds)
    return Plan(spec.name, str(spec.root), spec.layout, spec.channel_names, dict(spec.labels),
                [float(s) for s in spacing], patch, stride, normalisation, folds, fp)

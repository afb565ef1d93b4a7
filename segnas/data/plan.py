"""Dataset fingerprint and training plan, derived the way nnU-Net derives them.

* **fingerprint**: per-case spacing and shape, foreground intensity statistics per channel (0.5/99.5
  percentiles, mean, std over up to 10,000 sampled foreground voxels per case), voxel fraction per label.
* **plan**:
  - target spacing: the median spacing per axis; when the coarsest axis is more than 3x the finest, that
    axis takes the 10th percentile instead (nnU-Net's rule for anisotropic data);
  - pooling: per level, the axes that are halved (nnU-Net's ``pool_op_kernel_sizes``): an axis is pooled while
    its spacing at that level is at most twice the finest one and the median image keeps at least
    :data:`MIN_BOTTOM_VOXELS` voxels along it at the bottom; the finest axes are pooled ``log2(stride)`` times,
    so thick-slice data pools its slice axis fewer times (ACDC: in plane 16, across slices 2);
  - patch size: the median image shape at the target spacing, each axis rounded *up* to a multiple of its own
    total stride (images smaller than the patch are padded), then shrunk axis by axis while it exceeds
    ``max_patch_voxels``;
  - normalisation per channel: CT clips to the foreground 0.5/99.5 percentiles then z-scores with the
    foreground mean/std; every other modality z-scores each case on its own;
  - five folds from a seeded shuffle of the *subjects* (a case's subject is what ``group_by``, a regular
    expression, finds in its id: ACDC's two frames of one patient are one subject; by default each case is its
    own), or nnU-Net's ``splits_final.json`` when present: no subject is ever on both sides of a split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import logging
import math
import re

import numpy as np

from segnas.data.dataset import CaseFacts, DatasetSpec, LabelsAndChannels, cases_without_label, scan_dataset
from segnas.errors import SegnasInputError
from segnas.formats import FileFormat

PLAN_FORMAT = FileFormat("segnas.plan", 2, what="plan file")
#: The largest patch (voxels) a plan takes by default, sized for CPU training time rather than a GPU's memory
#: (nnU-Net's cap): on ACDC (2 cores) MONAI UNet 16..256 at 224x256x12 takes 1.16 s a step and reaches 0.747
#: mean Dice in 30 minutes; at 160x160x12 (this cap) 0.52 s and 0.834, two seeds each (docs/benchmarks.md,
#: "ACDC"). Hippocampus (48x64x48) is under it. On a GPU pass a larger one (``--max-patch-voxels 2097152``).
DEFAULT_MAX_PATCH_VOXELS = 320_000
#: The fewest voxels the median image keeps along an axis at the network's bottom for that axis to be pooled
#: there. nnU-Net asks for 4 (its patch shrinks to fit the network); segnas pads the patch up to the stride
#: instead, and 2 keeps every isotropic plan it ever made (Hippocampus: 48x64x48, stride 16) while stopping a
#: 10-slice axis at one pooling.
MIN_BOTTOM_VOXELS = 2
logger = logging.getLogger(__name__)
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
    summary = {
        "num_cases": len(facts),
        "spacings": spacings.tolist(), "shapes": shapes.tolist(),
        "median_spacing": np.median(spacings, axis=0).tolist(), "median_shape": np.median(shapes, axis=0).tolist(),
        "min_shape": shapes.min(axis=0).tolist(), "max_shape": shapes.max(axis=0).tolist(),
        "intensity": intensities, "label_fraction": fractions,
    }
    missing = cases_without_label(spec, facts)
    if missing:  # written only when some case lacks a label: complete datasets keep their plans as they were
        summary["cases_without_label"] = {str(label): count for label, count in missing.items()}
    return summary


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
    stride: list[int]
    normalisation: list[dict[str, Any]]
    folds: list[dict[str, list[str]]]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    #: Per level, the factor each axis is pooled by (``[[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 1]]``); the
    #: product over levels is :attr:`stride`. Networks with fewer levels take the first ones.
    pool_strides: list[list[int]] = field(default_factory=list)
    #: Subject id -> its case ids; folds never split a subject.
    subjects: dict[str, list[str]] = field(default_factory=dict)
    #: The regular expression that found each case's subject in its id (``None``: each case is its own).
    group_by: str | None = None

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
        return cls.from_dict(PLAN_FORMAT.read_json(path), path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> "Plan":
        """The plan of :meth:`to_dict` (or of a plan file's JSON, header included): a record that outlives its
        folder, such as a benchmark's results file, rebuilds the plan its networks trained on."""
        data = {key: value for key, value in data.items() if key not in ("format", "version", "written_by")}
        try:
            data["labels"] = {int(k): v for k, v in data["labels"].items()}
            return cls(**data)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise SegnasInputError(f"plan is incomplete or damaged ({type(err).__name__}: {err})", source) from err


def target_spacing(spacings: np.ndarray) -> np.ndarray:
    """Median spacing; an axis coarser than 3x the finest takes its 10th percentile (nnU-Net)."""
    target = np.median(spacings, axis=0)
    coarse = int(np.argmax(target))
    if target[coarse] > 3 * np.min(target):
        target[coarse] = max(np.percentile(spacings[:, coarse], 10), np.min(target) * 3)
    return target


def pooling_schedule(spacing: list[float], median_shape: list[float], levels: int) -> list[list[int]]:
    """Per level, the factor (2 or 1) each axis is pooled by, as nnU-Net plans anisotropic data.

    At each of ``levels`` levels an axis is halved when its current spacing is at most twice the finest current
    spacing (thick slices wait until the in-plane axes have caught up) and, for an axis coarser than the finest,
    the median image keeps at least :data:`MIN_BOTTOM_VOXELS` voxels along it after the halving (the finest axes
    are pooled every level, their patch padded up, as segnas always planned). Isotropic spacing gives ``[[2, 2, 2]] * levels``.
    """
    current = [float(s) for s in spacing]
    extent = [float(e) for e in median_shape]
    coarse = [sp > min(current) for sp in current]  # the finest axes always pool: small images are padded up
    schedule = []
    for _ in range(levels):
        finest = min(current)
        level = [2 if sp <= 2 * finest and (not thick or ext / 2 >= MIN_BOTTOM_VOXELS) else 1
                 for sp, ext, thick in zip(current, extent, coarse)]
        if level == [1, 1, 1]:
            break
        schedule.append(level)
        current = [sp * f for sp, f in zip(current, level)]
        extent = [ext / f for ext, f in zip(extent, level)]
    return schedule


def total_stride(schedule: list[list[int]]) -> list[int]:
    """Per axis, the product of a pooling schedule's factors (``[]``: no pooling, ``[1, 1, 1]``)."""
    return [int(np.prod([level[axis] for level in schedule])) for axis in range(3)]


def uniform_schedule(stride: int) -> list[list[int]]:
    """The schedule of a single-integer stride: ``log2(stride)`` levels pooling every axis by 2."""
    levels = round(math.log2(stride)) if stride >= 1 else 0
    if stride < 1 or 2**levels != stride:
        raise SegnasInputError(f"a stride must be a power of two, got {stride}")
    return [[2, 2, 2]] * levels


#: Per down-sampling level, the factor (1 or 2) of each axis: how networks and spaces spell a plan's pooling.
LevelStrides = tuple[tuple[int, int, int], ...]


def check_level_strides(strides: Any, levels: int) -> LevelStrides | None:
    """``strides`` as ``levels`` tuples of three factors 1 or 2, or ``None`` for ``None`` and for every axis halved
    at every level: the isotropic network's one spelling, so that its files, hashes and figures stay as they were.
    Raises ``ValueError`` saying what is wrong."""
    if strides is None:
        return None
    try:
        checked = tuple(tuple(int(f) for f in level) for level in strides)
    except (TypeError, ValueError):
        checked = ()
    if len(checked) != levels or any(len(level) != 3 or set(level) - {1, 2} for level in checked):
        raise ValueError(f"strides must give {levels} levels of three factors 1 or 2, got {strides!r:.120}")
    return None if all(level == (2, 2, 2) for level in checked) else checked  # type: ignore[return-value]


def level_scale(strides: LevelStrides | None, level: int) -> tuple[int, int, int]:
    """How much down-sampling level ``level`` (0: the input) divides each axis by: the product of the first
    ``level`` entries of ``strides`` (``None``: 2 per level along every axis)."""
    factors = [1, 1, 1]
    for index in range(level):
        stride = strides[index] if strides is not None else (2, 2, 2)
        factors = [f * s for f, s in zip(factors, stride)]
    return (factors[0], factors[1], factors[2])


def strides_to_json(strides: LevelStrides | None) -> list[list[int]] | None:
    """``strides`` as JSON lists (``None`` stays ``None``: callers omit the field, keeping isotropic files unchanged)."""
    return None if strides is None else [list(level) for level in strides]


def first_levels(pool_strides: list[list[int]] | None, levels: int) -> LevelStrides | None:
    """A plan's first ``levels`` levels of pooling (``pool_strides``) as per-level stride tuples, for a network or
    space with ``levels`` down-samplings; ``None`` when the plan pools every axis alike (networks then keep their
    single-integer strides, and with them the specs and figures of earlier runs). Levels beyond the plan's pool
    the axes its finest ones are pooled along."""
    if not pool_strides or all(len(set(level)) == 1 for level in pool_strides):
        return None
    totals = total_stride(pool_strides)
    finest = tuple(2 if total == max(totals) else 1 for total in totals)
    chosen = [tuple(int(f) for f in level) for level in pool_strides[:levels]]
    return tuple(chosen + [finest] * (levels - len(chosen)))


def patch_size(median_shape: np.ndarray, stride: int | list[int], max_patch_voxels: int) -> list[int]:
    """Median shape with each axis rounded up to a multiple of its ``stride``, shrunk along its longest axis (by
    that axis's stride) while too large."""
    strides = np.broadcast_to(np.asarray(stride, dtype=int), (3,))
    patch = np.maximum(np.ceil(median_shape / strides) * strides, strides).astype(int)
    while np.prod(patch) > max_patch_voxels and (patch > strides).any():
        shrinkable = np.where(patch > strides, patch, 0)
        axis = int(np.argmax(shrinkable))
        patch[axis] -= strides[axis]
    return patch.tolist()


def subjects_of(case_ids: list[str], group_by: str | None) -> dict[str, list[str]]:
    """Subject id -> sorted case ids. ``group_by`` is a regular expression searched in each case id: its first
    group (or its whole match) names the subject, e.g. ``patient\\d+`` for ACDC's ``patient001_frame01``.

    Refuses a pattern that matches no id or leaves one unmatched (naming the case), and one that groups nothing
    (every case its own subject), since a user who names a pattern expects it to join cases.
    """
    if group_by is None:
        return {case: [case] for case in sorted(case_ids)}
    try:
        pattern = re.compile(group_by)
    except re.error as err:
        raise SegnasInputError(f"--group-by {group_by!r} is not a regular expression ({err})") from err
    subjects: dict[str, list[str]] = {}
    for case in sorted(case_ids):
        found = pattern.search(case)
        if found is None:
            raise SegnasInputError(f"--group-by {group_by!r} finds no subject in case id {case!r}")
        subject = found.group(1) if pattern.groups else found.group(0)
        if not subject:
            raise SegnasInputError(f"--group-by {group_by!r} finds an empty subject in case id {case!r}")
        subjects.setdefault(subject, []).append(case)
    if len(subjects) == len(case_ids) and len(case_ids) > 1:
        raise SegnasInputError(f"--group-by {group_by!r} groups nothing: each of the {len(case_ids)} cases is its "
                               f"own subject (e.g. {case_ids[0]!r} -> {next(iter(subjects))!r})")
    return subjects


def make_folds(case_ids: list[str], num_folds: int = 5, seed: int = 12345,
               subjects: dict[str, list[str]] | None = None) -> list[dict[str, list[str]]]:
    """``num_folds`` disjoint validation sets from a seeded shuffle of the sorted subjects, a subject's cases
    always together (without ``subjects`` each case is its own, and the folds are those of earlier plans)."""
    subjects = subjects if subjects is not None else subjects_of(case_ids, None)
    if len(subjects) < num_folds:
        what = "case(s)" if all(len(c) == 1 for c in subjects.values()) else "subject(s)"
        raise SegnasInputError(f"{len(subjects)} {what} cannot make {num_folds} folds")
    names = sorted(subjects)
    order = np.random.default_rng(seed).permutation(len(names))
    parts = np.array_split(order, num_folds)
    folds = []
    for part in parts:
        held_out = set(part.tolist())
        folds.append({"train": sorted(c for i in order if i not in held_out for c in subjects[names[i]]),
                      "val": sorted(c for i in part for c in subjects[names[i]])})
    return folds


def check_folds_keep_subjects(folds: list[dict[str, list[str]]], subjects: dict[str, list[str]],
                              source: str | Path | None = None) -> None:
    """Refuse folds (nnU-Net's ``splits_final.json``) that put one subject's cases on both sides, or leave a
    side empty."""
    subject_of = {case: subject for subject, cases in subjects.items() for case in cases}
    for index, fold in enumerate(folds):
        if not fold["train"] or not fold["val"]:
            side = "training" if not fold["train"] else "validation"
            raise SegnasInputError(f"fold {index} has no {side} case", source)
        split = {subject_of[c] for c in fold["train"]} & {subject_of[c] for c in fold["val"]}
        if split:
            name = sorted(split)[0]
            raise SegnasInputError(f"fold {index} puts subject {name!r} on both sides ({subjects[name]}): "
                                   f"{len(split)} subject(s) split, validation would leak", source)


def make_plan(spec: DatasetSpec, stride: int = 16, max_patch_voxels: int = DEFAULT_MAX_PATCH_VOXELS, num_folds: int = 5,
              facts: list[CaseFacts] | None = None, show_progress: bool = True, group_by: str | None = None,
              isotropic: bool = False) -> Plan:
    """Validate the dataset, fingerprint it and derive the plan.

    ``stride``: the finest axes' total stride (a power of two: ``log2(stride)`` levels); coarser axes are pooled
    fewer times (:func:`pooling_schedule`) unless ``isotropic``, which pools every axis at every level, as
    segnas did before plans had per-axis strides. ``group_by``: see :func:`subjects_of`.
    """
    ids = [case.case_id for case in spec.cases]
    subjects = subjects_of(ids, group_by)  # a bad pattern is refused before the scan
    levels = len(uniform_schedule(stride))
    facts = facts if facts is not None else scan_dataset(spec, show_progress)
    fp = fingerprint(spec, facts)
    spacing = target_spacing(np.array(fp["spacings"]))
    resampled = np.array(fp["shapes"]) * np.array(fp["spacings"]) / spacing
    median = np.median(resampled, axis=0)
    schedule = uniform_schedule(stride) if isotropic else pooling_schedule(spacing.tolist(), median.tolist(), levels)
    strides = total_stride(schedule)
    patch = patch_size(median, strides, max_patch_voxels)
    normalisation = []
    for channel, name in enumerate(spec.channel_names):
        stats = fp["intensity"][channel]
        if name.strip().upper() == "CT":
            normalisation.append({"scheme": "ct", "clip": [stats["percentile_00_5"], stats["percentile_99_5"]],
                                  "mean": stats["mean"], "std": max(stats["std"], 1e-8)})
        else:
            normalisation.append({"scheme": "zscore"})
    if spec.splits:
        folds = [{"train": list(s["train"]), "val": list(s["val"])} for s in spec.splits]
        unknown = {c for fold in folds for c in fold["train"] + fold["val"]} - set(ids)
        if unknown:
            raise SegnasInputError(f"splits_final.json names cases that are not in the dataset: {sorted(unknown)[:5]}",
                                   spec.root)
        check_folds_keep_subjects(folds, subjects, spec.root / "splits_final.json")
    else:
        folds = make_folds(ids, num_folds, subjects=subjects)
    if strides != [stride] * 3:
        logger.info("anisotropic spacing %s: pooling per level %s, total stride %s", [round(float(s), 3) for s in spacing],
                    schedule, strides)
    return Plan(spec.name, str(spec.root), spec.layout, spec.channel_names, dict(spec.labels),
                [float(s) for s in spacing], patch, strides, normalisation, folds, fp, schedule, subjects, group_by)


@PLAN_FORMAT.upgrade(1)
def _per_axis_strides(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 had one integer stride for every axis and no subjects: each case was its own."""
    stride = data.get("stride")
    if not isinstance(stride, int):  # damaged: left for Plan.load to refuse with its clear message
        return data
    data["stride"] = [stride] * 3
    data["pool_strides"] = uniform_schedule(stride)
    cases = sorted({c for fold in data.get("folds", [])[:1] for c in fold["train"] + fold["val"]})
    data["subjects"] = {case: [case] for case in cases}
    data["group_by"] = None
    return data

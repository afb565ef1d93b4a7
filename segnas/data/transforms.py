"""MONAI transform chains for loading, resampling, normalising, patch sampling and augmentation.

Preprocessing (deterministic) runs once per case and is cached in memory (MONAI ``CacheDataset``).
Training batches come from :class:`TrainingBatches`, a dataset indexed by *step*: the batch of step ``s``
depends only on ``(seed, s)``, so a run resumed at step ``s`` sees exactly the batches an uninterrupted run
would have seen, with any number of loader workers.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any, Sequence

import numpy as np
import torch
from monai.data import CacheDataset, MetaTensor
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    SpatialPadd,
    Spacingd,
)
from torch.utils.data import Dataset

from segnas.data.dataset import DatasetSpec
from segnas.data.plan import Plan
from segnas.utils.progress import on_terminal, quiet

AUGMENTATIONS = ("full", "full-3d", "flips", "none")
#: Spacing ratio above which a plan's coarsest axis counts as thick slices and ``full`` augmentation rotates and
#: scales within the slices only (nnU-Net's "dummy 2D" augmentation, same threshold).
ANISOTROPY_THRESHOLD = 3.0


def case_dicts(spec: DatasetSpec, case_ids: Sequence[str]) -> list[dict[str, Any]]:
    """MONAI-style ``{"image": [...], "label": ..., "case_id": ...}`` records for the given cases."""
    records = []
    for case_id in case_ids:
        case = spec.case(case_id)
        images = [str(p) for p in case.images]
        records.append({"image": images if len(images) > 1 else images[0], "label": str(case.label),
                        "case_id": case_id})
    return records


def normalisation_transforms(plan: Plan, key: str = "image") -> list:
    """Per-channel intensity normalisation from the plan (CT: clip + global z-score; else per-case z-score)."""
    if all(n["scheme"] == "zscore" for n in plan.normalisation):
        return [NormalizeIntensityd(keys=key, channel_wise=True)]
    if plan.num_channels == 1:
        n = plan.normalisation[0]
        lo, hi = n["clip"]
        return [ScaleIntensityRanged(keys=key, a_min=lo, a_max=hi, b_min=(lo - n["mean"]) / n["std"],
                                     b_max=(hi - n["mean"]) / n["std"], clip=True)]
    return [_MixedNormalisationd(plan.normalisation, key)]


class _MixedNormalisationd:
    """Multi-channel images whose channels need different schemes (e.g. CT + PET); MONAI has no single transform."""

    def __init__(self, schemes: list[dict[str, Any]], key: str):
        self.schemes, self.key = schemes, key

    def __call__(self, data: dict) -> dict:
        image = data[self.key]
        for channel, n in enumerate(self.schemes):
            x = image[channel]
            if n["scheme"] == "ct":
                image[channel] = (x.clamp(*n["clip"]) - n["mean"]) / n["std"]
            else:
                image[channel] = (x - x.mean()) / x.std().clamp_min(1e-8)
        return data


def preprocessing(plan: Plan, with_label: bool = True) -> Compose:
    """Load, channel-first, resample to the plan's spacing, normalise. Output image float32 ``(C, H, W, D)``."""
    keys = ["image", "label"] if with_label else ["image"]
    modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
    chain = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        Spacingd(keys=keys, pixdim=plan.target_spacing, mode=modes),
        *normalisation_transforms(plan),
        EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
    ]
    if with_label:
        chain.append(CastToTyped(keys="label", dtype=torch.uint8))
        chain.append(EnsureTyped(keys="label", track_meta=False))
    return Compose(chain)


def slice_axis(plan: Plan) -> int | None:
    """The axis of thick slices (its spacing more than :data:`ANISOTROPY_THRESHOLD` times the finest), or None."""
    spacing = plan.target_spacing
    thick = int(np.argmax(spacing))
    return thick if spacing[thick] > ANISOTROPY_THRESHOLD * min(spacing) else None


def spatial_augmentation_ranges(plan: Plan, level: str) -> tuple[list[float], list[float]]:
    """Per-axis rotation (radians, about each axis) and scaling ranges of ``level``'s random affine.

    Isotropic data, or ``full-3d``: up to 15 degrees about every axis, scaling 0.85..1.15 on every axis. Thick
    slices under ``full``: as nnU-Net, rotation about the slice axis only (up to 180 degrees when the slices are
    roughly square, 15 when one in-plane side is over 1.5 times the other) and no scaling across slices, so no
    voxel is interpolated between slices 10 mm apart.
    """
    thick = slice_axis(plan) if level == "full" else None
    if thick is None:
        return [np.pi / 12] * 3, [0.15] * 3
    in_plane = [side for axis, side in enumerate(plan.patch_size) if axis != thick]
    angle = np.pi if max(in_plane) <= 1.5 * min(in_plane) else np.pi / 12
    rotation = [angle if axis == thick else 0.0 for axis in range(3)]
    return rotation, [0.0 if axis == thick else 0.15 for axis in range(3)]


def augmentation(plan: Plan, level: str = "full", foreground: float = 0.5) -> Compose:
    """Patch sampling (a ``foreground`` share of the patches centred on a foreground voxel, the rest anywhere)
    and augmentation on a preprocessed case.

    ``full``: flips on every axis, a random rotation and scaling (probability 0.2, as nnU-Net; within the slices
    on thick-slice data, see :func:`spatial_augmentation_ranges`), intensity scale and shift; ``full-3d``: the
    same with rotation about every axis whatever the spacing (segnas 0.1's ``full``); ``flips``: flips only;
    ``none``: patch sampling only.
    """
    if level not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}")
    if not 0.0 <= foreground <= 1.0:
        raise ValueError(f"the foreground share of patches is in [0, 1], got {foreground}")
    patch = plan.patch_size
    chain: list = [
        SpatialPadd(keys=["image", "label"], spatial_size=patch),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=patch, pos=foreground,
                               neg=1.0 - foreground, num_samples=1, allow_smaller=True),
    ]
    if level != "none":
        chain += [RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=axis) for axis in range(3)]
    if level in ("full", "full-3d"):
        rotation, scaling = spatial_augmentation_ranges(plan, level)
        chain += [
            RandAffined(keys=["image", "label"], prob=0.2, rotate_range=rotation, scale_range=scaling,
                        mode=["bilinear", "nearest"], padding_mode="zeros"),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.15),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.15),
        ]
    return Compose(chain)


def cached_cases(spec: DatasetSpec, plan: Plan, case_ids: Sequence[str], workers: int = 0,
                 show_progress: bool = True) -> CacheDataset:
    """Preprocessed cases held in memory (each case is loaded and preprocessed once)."""
    return CacheDataset(case_dicts(spec, case_ids), preprocessing(plan), num_workers=workers or None,
                        progress=show_progress and on_terminal() and not quiet())


class TrainingBatches(Dataset):
    """Item ``s`` is the training batch of step ``s``: ``{"image": (B, C, *patch), "label": (B, 1, *patch)}``."""

    def __init__(self, cases: Dataset, augment: Compose, batch_size: int, seed: int, num_steps: int):
        self.cases, self.augment = cases, augment
        self.batch_size, self.seed, self.num_steps = batch_size, seed, num_steps

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        images, labels = [], []
        for _ in range(self.batch_size):
            case = self.cases[int(rng.integers(len(self.cases)))]
            self.augment.set_random_state(seed=int(rng.integers(2**31)))
            sample = self.augment(deepcopy({"image": case["image"], "label": case["label"]}))
            sample = sample[0] if isinstance(sample, list) else sample
            images.append(_plain(sample["image"]).to(torch.float32))
            labels.append(_plain(sample["label"]).to(torch.uint8))
        return {"image": torch.stack(images), "label": torch.stack(labels)}


def _plain(value: Any) -> torch.Tensor:
    """A plain tensor (MONAI's ``MetaTensor`` carries metadata the trainer does not need)."""
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)

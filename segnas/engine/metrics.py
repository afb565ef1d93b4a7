"""Segmentation metrics per label: Dice, normalised surface Dice (NSD) and HD95, all from MONAI."""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from monai.networks.utils import one_hot

#: What ``segnas evaluate`` scores per case and label.
METRICS = ("dice", "nsd", "hd95")
#: NSD's default tolerance: the boundary error in mm still counted as a match.
SURFACE_TOLERANCE_MM = 1.0


def _one_hot(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(H, W, D)`` integer mask -> ``(1, K, H, W, D)`` one-hot float."""
    return one_hot(mask.long()[None, None], num_classes=num_classes, dim=1)


def dice_per_label(prediction: torch.Tensor, label: torch.Tensor, num_classes: int) -> list[float]:
    """Dice of labels 1..K-1 for integer masks ``(H, W, D)``; NaN where a label is absent from both."""
    pred, ref = _one_hot(prediction, num_classes), _one_hot(label, num_classes)
    dice = compute_dice(pred, ref, include_background=False, ignore_empty=False)[0]
    both_empty = (pred[0, 1:].sum(dim=(1, 2, 3)) == 0) & (ref[0, 1:].sum(dim=(1, 2, 3)) == 0)
    return [math.nan if empty else float(d) for d, empty in zip(dice, both_empty)]


def case_metrics(prediction: torch.Tensor, label: torch.Tensor, num_classes: int, spacing: Sequence[float],
                 nsd_tolerance_mm: Sequence[float]) -> dict[str, list[float]]:
    """Dice, NSD (tolerance in mm per label) and HD95 (mm) of labels 1..K-1 for one case."""
    pred, ref = _one_hot(prediction, num_classes), _one_hot(label, num_classes)
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument its own metrics pass internally
        warnings.simplefilter("ignore", FutureWarning)
        nsd, hd95 = _surface_metrics(pred, ref, spacing, nsd_tolerance_mm)
    return {"dice": dice_per_label(prediction, label, num_classes),
            "nsd": [float(v) for v in nsd], "hd95": [float(v) for v in hd95]}


def _surface_metrics(pred: torch.Tensor, ref: torch.Tensor, spacing: list[float],
                     nsd_tolerance_mm: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    nsd = compute_surface_dice(pred, ref, class_thresholds=list(nsd_tolerance_mm), include_background=False,
                               spacing=spacing)[0]
    hd95 = compute_hausdorff_distance(pred, ref, include_background=False, percentile=95, spacing=spacing)[0]
    return nsd, hd95

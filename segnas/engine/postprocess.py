"""Connected-component post-processing decided on validation cases, as nnU-Net decides it.

A network trained on patches sometimes marks voxels far from the organ (ACDC: blobs outside the heart that
dominate HD95). Keeping only the largest connected component removes them, but it also removes true parts of a
structure that is split in the image, so it is kept only where the validation predictions say it helps: first
for the whole foreground taken as one, then for each label on its own, each kept when it raises the validation
Dice (the foreground step: the mean over labels; a label's step: that label's). The decision is a small file,
``postprocessing.json`` in the run folder, that ``segnas predict`` then applies to every mask it writes.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

from segnas.engine.evaluate import nifti_files, read_mask
from segnas.engine.metrics import dice_per_label
from segnas.errors import SegnasInputError
from segnas.formats import FileFormat

log = logging.getLogger(__name__)

POSTPROCESSING_FORMAT = FileFormat("segnas.postprocessing", 1, what="post-processing decision")
POSTPROCESSING_NAME = "postprocessing.json"


def keep_largest_component(mask: np.ndarray, labels: Sequence[int] | None = None) -> np.ndarray:
    """``mask`` ``(H, W, D)`` of integer labels with only the largest 26-connected component of each of
    ``labels`` (None: of the foreground as one, whatever its labels); removed voxels become background."""
    # scipy's labelling, not MONAI's KeepLargestConnectedComponent: that one needs scikit-image, a dependency
    # segnas would carry for this call alone
    kept = mask.copy()
    for region in [mask > 0] if labels is None else [mask == label for label in labels]:
        components, count = ndimage.label(region, structure=np.ones((3, 3, 3), dtype=bool))
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]
            kept[region & (components != 1 + int(np.argmax(sizes)))] = 0
    return kept


def apply_postprocessing(mask: np.ndarray, decision: dict[str, Any]) -> np.ndarray:
    """``mask`` post-processed as ``decision`` (from :func:`decide_postprocessing`) says."""
    if decision["foreground"]:
        mask = keep_largest_component(mask)
    labels = [int(label) for label, keep in decision["labels"].items() if keep]
    return keep_largest_component(mask, labels) if labels else mask


def _mean_dice(pairs: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> np.ndarray:
    """Per label 1..K-1: the mean Dice over the cases where the label is present in either mask."""
    scores = np.array([dice_per_label(torch.from_numpy(p), torch.from_numpy(r), num_classes) for p, r in pairs])
    with warnings.catch_warnings():  # a label absent from every case stays NaN, and is never post-processed
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(scores, axis=0)


def decide_postprocessing(pred_dir: str | Path, label_dir: str | Path, labels: dict[int, str]) -> dict[str, Any]:
    """Whether keeping the largest component (of the foreground, then of each label) helps on the predictions
    in ``pred_dir`` against the references of the same name in ``label_dir``; ``labels`` maps foreground label
    values to names. Returns the decision with the validation Dice per label before and after."""
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    predictions, references = nifti_files(pred_dir), nifti_files(label_dir)
    names = sorted(set(predictions) & set(references))
    if not names:
        raise SegnasInputError(f"no prediction has a reference label of the same name in {label_dir}", pred_dir)
    pairs = [(read_mask(predictions[name])[0], read_mask(references[name])[0]) for name in names]
    num_classes = max(labels) + 1
    before = _mean_dice(pairs, num_classes)
    current = before
    foreground_pairs = [(keep_largest_component(p), r) for p, r in pairs]
    foreground_dice = _mean_dice(foreground_pairs, num_classes)
    keep_foreground = bool(np.nanmean(foreground_dice) > np.nanmean(before))
    if keep_foreground:
        pairs, current = foreground_pairs, foreground_dice
    keep_label: dict[str, bool] = {}
    for label in sorted(labels):
        candidate = [(keep_largest_component(p, [label]), r) for p, r in pairs]
        dice = _mean_dice(candidate, num_classes)
        keep_label[str(label)] = bool(dice[label - 1] > current[label - 1])
        if keep_label[str(label)]:
            pairs, current = candidate, dice
    decision = {"foreground": keep_foreground, "labels": keep_label, "cases": len(names),
                "dice_before": {labels[k]: float(before[k - 1]) for k in sorted(labels)},
                "dice_after": {labels[k]: float(current[k - 1]) for k in sorted(labels)}}
    log.info("post-processing decided on %d cases: foreground %s, labels %s", len(names), keep_foreground, keep_label)
    return decision


def read_postprocessing(run_dir: str | Path) -> dict[str, Any] | None:
    """The decision saved in a run folder, or None when it has none."""
    path = Path(run_dir) / POSTPROCESSING_NAME
    return POSTPROCESSING_FORMAT.read_json(path) if path.is_file() else None


def write_postprocessing(run_dir: str | Path, decision: dict[str, Any]) -> Path:
    return POSTPROCESSING_FORMAT.write_json(Path(run_dir) / POSTPROCESSING_NAME, decision)

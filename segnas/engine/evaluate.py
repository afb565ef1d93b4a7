"""Evaluate a folder of predicted masks against reference labels: CSV per case and label, JSON summary."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import torch

from segnas.engine.metrics import METRICS, SURFACE_TOLERANCE_MM, case_metrics
from segnas.errors import SegnasInputError
from segnas.utils.files import atomic_write_text
from segnas.utils.progress import progress


def nifti_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise SegnasInputError("folder does not exist", folder)
    return {p.name: p for p in sorted(folder.iterdir()) if p.name.endswith((".nii", ".nii.gz"))}


def read_mask(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj)
    except Exception as err:
        raise SegnasInputError(f"not a readable NIfTI file ({type(err).__name__}: {err})", path) from err
    if data.ndim != 3 or (np.issubdtype(data.dtype, np.floating) and not np.equal(np.round(data), data).all()):
        raise SegnasInputError("a mask must be a 3D volume of integer labels", path)
    return data.astype(np.int64), tuple(float(z) for z in image.header.get_zooms()[:3])


def evaluate_folder(pred_dir: str | Path, label_dir: str | Path, output_dir: str | Path | None = None,
                    label_names: dict[int, str] | None = None, nsd_tolerance_mm: Sequence[float] = (SURFACE_TOLERANCE_MM,),
                    show_progress: bool = True) -> dict[str, Any]:
    """Score every prediction that has a label of the same file name; writes ``metrics.csv`` and ``summary.json``."""
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    predictions, labels = nifti_files(pred_dir), nifti_files(label_dir)
    if not predictions:
        raise SegnasInputError("no NIfTI predictions found", pred_dir)
    missing = sorted(set(predictions) - set(labels))
    if missing:
        raise SegnasInputError(f"no reference label for {len(missing)} prediction(s), e.g. {missing[0]}", label_dir)
    cases = []
    for name in progress(predictions, desc="evaluating", unit="case", enabled=show_progress):
        prediction, _ = read_mask(predictions[name])
        label, spacing = read_mask(labels[name])
        if prediction.shape != label.shape:
            raise SegnasInputError(f"prediction shape {prediction.shape} differs from label shape {label.shape}",
                                   predictions[name])
        cases.append((name, prediction, label, spacing))
    num_classes = int(max(max(p.max(), l.max()) for _, p, l, _ in cases)) + 1
    if label_names:
        num_classes = max(num_classes, max(label_names) + 1)
    names = {k: (label_names or {}).get(k, str(k)) for k in range(1, num_classes)}
    tolerances = list(nsd_tolerance_mm) * (num_classes - 1) if len(nsd_tolerance_mm) == 1 else list(nsd_tolerance_mm)
    if len(tolerances) != num_classes - 1:
        raise SegnasInputError(f"give one NSD tolerance or one per label ({num_classes - 1}), got "
                               f"{len(nsd_tolerance_mm)}", "--nsd-tolerance")
    rows = []
    for name, prediction, label, spacing in cases:
        scores = case_metrics(torch.from_numpy(prediction), torch.from_numpy(label), num_classes, spacing, tolerances)
        for index, label_id in enumerate(names):
            rows.append({"case": name, "label": label_id, "label_name": names[label_id],
                         **{m: scores[m][index] for m in METRICS}})
    summary: dict[str, Any] = {"num_cases": len(cases), "nsd_tolerance_mm": dict(zip(names.values(), tolerances)),
                               "per_label": {}, "mean": {}}
    for label_id, label_name in names.items():
        values = {m: [r[m] for r in rows if r["label"] == label_id] for m in METRICS}
        summary["per_label"][label_name] = {m: _finite_mean(v) for m, v in values.items()}
    for metric in METRICS:
        summary["mean"][metric] = _finite_mean([summary["per_label"][n][metric] for n in names.values()])
    if output_dir is not None:
        output_dir = Path(output_dir)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["case", "label", "label_name", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(output_dir / "metrics.csv", buffer.getvalue())
        atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _finite_mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None

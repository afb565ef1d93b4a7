"""Prediction to NIfTI masks with the input's shape, affine and header orientation, written atomically."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from segnas.data.plan import Plan
from segnas.data.transforms import preprocessing
from segnas.engine.export import bundle_plan, is_bundle, load_bundle_model
from segnas.engine.inference import DEFAULT_TTA, TTA_CHOICES, ensemble_probabilities
from segnas.engine.postprocess import apply_postprocessing, read_postprocessing
from segnas.engine.run import FINAL_MODEL, load_model
from segnas.errors import SegnasInputError
from segnas.utils.files import atomic_write, prepare_output_dir
from segnas.utils.progress import progress
from segnas.utils.runtime import configure_torch, pick_device

_CHANNEL_SUFFIX = re.compile(r"^(.*)_(\d{4})$")


def _case_name(path: Path) -> str:
    return path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem


def collect_inputs(source: str | Path, num_channels: int) -> dict[str, list[Path]]:
    """Case id -> image files. A folder may hold MSD files (one per case) or nnU-Net ``CASE_XXXX`` channel files."""
    source = Path(source)
    if source.is_file():
        files = [source]
    elif source.is_dir():
        files = sorted(p for p in source.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    else:
        raise SegnasInputError("input does not exist", source)
    if not files:
        raise SegnasInputError("no NIfTI files (.nii, .nii.gz) found", source)
    cases: dict[str, list[Path]] = {}
    for path in files:
        match = _CHANNEL_SUFFIX.match(_case_name(path))
        if num_channels > 1 and not match:
            raise SegnasInputError(f"the model needs {num_channels} channels, given as CASE_0000, CASE_0001, ... files",
                                   path)
        cases.setdefault(match.group(1) if match else _case_name(path), []).append(path)
    for case_id, paths in cases.items():
        if len(paths) not in (1, num_channels):
            raise SegnasInputError(f"case {case_id} has {len(paths)} channel files, the model needs {num_channels}",
                                   paths[0])
        for path in paths:
            try:
                nib.load(str(path)).shape
            except Exception as err:
                raise SegnasInputError(f"not a readable NIfTI image ({type(err).__name__}: {err})", path) from err
    return cases


def predict_run(run_dirs: str | Path | Sequence[str | Path], source: str | Path, output_dir: str | Path,
                force: bool = False, device: str = "auto", overlap: float = 0.5, tta: str = DEFAULT_TTA,
                amp: bool = True, postprocess: bool = True, show_progress: bool = True) -> list[Path]:
    """Segment every case under ``source`` with the final model of one run, or the mean softmax of several (an
    ensemble, e.g. the five folds), averaged over the 8 mirrorings by default (``tta="none"``: one pass, about 8x
    faster). A bundle written by ``segnas export`` may stand for a run; ``amp`` predicts in the device's native
    reduced precision (see :func:`~segnas.utils.runtime.autocast_dtype`); ``postprocess`` applies the
    connected-component decision of ``segnas postprocess`` the runs hold (an ensemble's runs must agree).
    Returns the written mask paths."""
    configure_torch()
    runs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(run) for run in run_dirs]
    if tta not in TTA_CHOICES:
        raise SegnasInputError(f"must be one of {list(TTA_CHOICES)}, got {tta!r}", "--tta")
    plan = _ensemble_plan(runs)
    torch_device = pick_device(device)
    models = [(_load_predictor(run, torch_device), _source_plan(run).patch_size) for run in runs]
    decision = _ensemble_postprocessing(runs) if postprocess else None
    cases = collect_inputs(source, plan.num_channels)
    output_dir = prepare_output_dir(output_dir, force, "prediction folder")
    try:
        return _predict_cases(models, plan, cases, output_dir, torch_device, overlap, tta, amp, decision,
                              show_progress)
    except BaseException:
        shutil.rmtree(output_dir, ignore_errors=True)  # no half-filled prediction folder
        raise


def _ensemble_postprocessing(runs: list[Path]) -> dict[str, Any] | None:
    """The post-processing every run holds (None when a run has none); runs that decided differently are refused,
    since no single decision was validated for their ensemble."""
    decisions = [None if is_bundle(run) else read_postprocessing(run) for run in runs]
    if any(decision is None for decision in decisions):
        return None
    steps = [(d["foreground"], d["labels"]) for d in decisions if d is not None]
    if any(step != steps[0] for step in steps):
        raise SegnasInputError("the runs decided post-processing differently; run segnas predict --no-postprocess "
                               "or decide once for the ensemble", runs[0])
    return decisions[0]


def _ensemble_plan(runs: list[Path]) -> Plan:
    """The plan every run shares (spacing, normalisation, labels, channels: the image must be preprocessed the
    same way for each model); a run trained under another is refused by name."""
    if not runs:
        raise SegnasInputError("no run folder given")
    plans = [_source_plan(run) for run in runs]

    def preprocessing_of(plan: Plan) -> dict[str, Any]:
        return {k: v for k, v in plan.to_dict().items() if k not in ("folds", "patch_size")}

    for run, plan in zip(runs[1:], plans[1:]):
        if preprocessing_of(plan) != preprocessing_of(plans[0]):
            differ = [k for k, v in preprocessing_of(plan).items() if preprocessing_of(plans[0]).get(k) != v]
            raise SegnasInputError(f"this run's plan differs from {runs[0]}'s in {', '.join(differ)}; an ensemble "
                                   f"averages runs trained on the same plan", run)
    return plans[0]


def _source_plan(run: Path) -> Plan:
    """The plan of a run folder, or of a bundle written by ``segnas export``."""
    if is_bundle(run):
        return bundle_plan(run)
    if not (run / "plan.json").is_file():
        raise SegnasInputError("not a run folder of segnas train (no plan.json) nor a bundle of segnas export", run)
    return Plan.load(run / "plan.json")


def _load_predictor(run: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    if is_bundle(run):
        return load_bundle_model(run, device)
    return load_model(run / FINAL_MODEL, device)[0]


def _predict_cases(models: list[tuple[Callable[[torch.Tensor], torch.Tensor], list[int]]], plan: Plan, cases: dict[str, list[Path]],
                   output_dir: Path, torch_device: torch.device, overlap: float, tta: str, amp: bool,
                   decision: dict[str, Any] | None, show_progress: bool) -> list[Path]:
    transform = preprocessing(plan, with_label=False)
    written = []
    for case_id, paths in progress(cases.items(), desc="predicting", unit="case", enabled=show_progress):
        try:
            original = nib.load(str(paths[0]))
            data = transform({"image": [str(p) for p in paths] if len(paths) > 1 else str(paths[0])})
        except Exception as err:
            raise SegnasInputError(f"cannot read or preprocess the image ({type(err).__name__}: {err})",
                                   paths[0]) from err
        image = torch.as_tensor(data["image"])[None].to(torch_device)
        probabilities = ensemble_probabilities(models, image, overlap, tta, amp=amp)
        shape = original.shape[:3]
        if tuple(probabilities.shape[2:]) != tuple(shape):  # back from the plan's spacing to the input grid
            probabilities = F.interpolate(probabilities, size=shape, mode="trilinear", align_corners=False)
        mask = probabilities.argmax(1)[0].cpu().numpy().astype(np.uint8)
        if decision is not None:
            mask = apply_postprocessing(mask, decision)
        header = original.header.copy()
        header.set_data_dtype(np.uint8)
        if len(header.get_data_shape()) != 3:
            header.set_data_shape(shape)
        out = nib.Nifti1Image(mask, original.affine, header)
        out.set_qform(original.get_qform(), int(original.header["qform_code"]))
        out.set_sform(original.get_sform(), int(original.header["sform_code"]))
        target = output_dir / f"{case_id}.nii.gz"
        atomic_write(target, lambda tmp: nib.save(out, str(tmp)))
        written.append(target)
    return written

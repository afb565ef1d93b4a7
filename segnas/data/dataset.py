"""Reading and validating datasets in Medical Segmentation Decathlon or nnU-Net v2 raw layout.

Both layouts become one :class:`DatasetSpec`: a list of :class:`Case` (image file(s) per case, label
file) plus the label names and channel names. :func:`scan_dataset` opens every case once, checks it,
and returns the per-case facts the fingerprint needs, so validation and fingerprinting cost one pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import nibabel as nib
from nibabel.openers import ImageOpener
import numpy as np

from segnas.errors import SegnasInputError
from segnas.utils.progress import progress


@dataclass(frozen=True)
class Case:
    """One training case. ``images`` has one file per channel (MSD: a single, possibly 4D, file)."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


class LabelsAndChannels:
    """Counts derived from ``labels`` (id -> name) and ``channel_names``, shared by datasets and plans."""

    labels: dict[int, str]
    channel_names: list[str]

    @property
    def num_classes(self) -> int:
        """Output channels of a network, background included."""
        return max(self.labels) + 1

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)


@dataclass
class DatasetSpec(LabelsAndChannels):
    """A dataset folder, whatever its layout."""

    root: Path
    name: str
    layout: str  # "msd" or "nnunet"
    channel_names: list[str]
    labels: dict[int, str]
    cases: list[Case]
    splits: list[dict[str, list[str]]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise SegnasInputError(f"case {case_id!r} is not in the dataset", self.root)


def _strip_nifti(name: str) -> str:
    for ending in (".nii.gz", ".nii"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return Path(name).stem


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SegnasInputError(f"not valid JSON ({err})", path) from err


def load_dataset(root: str | Path) -> DatasetSpec:
    """Read ``root/dataset.json`` of an MSD task or an nnU-Net v2 raw dataset. Files are checked by :func:`scan_dataset`."""
    root = Path(root)
    if not root.is_dir():
        raise SegnasInputError("dataset folder does not exist", root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise SegnasInputError("no dataset.json: expected a Medical Segmentation Decathlon or nnU-Net v2 raw folder",
                               root)
    meta = _read_json(meta_path)
    if not isinstance(meta, dict):
        raise SegnasInputError("dataset.json must hold a JSON object", meta_path)
    if "channel_names" in meta and "file_ending" in meta:
        spec = _nnunet_dataset(root, meta, meta_path)
    elif "training" in meta:
        spec = _msd_dataset(root, meta, meta_path)
    else:
        raise SegnasInputError("neither an MSD dataset.json (needs 'training') nor an nnU-Net v2 one "
                               "(needs 'channel_names' and 'file_ending')", meta_path)
    if not spec.cases:
        raise SegnasInputError("the dataset has no training cases", meta_path)
    if 0 not in spec.labels:
        raise SegnasInputError("labels must declare the background as 0", meta_path)
    return spec


def label_names(meta: dict, meta_path: Path) -> dict[int, str]:
    """Label id -> name from a ``dataset.json`` of either layout: MSD maps ``"1": "name"``, nnU-Net v2
    (recognised by ``channel_names``) maps ``"name": 1``."""
    labels: dict[int, str] = {}
    if "channel_names" in meta:
        for name, value in (meta.get("labels") or {}).items():
            if not isinstance(value, int):
                raise SegnasInputError(f"label {name!r} is {value!r}: region-based labels are not supported",
                                       meta_path)
            labels[value] = name
    else:
        try:
            labels = {int(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        except (ValueError, AttributeError, TypeError) as err:
            raise SegnasInputError(f"'labels' must map integer strings to names ({err})", meta_path) from err
    if not labels:
        raise SegnasInputError("'labels' is missing or empty", meta_path)
    return labels


def read_label_names(meta_path: str | Path) -> dict[int, str]:
    """:func:`label_names` of a ``dataset.json`` file."""
    meta_path = Path(meta_path)
    if not meta_path.is_file():
        raise SegnasInputError("dataset.json does not exist", meta_path)
    meta = _read_json(meta_path)
    if not isinstance(meta, dict):
        raise SegnasInputError("dataset.json must hold a JSON object", meta_path)
    return label_names(meta, meta_path)


def _msd_dataset(root: Path, meta: dict, meta_path: Path) -> DatasetSpec:
    labels = label_names(meta, meta_path)
    try:
        modality = meta.get("modality", {"0": "image"})
        channel_names = [str(modality[k]) for k in sorted(modality, key=int)]
    except (ValueError, AttributeError, TypeError) as err:
        raise SegnasInputError(f"'modality' must map integer strings to names ({err})", meta_path) from err
    cases = []
    for index, entry in enumerate(meta["training"]):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise SegnasInputError(f"training entry {index} needs 'image' and 'label'", meta_path)
        image = (root / entry["image"]).resolve()
        label = (root / entry["label"]).resolve()
        cases.append(Case(_strip_nifti(image.name), (image,), label))
    return DatasetSpec(root, str(meta.get("name", root.name)), "msd", channel_names, labels, cases,
                       extra={"tensorImageSize": meta.get("tensorImageSize")})


def _nnunet_dataset(root: Path, meta: dict, meta_path: Path) -> DatasetSpec:
    ending = meta["file_ending"]
    try:
        channel_names = [str(meta["channel_names"][k]) for k in sorted(meta["channel_names"], key=int)]
    except (ValueError, TypeError) as err:
        raise SegnasInputError(f"'channel_names' must map integer strings to names ({err})", meta_path) from err
    labels = label_names(meta, meta_path)
    label_dir = root / "labelsTr"
    if not label_dir.is_dir():
        raise SegnasInputError("labelsTr/ is missing", root)
    cases = []
    for label in sorted(label_dir.glob(f"*{ending}")):
        case_id = label.name[: -len(ending)]
        images = tuple(root / "imagesTr" / f"{case_id}_{c:04d}{ending}" for c in range(len(channel_names)))
        cases.append(Case(case_id, images, label))
    splits = None
    for candidate in (root / "splits_final.json", root.parent / "splits_final.json"):
        if candidate.is_file():
            splits = _read_json(candidate)
            break
    return DatasetSpec(root, str(meta.get("name", root.name)), "nnunet", channel_names, labels, cases, splits,
                       extra={"file_ending": ending})


# ----- validation and the per-case facts for the fingerprint ---------------------------------------------------
@dataclass
class CaseFacts:
    """What one pass over a case learns: geometry, intensities on the foreground, label voxel counts."""

    case_id: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    foreground_samples: list[np.ndarray]  # per channel, up to 10,000 foreground intensities
    label_voxels: dict[int, int]


def _load_nifti(path: Path, what: str, case_id: str) -> tuple[np.ndarray, nib.Nifti1Image]:
    if not path.is_file():
        raise SegnasInputError(f"case {case_id}: {what} file is missing", path)
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj)
    except Exception as err:  # nibabel raises many types for truncated or foreign files
        raise SegnasInputError(f"case {case_id}: {what} is not a readable NIfTI file ({type(err).__name__}: {err})",
                               path) from err
    return data, image


def stored_spacing(path: Path, image: nib.Nifti1Image) -> tuple[float, ...]:
    """The voxel spacing as the file's header stores it (``pixdim[1:4]``; ``image`` is the file loaded, whose
    header kind is reread unrepaired). nibabel's loader quietly repairs a zero or negative pixdim (to 1, or its
    absolute value), which would let a broken header pass as 1 mm."""
    with ImageOpener(str(path)) as handle:
        header = type(image.header).from_fileobj(handle, check=False)
    return tuple(float(z) for z in header["pixdim"][1:4])


def check_case(case: Case, labels: Iterable[int], num_channels: int,
               rng: np.random.Generator | None = None) -> CaseFacts:
    """Open one case and raise :class:`SegnasInputError` on the first problem found."""
    rng = rng or np.random.default_rng(0)
    channels = []
    reference: nib.Nifti1Image | None = None
    for path in case.images:
        data, image = _load_nifti(path, "image", case.case_id)
        if data.ndim == 4:
            channels.extend(np.moveaxis(data, -1, 0))
        elif data.ndim == 3:
            channels.append(data)
        else:
            raise SegnasInputError(f"case {case.case_id}: image has {data.ndim} dimensions, expected 3 (or 4 with "
                                   "channels last)", path)
        if reference is None:
            reference = image
        elif image.shape[:3] != reference.shape[:3] or not np.allclose(image.affine, reference.affine, atol=1e-4):
            raise SegnasInputError(f"case {case.case_id}: channel files differ in shape or affine", path)
    assert reference is not None
    if len(channels) != num_channels:
        raise SegnasInputError(f"case {case.case_id}: image has {len(channels)} channel(s) but dataset.json "
                               f"declares {num_channels}", case.images[0])
    for channel in channels:
        if np.issubdtype(channel.dtype, np.floating) and not np.isfinite(channel).all():
            bad = int((~np.isfinite(channel)).sum())
            raise SegnasInputError(f"case {case.case_id}: image holds {bad} NaN/inf voxel(s)", case.images[0])
    if case.label is None:
        raise SegnasInputError(f"case {case.case_id}: no label file")
    label, label_image = _load_nifti(case.label, "label", case.case_id)
    if label.shape != reference.shape[:3]:
        raise SegnasInputError(f"case {case.case_id}: label shape {label.shape} differs from image shape "
                               f"{reference.shape[:3]}", case.label)
    if not np.allclose(label_image.affine, reference.affine, atol=1e-3):
        raise SegnasInputError(f"case {case.case_id}: label affine differs from the image affine (the two are not "
                               "aligned in space)", case.label)
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all() or not np.equal(np.round(label), label).all():
            raise SegnasInputError(f"case {case.case_id}: label holds non-integer values", case.label)
    values = np.unique(label).astype(np.int64)
    undeclared = sorted(set(values.tolist()) - set(labels))
    if undeclared:
        raise SegnasInputError(f"case {case.case_id}: label values {undeclared} are not declared in dataset.json "
                               f"(declared: {sorted(labels)})", case.label)
    foreground = label > 0
    samples = []
    for channel in channels:
        voxels = channel[foreground] if foreground.any() else channel.reshape(-1)
        if voxels.size > 10_000:
            voxels = rng.choice(voxels, 10_000, replace=False)
        samples.append(voxels.astype(np.float64))
    counts = {int(v): int((label == v).sum()) for v in values}
    zooms = tuple(float(z) for z in reference.header.get_zooms()[:3])
    stored = stored_spacing(case.images[0], reference)
    if not all(np.isfinite(z) and z > 0 for z in (*zooms, *stored)):
        raise SegnasInputError(f"case {case.case_id}: voxel spacing {list(stored)} is not positive and finite (the "
                               "NIfTI header's pixdim): its geometry is unknown", case.images[0])
    return CaseFacts(case.case_id, tuple(int(s) for s in reference.shape[:3]), zooms, samples, counts)


def scan_dataset(spec: DatasetSpec, show_progress: bool = True) -> list[CaseFacts]:
    """Validate every case (see :func:`check_case`) and return their facts; the first problem raises."""
    rng = np.random.default_rng(0)
    facts = []
    for case in progress(spec.cases, desc=f"checking {spec.name}", unit="case", enabled=show_progress):
        facts.append(check_case(case, spec.labels, spec.num_channels, rng))
    absent = [label for label in spec.labels if label and not any(f.label_voxels.get(label) for f in facts)]
    if absent:  # a network would learn nothing for it, and every score of it would be undefined
        raise SegnasInputError(f"label(s) {absent} declared in dataset.json are held by no case's label file",
                               spec.root / "dataset.json")
    return facts


def cases_without_label(spec: DatasetSpec, facts: list[CaseFacts]) -> dict[int, int]:
    """Declared foreground label -> how many cases lack it, for those some cases lack (nnU-Net's integrity check
    reports these: a structure missing from some images is legitimate, but worth knowing)."""
    missing = {label: sum(1 for f in facts if not f.label_voxels.get(label)) for label in spec.labels if label}
    return {label: count for label, count in missing.items() if count}

"""Data: dataset folders (MSD, nnU-Net v2), validation, fingerprint, plan, folds, MONAI transforms."""

from segnas.data.dataset import Case, DatasetSpec, load_dataset, scan_dataset
from segnas.data.plan import Plan, make_plan

__all__ = ["Case", "DatasetSpec", "Plan", "load_dataset", "make_plan", "scan_dataset"]

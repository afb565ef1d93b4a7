"""Download a Medical Segmentation Decathlon task through MONAI's ``DecathlonDataset`` (it knows the URLs)."""

from __future__ import annotations

from pathlib import Path

from monai.apps import DecathlonDataset

from segnas.errors import SegnasInputError

MSD_TASKS = tuple(DecathlonDataset.resource)


def download_msd(task: str, root: str | Path) -> Path:
    """Fetch and extract ``task`` (e.g. ``Task04_Hippocampus``) under ``root``; returns the task folder."""
    if task not in MSD_TASKS:
        raise SegnasInputError(f"unknown MSD task {task!r}; choose one of {', '.join(MSD_TASKS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # cache_rate=0: we only want the files on disk, not the volumes in memory.
    DecathlonDataset(root_dir=str(root), task=task, section="training", download=True, cache_rate=0.0,
                     num_workers=0, progress=True)
    return root / task

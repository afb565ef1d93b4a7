"""A small synthetic MSD-format dataset, so ``segnas demo`` runs with no download.

Each case is a 3D volume of random spheres from MONAI's ``create_test_image_3d`` (noise added), with two
foreground labels. Files are NIfTI with 1 mm spacing, laid out exactly like an MSD task.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data.synthetic import create_test_image_3d

from segnas.utils.files import atomic_write, atomic_write_text, prepare_output_dir


def write_synthetic_dataset(root: str | Path, num_cases: int = 20, shape: tuple[int, int, int] = (40, 40, 40),
                            seed: int = 0, force: bool = False, noise: float = 0.3,
                            radius: tuple[int, int] = (4, 9),
                            spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    """Write ``num_cases`` image/label pairs and ``dataset.json`` under ``root``; returns ``root``. ``noise``
    (the largest noise amplitude, objects have intensity 1) and ``radius`` (the spheres' smallest and largest
    radius, in voxels) set how hard the task is; the defaults are the demo's. ``spacing`` (mm) makes thick-slice
    data such as cardiac MRI's, e.g. ``(1, 1, 4)``."""
    root = prepare_output_dir(root, force, "synthetic dataset folder")
    rng = np.random.RandomState(seed)
    training = []
    for index in range(num_cases):
        image, label = create_test_image_3d(*shape, num_objs=6, rad_max=radius[1], rad_min=radius[0], noise_max=noise,
                                            num_seg_classes=2, random_state=rng)
        image = (image * 400 + 100).astype(np.float32)  # an MRI-like intensity range, not already normalised
        affine = np.diag([*map(float, spacing), 1.0])
        name = f"synth_{index:03d}.nii.gz"
        for folder, data in (("imagesTr", image), ("labelsTr", label.astype(np.uint8))):
            nifti = nib.Nifti1Image(data, affine)
            atomic_write(root / folder / name, lambda tmp, n=nifti: nib.save(n, str(tmp)))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "SegnasSynthetic", "description": "random spheres with two labels (segnas demo)",
            "tensorImageSize": "3D", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "inner",
                                                                         "2": "outer"},
            "numTraining": num_cases, "numTest": 0, "training": training, "test": []}
    atomic_write_text(root / "dataset.json", json.dumps(meta, indent=1) + "\n")
    return root

"""Connected-component post-processing: what is removed, and the decision taken on validation cases."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from segnas.engine.postprocess import apply_postprocessing, decide_postprocessing, keep_largest_component


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A reference with label 1 (one cube) and label 2 (two far-apart cubes, both real), and a prediction that
    matches it plus a small spurious label-1 blob far from everything."""
    reference = np.zeros((40, 40, 12), np.uint8)
    reference[4:16, 4:16, 2:10] = 1
    reference[16:22, 4:16, 2:10] = 2  # touches label 1
    reference[30:38, 30:38, 2:10] = 2  # a second real component of label 2
    prediction = reference.copy()
    prediction[30:32, 2:4, 0:2] = 1  # spurious
    return prediction, reference


def test_largest_component_is_kept_per_label_or_for_the_foreground() -> None:
    prediction, reference = _scene()
    per_label = keep_largest_component(prediction, [1])
    assert np.array_equal(per_label, reference)  # the blob goes, label 2 is untouched
    whole = keep_largest_component(prediction)
    assert whole[30:32, 2:4, 0:2].sum() == 0 and whole[30:38, 30:38, 2:10].sum() == 0  # far parts removed
    assert np.array_equal(whole[:22], reference[:22])
    assert np.array_equal(apply_postprocessing(prediction, {"foreground": False, "labels": {"1": True, "2": False}}),
                          reference)


def test_decision_keeps_only_what_raises_validation_dice(tmp_path: Path) -> None:
    prediction, reference = _scene()
    for folder, data in (("pred", prediction), ("ref", reference)):
        (tmp_path / folder).mkdir()
        for case in ("a", "b"):
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / folder / f"{case}.nii.gz"))
    decision = decide_postprocessing(tmp_path / "pred", tmp_path / "ref", {1: "one", 2: "two"})
    # the foreground step would cut label 2's second cube; label 1's step removes only the blob
    assert decision["foreground"] is False and decision["labels"] == {"1": True, "2": False}
    assert decision["cases"] == 2 and decision["dice_after"]["one"] == 1.0 > decision["dice_before"]["one"]
    assert decision["dice_after"]["two"] == decision["dice_before"]["two"] == 1.0

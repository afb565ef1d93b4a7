"""The failure sweep of docs/reliability.md: bad input of every kind, across the commands, ends in one line
``segnas: error: <file or option>: <problem>`` (followed, where a file has several problems, by one ``  - ``
line per problem), exit status 2, no traceback, and nothing written or overwritten;
a full disk or an unwritable folder leaves earlier results intact. Each case is one row of the table there (its id
is the parameter of ``test_bad_input_is_one_clear_line_and_writes_nothing``)."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

from segnas.cli.main import main
from segnas.spaces.presets import unet_architecture
from tests.conftest import TINY_SPACE


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-step run of the tiny U-Net-shaped topology network."""
    root = tmp_path_factory.mktemp("trained")
    arch = unet_architecture(TINY_SPACE).save(root / "arch.json")
    assert run_main(["train", str(tiny_dataset), "--arch", str(arch), "--out", str(root / "run"), "--steps", "2",
                 "--batch", "1", "--device", "cpu", "--quiet"]) == 0
    return root / "run"


class Case:
    """What one row needs: ``tmp`` (an empty folder), a copy of the tiny dataset, a trained run."""

    def __init__(self, tmp: Path, dataset: Path, run: Path):
        self.tmp, self.dataset_source, self.run_source = tmp, dataset, run

    @property
    def dataset(self) -> Path:
        target = self.tmp / "data"
        if not target.exists():
            shutil.copytree(self.dataset_source, target)
        return target

    @property
    def run(self) -> Path:
        target = self.tmp / "run"
        if not target.exists():
            shutil.copytree(self.run_source, target)
        return target

    def arch(self, edit: Callable[[dict], None]) -> Path:
        data = unet_architecture(TINY_SPACE).to_dict()
        edit(data)
        path = self.tmp / "arch.json"
        path.write_text(json.dumps(data))
        return path

    def image(self, name: str = "synth_000.nii.gz") -> Path:
        return self.dataset / "imagesTr" / name

    def rewrite_label(self, name: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
        path = self.dataset / "labelsTr" / name
        old = nib.load(str(path))
        nib.save(nib.Nifti1Image(change(np.asarray(old.dataobj).copy()), old.affine), str(path))


def _labels_undeclared(c: Case) -> list[str]:
    def seven(a: np.ndarray) -> np.ndarray:
        a[0, 0, 0] = 7
        return a

    c.rewrite_label("synth_004.nii.gz", seven)
    return ["plan", str(c.dataset), "--out", str(c.tmp / "out")]


def _zero_spacing(c: Case) -> list[str]:
    """An image whose header says its slices are 0 mm apart (nibabel would read it as 1 mm): ``pixdim[3]``, the
    float32 at byte 88 of a NIfTI-1 header, zeroed in the file as stored."""
    import gzip
    import struct

    path = c.image("synth_002.nii.gz")
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[88:92] = struct.pack("<f", 0.0)
    path.write_bytes(gzip.compress(bytes(raw)))
    return ["plan", str(c.dataset), "--out", str(c.tmp / "out")]


def _dataset_json(c: Case, change: Callable[[dict], None]) -> Path:
    meta = json.loads((c.dataset / "dataset.json").read_text())
    change(meta)
    (c.dataset / "dataset.json").write_text(json.dumps(meta))
    return c.dataset


def _other_plan_run(c: Case) -> list[str]:
    other = c.tmp / "other"
    shutil.copytree(c.run, other)
    plan = json.loads((other / "plan.json").read_text())
    plan["target_spacing"] = [2.0, 2.0, 2.0]
    (other / "plan.json").write_text(json.dumps(plan))
    return ["predict", str(c.run), str(other), "--input", str(c.image()), "--output", str(c.tmp / "out")]


def _truncated(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:200])
    return path


def _newer(path: Path) -> Path:
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    return path


#: id -> (the command line, given a Case; a fragment the error line must hold). Every command writes to
#: ``tmp/out`` where it writes at all, which must not exist afterwards.
CASES: dict[str, tuple[Callable[[Case], list[str]], str]] = {
    # datasets and images
    "dataset-missing": (lambda c: ["plan", str(c.tmp / "nowhere"), "--out", str(c.tmp / "out")],
                        "dataset folder does not exist"),
    "dataset-json-not-json": (lambda c: ((c.dataset / "dataset.json").write_text("{oops"),
                                         ["plan", str(c.dataset), "--out", str(c.tmp / "out")])[1], "not valid JSON"),
    "dataset-no-training-cases": (lambda c: ["plan", str(_dataset_json(c, lambda m: m.update(training=[]))),
                                             "--out", str(c.tmp / "out")], "no training cases"),
    "image-truncated": (lambda c: (_truncated(c.image("synth_001.nii.gz")),
                                   ["plan", str(c.dataset), "--out", str(c.tmp / "out")])[1],
                        "not a readable NIfTI file"),
    "label-missing": (lambda c: ((c.dataset / "labelsTr" / "synth_002.nii.gz").unlink(),
                                 ["plan", str(c.dataset), "--out", str(c.tmp / "out")])[1], "label file is missing"),
    "label-values-undeclared": (_labels_undeclared, "label values [7] are not declared"),
    "label-shape-differs": (lambda c: (c.rewrite_label("synth_003.nii.gz", lambda a: a[:, :, :20]),
                                       ["plan", str(c.dataset), "--out", str(c.tmp / "out")])[1],
                            "differs from image shape"),
    "spacing-zero": (_zero_spacing, "synth_002.nii.gz: case synth_002: voxel spacing [1.0, 1.0, 0.0] is not positive"),
    "label-declared-absent": (lambda c: ["plan", str(_dataset_json(c, lambda m: m["labels"].update({"7": "extra"}))),
                                         "--out", str(c.tmp / "out")], "label(s) [7] declared in dataset.json are held "
                                                                      "by no case"),
    # architecture files
    "arch-not-json": (lambda c: ((c.tmp / "a.json").write_text("[1, 2"),
                                 ["arch", "validate", str(c.tmp / "a.json")])[1], "a.json: not valid JSON"),
    "arch-other-format": (lambda c: ["arch", "validate", str(c.arch(lambda d: d.update(format="something")))],
                          "not a segnas architecture file"),
    "arch-newer-version": (lambda c: ["arch", "validate", str(_newer(c.arch(lambda d: None)))],
                           "upgrade segnas to read it"),
    "arch-infeasible": (lambda c: ["arch", "validate", str(c.arch(lambda d: d["edges"][1].__setitem__(
        slice(None), [0] * len(d["edges"][1]))))], "has no active edge"),
    "arch-stride-too-deep": (lambda c: ["train", str(c.dataset), "--arch", str(c.arch(lambda d: None)), "--out",
                                        str(c.tmp / "out"), "--patch", "24", "24", "22"], "multiple of"),
    # budgets and strategies
    "budget-unit": (lambda c: ["search", str(c.dataset), "--budget", "5bananas", "--out", str(c.tmp / "out")],
                    "not understood"),
    "budget-kind-refused": (lambda c: ["search", str(c.dataset), "--strategy", "thrifty", "--budget", "150ms",
                                       "--profile", "tiny", "--out", str(c.tmp / "out")],
                            "searches under parameters or memory budgets"),
    "budget-out-of-range": (lambda c: ["search", str(c.dataset), "--strategy", "thrifty", "--budget", "1Gparams",
                                       "--profile", "tiny", "--out", str(c.tmp / "out"), "--device", "cpu"],
                            "outside the parameters range"),
    "strategy-unknown": (lambda c: ["search", str(c.dataset), "--strategy", "nope", "--out", str(c.tmp / "out")],
                         "--strategy: invalid choice"),
    "option-of-another-strategy": (lambda c: ["search", str(c.dataset), "--strategy", "thrifty", "--ram-factor",
                                              "0.5", "--out", str(c.tmp / "out")], "not an option of strategy"),
    "window-not-a-fraction": (lambda c: ["search", str(c.dataset), "--window", "3", "--profile", "tiny", "--out",
                                         str(c.tmp / "out")], "is not a fraction of the budget"),
    # command-line values
    "steps-not-a-number": (lambda c: ["train", str(c.dataset), "--net", "monai-unet", "--out", str(c.tmp / "out"),
                                      "--steps", "abc"], "--steps: invalid int value"),
    "threads-zero": (lambda c: ["train", str(c.dataset), "--net", "monai-unet", "--out", str(c.tmp / "out"),
                                "--threads", "0"], "--threads: must be at least 1"),
    "fold-missing": (lambda c: ["train", str(c.dataset), "--net", "monai-unet", "--out", str(c.tmp / "out"),
                                "--fold", "9"], "fold 9 does not exist"),
    "export-format": (lambda c: ["export", str(c.run), "--format", "tflite", "--out", str(c.tmp / "out")],
                      "--format: invalid choice"),
    # plans, checkpoints, models
    "plan-damaged": (lambda c: ((c.tmp / "plan.json").write_text('{"format": "segnas.plan", "version": 1}'),
                                ["train", str(c.dataset), "--net", "monai-unet", "--plan", str(c.tmp / "plan.json"),
                                 "--out", str(c.tmp / "out")])[1], "plan is incomplete or damaged"),
    "model-damaged": (lambda c: (_truncated(c.run / "model_final.pt"),
                                 ["predict", str(c.run), "--input", str(c.image()), "--output", str(c.tmp / "out")])[1],
                      "cannot read the model file"),
    "run-json-newer": (lambda c: (_newer(c.run / "run.json"),
                                  ["export", str(c.run), "--out", str(c.tmp / "out")])[1],
                       "upgrade segnas to read it"),
    # run and search folders
    "predict-not-a-run": (lambda c: ["predict", str(c.tmp), "--input", str(c.image()), "--output",
                                     str(c.tmp / "out")], "not a run folder"),
    "predict-input-not-nifti": (lambda c: ((c.tmp / "in.nii.gz").write_bytes(b"nope"),
                                           ["predict", str(c.run), "--input", str(c.tmp / "in.nii.gz"), "--output",
                                            str(c.tmp / "out")])[1], "not a readable NIfTI image"),
    "ensemble-of-other-plans": (_other_plan_run, "an ensemble averages runs trained on the same plan"),
    "resume-not-a-search": (lambda c: ["search", str(c.dataset), "--strategy", "thrifty", "--profile", "tiny",
                                       "--resume", "--out", str(c.run)], "nothing to resume"),
    "analyze-not-a-search": (lambda c: ["analyze", "ranking", str(c.run), "--random", "2"],
                             "not a segnas search folder"),
    "export-not-a-run": (lambda c: ["export", str(c.tmp), "--out", str(c.tmp / "out")], "no run.json"),
    "evaluate-no-labels": (lambda c: ["evaluate", str(c.dataset / "imagesTr"), "--labels", str(c.tmp / "none"),
                                      "--out", str(c.tmp / "out")], "none: folder does not exist"),
    "report-not-a-search": (lambda c: ["report", str(c.run), "--out", str(c.tmp / "out")],
                            "not a segnas search folder"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line_and_writes_nothing(case: str, tiny_dataset: Path, trained: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    command, fragment = CASES[case]
    argv = command(Case(tmp_path, tiny_dataset, trained))
    code = run_main(["--quiet", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2, err
    assert lines and lines[0].startswith("segnas: error: ") and fragment in err, err
    assert all(line.startswith("  - ") for line in lines[1:]), err  # a list of problems, one per line
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def run_main(argv: list[str]) -> int:
    """``segnas ARGV`` in this process; the exit status (argparse's refusals exit through ``SystemExit``)."""
    try:
        return main(argv)
    except SystemExit as exit:
        return int(exit.code or 0)


def test_a_full_disk_leaves_no_half_written_file_and_the_earlier_result_intact(
        trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import segnas.utils.files as files

    run = Path(shutil.copytree(trained, tmp_path / "run"))
    before = (run / "run.json").read_bytes()
    real_replace = files.os.replace

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full_disk)
    code = run_main(["export", str(run), "--out", str(tmp_path / "bundle"), "--quiet"])
    monkeypatch.setattr(files.os, "replace", real_replace)
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("segnas: error: ") and "No space left on device" in err, err
    assert not (tmp_path / "bundle").exists()  # the half-made bundle is removed
    assert (run / "run.json").read_bytes() == before
    assert not list(tmp_path.rglob("*.tmp*"))


def test_an_unwritable_output_folder_is_refused_before_any_work(trained: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = run_main(["export", str(trained), "--out", str(blocker / "bundle"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("segnas: error: ") and "a_file" in err, err
    assert blocker.read_text() == "not a folder"


def _modes(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mode & 0o777 for path in folder.rglob("*") if path.is_file()}


def test_written_files_take_the_umask_permissions(tiny_dataset: Path, tmp_path: Path) -> None:
    """Run folders and predictions are readable as the umask says (0644 under 022), as ``open`` would make them,
    checkpoints included; nothing is left owner-only by the temporary file of an atomic write."""
    import os

    from segnas.utils.files import file_mode

    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    assert file_mode() == expected
    run = tmp_path / "run"
    arch = unet_architecture(TINY_SPACE).save(tmp_path / "arch.json")
    assert run_main(["train", str(tiny_dataset), "--arch", str(arch), "--out", str(run), "--steps", "2",
                     "--batch", "1", "--device", "cpu", "--quiet", "--checkpoint-every", "1"]) == 0
    assert run_main(["predict", str(run), "--input", str(tiny_dataset / "imagesTr"), "--output",
                     str(tmp_path / "predictions"), "--device", "cpu", "--quiet"]) == 0
    modes = {**_modes(run), **{f"predictions/{k}": v for k, v in _modes(tmp_path / "predictions").items()}}
    assert "checkpoint_last.pt" in modes and any(name.endswith(".nii.gz") for name in modes)
    assert {name: mode for name, mode in modes.items() if mode != expected} == {}
    assert (tmp_path / "arch.json").stat().st_mode & 0o777 == expected


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Durable, not only atomic: the data reaches the disk before the new name does, and the name after."""
    import os

    import segnas.utils.files as files

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(source: str, target: str) -> None:
        events.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    files.atomic_write_text(tmp_path / "kept.json", "{}\n")
    assert events == ["fsync file", "rename", "fsync folder"]
    assert (tmp_path / "kept.json").read_text() == "{}\n" and len(list(tmp_path.iterdir())) == 1

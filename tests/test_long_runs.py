"""Long runs: progress where there is no terminal (logged lines at an interval, silenced by --quiet), and
--threads."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_SPACE, run_cli
from segnas.api import train
from segnas.spaces.presets import unet_architecture
from segnas.utils import progress as progress_module
from segnas.utils.progress import Progress, format_seconds, progress
from segnas.utils.runtime import available_cores, configure_threads


@pytest.fixture
def segnas_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the CLI sets it up: the ``segnas`` logger at INFO, stderr not a terminal."""
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    logger = logging.getLogger("segnas")
    monkeypatch.setattr(logger, "level", logging.INFO)


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (4.4, 75.3, 3725)] == ["4s", "1m15s", "1h02m05s"]


def test_lines_carry_count_postfix_elapsed_and_eta(segnas_logging: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="segnas.progress")
    reporter = Progress(4, "training", unit="step", interval=0)
    for index in range(4):
        reporter.set_postfix(loss=f"{1 / (index + 1):.3f}")
        reporter.update(1)
    reporter.close()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 4  # every step at interval 0, and close adds none after the last
    assert lines[0].startswith("training: 1/4 step (25%), loss 1.000, elapsed ") and "ETA" in lines[0]
    assert lines[-1].startswith("training: 4/4 step (100%), loss 0.250") and "ETA" not in lines[-1]


def test_interval_logs_first_and_last_only(segnas_logging: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="segnas.progress")
    assert list(progress(range(10), "scoring", unit="arch")) == list(range(10))
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(",")[0] for line in lines] == ["scoring: 1/10 arch (10%)", "scoring: 10/10 arch (100%)"]


def test_quiet_and_disabled_show_nothing(segnas_logging: None, caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="segnas.progress")
    list(progress(range(3), "predicting", enabled=False))
    monkeypatch.setattr(logging.getLogger("segnas"), "level", logging.WARNING)  # segnas --quiet
    list(progress(range(3), "predicting"))
    assert not caplog.records


def test_cli_logs_training_progress_to_a_pipe_and_quiet_silences_it(tiny_dataset: Path, tmp_path: Path) -> None:
    arch = unet_architecture(TINY_SPACE).save(tmp_path / "arch.json")
    common = ["train", tiny_dataset, "--arch", arch, "--steps", "3", "--batch", "1", "--stride", "8",
              "--device", "cpu"]
    loud = run_cli(*common, "--out", tmp_path / "loud", env={"SEGNAS_PROGRESS_SECONDS": "0"})
    assert loud.returncode == 0, loud.stderr
    assert "training: 1/3 step (33%), loss " in loud.stderr and "training: 3/3 step (100%)" in loud.stderr
    assert "\r" not in loud.stderr  # no bar redrawn into the file
    quiet = run_cli(*common, "--out", tmp_path / "quiet", "--quiet", env={"SEGNAS_PROGRESS_SECONDS": "0"})
    assert quiet.returncode == 0, quiet.stderr
    assert "training:" not in quiet.stderr and (tmp_path / "quiet" / "model_final.pt").is_file()


def test_minutes_alone_end_training_and_progress_counts_training_seconds(
        segnas_logging: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        tiny_dataset: Path, tmp_path: Path) -> None:
    """``--minutes`` without ``--steps`` once stopped at the default 1000 steps without a word; the time alone
    ends it now, and the progress line counts seconds (a step total would be meaningless)."""
    monkeypatch.setenv("SEGNAS_PROGRESS_SECONDS", "0")
    caplog.set_level(logging.INFO, logger="segnas.progress")
    record = train(tiny_dataset, unet_architecture(TINY_SPACE), tmp_path / "run", minutes=0.03, batch_size=1,
                   augment="none", stride=8, device="cpu")
    assert record["train_seconds"] >= 1.8 and record["train"]["max_steps"] is None
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training:")]
    assert lines[-1].startswith(f"training: 2/2 s (100%), step {record['steps']}, loss ")
    assert all(" s (" in line and "step/" not in line for line in lines)


def test_threads_default_to_the_available_cores_shared_by_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 == torch.get_num_threads()
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert configure_threads() == max(1, available_cores() // 2)
    finally:
        torch.set_num_threads(before)


def test_cli_refuses_a_bad_thread_count(tmp_path: Path) -> None:
    arch = unet_architecture(TINY_SPACE).save(tmp_path / "arch.json")
    result = run_cli("cost", "--arch", arch, "--patch", "16", "16", "16", "--threads", "0")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "segnas: error: --threads: must be at least 1, got 0"

"""Shared fixtures: tiny synthetic datasets, a tiny search space, the real Hippocampus and ACDC folders, a CLI
runner."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segnas.data.synthetic import write_synthetic_dataset
from segnas.spaces.topology import TopologySpace

torch.set_flush_denormal(True)
torch.set_num_threads(2)

#: A plugin distribution (a strategy and a network kind declared as entry points, see its README): on the path
#: before any test module is collected, so the registry-driven tests run its strategy and network kind too.
PLUGINS = Path(__file__).resolve().parent / "plugins"
sys.path.insert(0, str(PLUGINS))

#: Small enough for CPU tests: 3 blocks, 2 scales, 8 and 16 channels, total stride 4.
TINY_SPACE = TopologySpace(num_blocks=3, num_depths=2, base_channels=32, channel_mul=0.125)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HIPPOCAMPUS = Path(os.environ.get("SEGNAS_HIPPOCAMPUS", SHARED_DATA / "Task04_Hippocampus"))
ACDC = Path(os.environ.get("SEGNAS_ACDC", SHARED_DATA / "Task27_ACDC"))


@pytest.fixture(autouse=True)
def _isolated_cost_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGNAS_CACHE_DIR", str(tmp_path_factory.mktemp("cost_cache")))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic 24^3 cases in MSD layout (read-only: copy it before changing it)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "Task99_Tiny", num_cases=6, shape=(24, 24, 24))


@pytest.fixture(scope="session")
def anisotropic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic 32x32x8 cases of 1 x 1 x 4 mm voxels (thick slices, as cardiac MRI; read-only)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "Task98_Thick", num_cases=6, shape=(32, 32, 8),
                                   radius=(2, 3), spacing=(1.0, 1.0, 4.0))


def _real_dataset(folder: Path, name: str, variable: str) -> Path:
    """A real dataset folder. A user's clone has none: its tests are then skipped with the reason, except under
    ``SEGNAS_REQUIRE_DATA=1`` (set by CI), where missing data fails the run."""
    if not (folder / "dataset.json").is_file():
        reason = f"real-data test: {name} not found at {folder} (set {variable})"
        if os.environ.get("SEGNAS_REQUIRE_DATA") == "1":
            pytest.fail(reason + "; SEGNAS_REQUIRE_DATA=1 requires it")
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="session")
def hippocampus() -> Path:
    """The real MSD Hippocampus folder (skipped without it, see :func:`_real_dataset`)."""
    return _real_dataset(HIPPOCAMPUS, "MSD Task04_Hippocampus", "SEGNAS_HIPPOCAMPUS")


@pytest.fixture(scope="session")
def acdc() -> Path:
    """The real ACDC folder, 160 cine-MRI volumes of 80 patients (skipped without it, see :func:`_real_dataset`)."""
    return _real_dataset(ACDC, "Task27_ACDC", "SEGNAS_ACDC")


def run_cli_here(*args: str) -> subprocess.CompletedProcess:
    """Run ``segnas ARGS`` in this process (the same ``main``, exit code and captured streams as :func:`run_cli`):
    for commands that only read, check and refuse, where a fresh process would spend ~4 s importing torch and MONAI
    for milliseconds of work. The ``segnas`` logger and torch's threads, which ``main`` sets, are restored."""
    from segnas.cli.main import main

    logger = logging.getLogger("segnas")
    handlers, level, propagate, threads = logger.handlers[:], logger.level, logger.propagate, torch.get_num_threads()
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main([str(arg) for arg in args])
            except SystemExit as exit_:  # argparse's usage errors and --help (a code of None is success)
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["segnas", *map(str, args)], code, stdout.getvalue(), stderr.getvalue())


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``segnas ARGS`` in a fresh process, as a user would (stderr a pipe, not a terminal)."""
    path = os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "segnas", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **(env or {})})

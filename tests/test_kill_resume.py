"""kill -9 at every stage of a search, then ``--resume``: the same winner, and bit-identical weights for the
step-budgeted parts (the super-net and the fine-tuned winner). Each killed process dies by SIGKILL from inside the
stage's own function, right after its n-th call returns, so the kill lands at a known point of that stage with no
cleanup (a killed ``segnas train`` is tests/test_trainer.py's ``test_resume_after_sigkill_...``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segnas.api import prepare_search
from segnas.spaces.architecture import load_architecture

#: Runs ``segnas ARGS`` after wrapping ``MODULE.OWNER.ATTRIBUTE`` so that its N-th call, once it has returned,
#: kills the process with SIGKILL.
DRIVER = """
import importlib, os, signal, sys
from segnas.cli.main import main
module, owner_name, attribute, nth = sys.argv[1:5]
owner = getattr(importlib.import_module(module), owner_name)
original = getattr(owner, attribute)
calls = [0]
def dying(*args, **kwargs):
    result = original(*args, **kwargs)
    calls[0] += 1
    if calls[0] == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, attribute, dying)
sys.exit(main(sys.argv[5:]))
"""
#: stage -> (module, owner, attribute, n): 12 super-net steps (a checkpoint at step 10) then 2 annealing steps.
STAGES = {
    "supernet": ("segnas.strategies.hypersegnas.supernet", "SupernetTrainingHook", "after_step", 12),
    "annealing": ("segnas.strategies.hypersegnas.supernet", "SupernetTrainingHook", "after_step", 14),
    "collection": ("segnas.strategies.hypersegnas.strategy", "HyperSegNASStrategy", "measure", 3),
    "scoring": ("segnas.strategies.hypersegnas.strategy", "HyperSegNASStrategy", "score_supernet", 2),
    "finetuning": ("segnas.engine.trainer", "Trainer", "save_checkpoint", 3),
}


def _search_args(data: Path, out: Path, budget: str) -> list[str]:
    return ["search", str(data), "--budget", budget, "--profile", "tiny", "--supernet-steps", "12",
            "--candidates", "4", "--top-n", "2", "--out", str(out), "--device", "cpu", "--quiet", "--threads", "2"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """A final model's weights, or a checkpoint's (a fine-tuning run keeps only its last checkpoint)."""
    saved = torch.load(path, weights_only=False)
    return saved["state_dict"] if "state_dict" in saved else saved["model"]


@pytest.fixture(scope="module")
def reference(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An uninterrupted search and its budget (the middle of the measured memory range)."""
    root = tmp_path_factory.mktemp("kill")
    probe = prepare_search(tiny_dataset, root / "probe", "hypersegnas", None, profile="tiny", device="cpu",
                           show_progress=False)
    low, high = probe.budget_range("memory")
    budget = f"{int((low + high) / 2)}B"
    result = subprocess.run([sys.executable, "-m", "segnas", *_search_args(tiny_dataset, root / "whole", budget)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return root / "whole", budget


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_9_at_each_search_stage_then_resume_gives_the_same_winner_and_weights(
        stage: str, reference: tuple[Path, str], tiny_dataset: Path, tmp_path: Path) -> None:
    whole, budget = reference
    out = tmp_path / "killed"
    args = _search_args(tiny_dataset, out, budget)
    killed = subprocess.run([sys.executable, "-c", DRIVER, *map(str, STAGES[stage]), *args], capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -9, f"the {stage} stage was never reached: {killed.stderr}"
    label = f"budget-{budget}"
    assert not (out / label / "arch.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "segnas", *args, "--resume"], capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr

    assert load_architecture(out / label / "arch.json").key() == load_architecture(whole / label / "arch.json").key()
    reference_weights, resumed_weights = (_weights(folder / "supernet" / "model_final.pt") for folder in (whole, out))
    assert all(torch.equal(reference_weights[k], resumed_weights[k]) for k in reference_weights)
    winner = load_architecture(whole / label / "arch.json").key()
    finetuned = [_weights(folder / label / "finetune" / winner / "checkpoint_last.pt") for folder in (whole, out)]
    assert all(torch.equal(finetuned[0][k], finetuned[1][k]) for k in finetuned[0])

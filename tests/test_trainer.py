"""The one trainer: exact resume after a kill, strategy hooks, damaged checkpoints, run-folder guards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from segnas.data.dataset import load_dataset
from segnas.data.plan import make_plan
from segnas.data.transforms import TrainingBatches, augmentation, cached_cases
from segnas.engine.trainer import TrainConfig, Trainer, TrainerHook
from segnas.errors import SegnasInputError
from segnas.networks.topology_net import TopologyNet
from segnas.spaces import ArchitectureSampler, unet_architecture
from tests.conftest import TINY_SPACE, run_cli

TRAIN_ARGS = ["--steps", "30", "--checkpoint-every", "5", "--batch", "1", "--stride", "8", "--device", "cpu",
              "--augment", "full"]


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model_final.pt", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ArchitectureSampler(TINY_SPACE, 0).sample().save(tmp_path_factory.mktemp("arch") / "arch.json")


def test_resume_after_sigkill_gives_the_uninterrupted_result(tiny_dataset: Path, tiny_arch: Path,
                                                             tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    result = run_cli("train", tiny_dataset, "--arch", tiny_arch, "--out", straight, *TRAIN_ARGS)
    assert result.returncode == 0, result.stderr

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "segnas", "train", str(tiny_dataset), "--arch", str(tiny_arch),
                                "--out", str(killed), *TRAIN_ARGS], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint_last.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    step_at_kill = torch.load(killed / "checkpoint_last.pt", weights_only=False)["step"]
    assert step_at_kill < 30 and not (killed / "model_final.pt").exists()

    result = run_cli("train", tiny_dataset, "--arch", tiny_arch, "--out", killed, "--resume", *TRAIN_ARGS)
    assert result.returncode == 0, result.stderr
    reference, resumed = _state(straight), _state(killed)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    log = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 30 and "val_dice" in log[-1]


class _SampleEachStep(TrainerHook):
    """What a one-shot strategy does: a new architecture every step, an extra loss, its own state."""

    def __init__(self) -> None:
        self.sampler = ArchitectureSampler(TINY_SPACE, 0)
        self.seen: list[str] = []
        self.penalty = torch.nn.Parameter(torch.tensor(1.0))

    def parameters(self):
        return [self.penalty]

    def before_step(self, trainer, step, batch) -> dict[str, Any]:
        arch = self.sampler.sample()
        self.seen.append(arch.key())
        return {"architecture": arch}

    def extra_loss(self, trainer, step, batch, logits, forward_kwargs):
        return self.penalty**2

    def after_step(self, trainer, step, record) -> None:
        record["penalty"] = float(self.penalty.detach())

    def validation_kwargs(self, trainer) -> dict[str, Any]:
        return {"architecture": unet_architecture(TINY_SPACE)}

    def state_dict(self) -> dict[str, Any]:
        return {"seen": list(self.seen), "rng": self.sampler.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = list(state["seen"])
        self.sampler.rng.bit_generator.state = state["rng"]


def _supernet_trainer(tiny_dataset: Path, run_dir: Path, hook: TrainerHook, steps: int, val_every: int = 0,
                      with_spacing: bool = False) -> Trainer:
    spec = load_dataset(tiny_dataset)
    plan = make_plan(spec, stride=8, show_progress=False)
    train = cached_cases(spec, plan, plan.fold(0)["train"], show_progress=False)
    val = cached_cases(spec, plan, plan.fold(0)["val"], show_progress=False)
    config = TrainConfig(max_steps=steps, batch_size=1, checkpoint_every=2, lr=1e-2, log_every=1,
                         val_every=val_every)
    batches = TrainingBatches(train, augmentation(plan, "none"), 1, 0, steps)
    torch.manual_seed(0)
    return Trainer(TopologyNet(TINY_SPACE, 1, 3), batches, val, config, run_dir, 3, plan.patch_size, [hook],
                   show_progress=False, label_names=["a", "b"],
                   spacing=plan.target_spacing if with_spacing else None)


def test_hooks_drive_the_supernet_and_their_state_is_resumed(tiny_dataset: Path, tmp_path: Path) -> None:
    hook = _SampleEachStep()
    trainer = _supernet_trainer(tiny_dataset, tmp_path / "a", hook, steps=4)
    result = trainer.fit()
    assert len(set(hook.seen)) == 4  # a different architecture per step
    assert float(hook.penalty.detach()) < 1.0  # the extra loss was optimised with the model
    assert "val_dice" in result and all("penalty" in r for r in trainer.history)

    resumed_hook = _SampleEachStep()
    resumed = _supernet_trainer(tiny_dataset, tmp_path / "a", resumed_hook, steps=6)
    resumed.fit(resume=True)
    continued = _SampleEachStep()
    for _ in range(6):
        continued.seen.append(continued.sampler.sample().key())
    assert resumed_hook.seen == continued.seen  # the sampler continued where it stopped


def test_the_last_validation_scores_nsd_and_hd95_per_label(tiny_dataset: Path, tmp_path: Path) -> None:
    trainer = _supernet_trainer(tiny_dataset, tmp_path / "run", _SampleEachStep(), steps=4, val_every=2,
                                with_spacing=True)
    result = trainer.fit()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    periodic, last = next(r for r in log if r["step"] == 2), log[-1]
    assert "val_dice/a" in periodic and not any(k.startswith(("val_nsd", "val_hd95")) for k in periodic)
    assert last["step"] == 4 and {"val_nsd/a", "val_nsd/b", "val_hd95/a", "val_hd95/b"} <= set(last)
    assert 0.0 <= result["val_nsd"] <= 1.0
    assert result["val_nsd"] == pytest.approx((last["val_nsd/a"] + last["val_nsd/b"]) / 2)
    assert trainer.validate()["val_dice"] == pytest.approx(result["val_dice"])  # Dice alike in both paths
    without = _supernet_trainer(tiny_dataset, tmp_path / "other", _SampleEachStep(), steps=2)  # no spacing: Dice only
    assert not any(k.startswith("val_nsd") for k in without.fit())


def test_damaged_checkpoint_is_refused_with_a_clear_error(tiny_dataset: Path, tiny_arch: Path,
                                                          tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_cli("train", tiny_dataset, "--arch", tiny_arch, "--out", run, *TRAIN_ARGS[:1], "4",
                   *TRAIN_ARGS[2:]).returncode == 0
    checkpoint = run / "checkpoint_last.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # as if a copy was interrupted
    before = (run / "run.json").read_text()
    result = run_cli("train", tiny_dataset, "--arch", tiny_arch, "--out", run, "--resume", *TRAIN_ARGS)
    assert result.returncode == 2
    assert "checkpoint_last.pt: checkpoint is damaged" in result.stderr
    assert "Traceback" not in result.stderr
    assert (run / "run.json").read_text() == before


def test_existing_run_folder_needs_force_and_resume_needs_same_settings(tiny_dataset: Path, tiny_arch: Path,
                                                                        tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("my earlier run")
    result = run_cli("train", tiny_dataset, "--arch", tiny_arch, "--out", run, *TRAIN_ARGS)
    assert result.returncode == 2 and "already holds files" in result.stderr and "--force" in result.stderr
    assert (run / "notes.txt").read_text() == "my earlier run" and len(list(run.iterdir())) == 1

    fresh = tmp_path / "fresh"
    assert run_cli("train", tiny_dataset, "--arch", tiny_arch, "--out", fresh, "--steps", "2", *TRAIN_ARGS[2:]
                   ).returncode == 0
    result = run_cli("train", tiny_dataset, "--arch", tiny_arch, "--out", fresh, "--resume", "--fold", "1",
                     *TRAIN_ARGS)
    assert result.returncode == 2 and "fold differ" in result.stderr


def test_trainer_config_rejects_nonsense() -> None:
    with pytest.raises(SegnasInputError):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(SegnasInputError):
        TrainConfig(max_steps=0)
    with pytest.raises(SegnasInputError, match="budget"):
        TrainConfig(max_steps=None)  # neither steps nor time: nothing would end it
    with pytest.raises(SegnasInputError):
        TrainConfig(max_steps=None, max_seconds=-5.0)


def test_two_process_gloo_training_keeps_ranks_in_sync(tiny_dataset: Path, tiny_arch: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes: DDP averages gradients, so both ranks end with rank 0's weights."""
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "segnas", "train", str(tiny_dataset), "--arch", str(tiny_arch), "--out", str(run),
               "--steps", "4", "--batch", "1", "--stride", "8", "--device", "cpu", "--checkpoint-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run / "run.json").read_text())
    assert record["world_size"] == 2 and record["steps"] == 4
    assert record["validation"]["ranks_in_sync"] is True
    final = _state(run)
    single = tmp_path / "single"
    assert run_cli("train", tiny_dataset, "--arch", tiny_arch, "--out", single, "--steps", "4", "--batch", "1",
                   "--stride", "8", "--device", "cpu").returncode == 0
    # Rank 1 drew other batches, so the averaged update differs from one process's update.
    assert any(not torch.equal(final[k], _state(single)[k]) for k in final)


def test_mixed_precision_is_the_device_native_one_and_close_to_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    import segnas.utils.runtime as runtime
    from segnas.networks.registry import MonaiUNetSpec

    assert runtime.autocast_dtype("cuda") == torch.float16
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert runtime.autocast_dtype("cpu") == (torch.bfloat16 if native else None)
    torch.manual_seed(0)
    network = MonaiUNetSpec(1, 3, channels=(8, 16, 32), strides=((2, 2, 1), (2, 2, 2))).build().eval()
    image = torch.randn(1, 1, 32, 32, 8)
    # bfloat16's numerics are checked on every CPU (emulated, slower, where the CPU lacks it)
    monkeypatch.setattr(runtime, "autocast_dtype", lambda device: torch.bfloat16)
    with torch.no_grad():
        exact = network(image)
        with runtime.mixed_precision("cpu", enabled=False):
            assert torch.equal(network(image), exact)
        with runtime.mixed_precision("cpu"):
            reduced = network(image).float()
    assert runtime.precision_name("cpu") == "bfloat16" and runtime.precision_name("cpu", amp=False) == "float32"
    # bfloat16 keeps 8 bits of mantissa: logits within a few hundredths, the same class almost everywhere
    assert float((reduced - exact).abs().max()) < 0.15
    assert float((reduced.argmax(1) == exact.argmax(1)).float().mean()) > 0.97

"""The one training loop of segnas: super-net training, fine-tuning and final training all run here.

A strategy never owns a loop; it passes :class:`TrainerHook` objects that choose forward arguments per
step (e.g. a sampled architecture), add losses, contribute parameters, and save their own state in the
checkpoint. The loop gives:

* DiceCE loss (MONAI), SGD or AdamW with a poly learning-rate schedule, gradient clipping;
* AMP on CUDA; seeded, step-indexed batches (see :class:`segnas.data.transforms.TrainingBatches`);
* sliding-window validation on the fold's validation cases (Dice per label);
* an atomic checkpoint every N steps and exact resume (model, optimiser, scaler, hooks, RNG, step, time);
* progress bar, TensorBoard scalars and a JSON-lines log (``log.jsonl``);
* DistributedDataParallel when ``torch.distributed`` is initialised (torchrun); rank 0 writes.

Budgets: training stops at ``max_steps`` or after ``max_seconds`` of training time (summed across resumes),
whichever comes first; the poly schedule follows whichever is closer to its end. ``max_steps=None`` leaves the
time alone in charge; the progress line then counts training seconds (``600/1200 s``), not steps.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader, Dataset

from segnas.engine.inference import predict_logits
from segnas.engine.metrics import METRICS, SURFACE_TOLERANCE_MM, case_metrics, dice_per_label
from segnas.errors import SegnasInputError
from segnas.formats import FileFormat
from segnas.utils.distributed import is_main
from segnas.utils.files import atomic_write
from segnas.utils.progress import Progress, progress_bar
from segnas.utils.runtime import autocast_dtype, mixed_precision

CHECKPOINT_NAME = "checkpoint_last.pt"
#: The step limit of a run that only time ends (see :attr:`TrainConfig.step_limit`).
UNBOUNDED_STEPS = 2**62
#: Checkpoints were written without a header before version 1; their content is unchanged.
CHECKPOINT_FORMAT = FileFormat("segnas.checkpoint", 1, unversioned=0, what="checkpoint")
CHECKPOINT_FORMAT.upgrade(0)(lambda state: state)


@dataclass
class TrainConfig:
    """Settings of one training run (saved in the checkpoint and the run folder)."""

    max_steps: int | None = 1000
    max_seconds: float | None = None
    batch_size: int = 2
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-5
    momentum: float = 0.99
    poly_power: float = 0.9
    grad_clip: float = 12.0
    val_every: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    amp: bool = True  # mixed precision where the device runs it natively (see utils.runtime.autocast_dtype)
    workers: int = 0
    sw_overlap: float = 0.25
    foreground: float = 0.5  # share of training patches centred on a foreground voxel (nnU-Net: 0.33)

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise SegnasInputError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.max_steps is None and not self.max_seconds:
            raise SegnasInputError("a training budget is needed: steps, minutes or both")
        if (self.max_steps is not None and self.max_steps < 1) or self.batch_size < 1 or self.lr <= 0 \
                or (self.max_seconds is not None and self.max_seconds <= 0):
            raise SegnasInputError("steps, minutes, batch size and learning rate must be positive")
        if not 0.0 <= self.foreground <= 1.0:
            raise SegnasInputError(f"--foreground is the share of patches centred on foreground, in [0, 1]; "
                                   f"got {self.foreground}")

    @property
    def step_limit(self) -> int:
        """The number of batches to draw: ``max_steps``, or, when only time ends training, more than any run
        takes (batches are drawn lazily, one per step)."""
        return self.max_steps if self.max_steps is not None else UNBOUNDED_STEPS


class TrainerHook:
    """Extension points of the loop; every method is optional. Strategies subclass this."""

    def parameters(self) -> Sequence[nn.Parameter]:
        """Extra parameters trained with the model (e.g. a HyperNet)."""
        return ()

    def before_step(self, trainer: "Trainer", step: int, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Keyword arguments for ``model(images, **kwargs)`` at this step (e.g. ``architecture=...``)."""
        return {}

    def extra_loss(self, trainer: "Trainer", step: int, batch: dict[str, torch.Tensor], logits: torch.Tensor,
                   forward_kwargs: dict[str, Any]) -> torch.Tensor | None:
        """A loss added to DiceCE (e.g. DiNTS's memory and topology losses)."""
        return None

    def after_step(self, trainer: "Trainer", step: int, record: dict[str, Any]) -> None:
        """Called after the optimiser step and any validation of this step; ``record`` is what the log will
        hold (add to it freely). Time spent here on steps that validate is not counted as training time."""

    def validation_kwargs(self, trainer: "Trainer") -> dict[str, Any]:
        """Keyword arguments for the model during validation."""
        return {}

    def should_stop(self, trainer: "Trainer") -> bool:
        """Whether training should end now, before its step budget (e.g. a search whose architecture has
        settled). Asked after each step's ``after_step``; the trainer then validates, checkpoints and stops."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a training checkpoint, or raise :class:`SegnasInputError` saying why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise SegnasInputError("no checkpoint to resume from", path)
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # truncated zip, pickle errors, foreign file
        raise SegnasInputError(f"checkpoint is damaged or not a segnas checkpoint ({type(err).__name__}: {err}); "
                               "delete it to start over", path) from err
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise SegnasInputError("not a segnas training checkpoint", path)
    return CHECKPOINT_FORMAT.load(state, path)


class Trainer:
    """Trains ``model`` on ``batches`` and validates on ``val_cases`` (preprocessed, whole images).

    Args:
        model: any ``nn.Module`` mapping ``(B, C, *patch)`` to logits ``(B, K, *patch)``.
        batches: step-indexed batches (item ``s`` = batch of step ``s``).
        val_cases: preprocessed validation cases with ``image (C, H, W, D)`` and ``label (1, H, W, D)``.
        run_dir: where checkpoints and logs go.
        num_classes: K, background included.
        patch_size: sliding-window size for validation.
        hooks: strategy hooks.
        label_names: names of labels 1..K-1 for logs.
        spacing: the validation cases' voxel spacing in mm (the plan's target spacing); when given, the last
            validation of a run also scores NSD (1 mm tolerance) and HD95 per label, as ``segnas evaluate`` does.
        distributed: wrap the model in DDP; default: whenever ``torch.distributed`` is initialised. Pass
            ``False`` when ranks train different models (e.g. each fine-tunes its own candidates).
    """

    def __init__(self, model: nn.Module, batches: Dataset, val_cases: Dataset | None, config: TrainConfig,
                 run_dir: str | Path, num_classes: int, patch_size: list[int], hooks: Sequence[TrainerHook] = (),
                 device: torch.device | str = "cpu", label_names: Sequence[str] | None = None,
                 show_progress: bool = True, distributed: bool | None = None,
                 spacing: Sequence[float] | None = None):
        self.config, self.device = config, torch.device(device)
        self.run_dir = Path(run_dir)
        self.model = model.to(self.device)
        self.batches, self.val_cases = batches, val_cases
        self.num_classes, self.patch_size = num_classes, list(patch_size)
        self.hooks = list(hooks)
        self.label_names = list(label_names or [str(i) for i in range(1, num_classes)])
        self.spacing = None if spacing is None else [float(s) for s in spacing]
        self.show_progress = show_progress and is_main()
        self.distributed = dist.is_initialized() if distributed is None else distributed
        self.train_model: nn.Module = self.model
        if self.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, find_unused_parameters=True,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        params = list(self.model.parameters()) + [p for hook in self.hooks for p in hook.parameters()]
        self._params = params
        if config.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.amp = config.amp and autocast_dtype(self.device) is not None
        # float16 needs loss scaling; bfloat16 has float32's exponent range and does not
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and autocast_dtype(self.device) == torch.float16)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.step = 0  # number of steps done
        self.elapsed = 0.0  # training seconds, summed across resumes
        self.best_dice = -math.inf
        self.history: list[dict[str, Any]] = []
        self._writer = None

    # ----- schedule ----------------------------------------------------------------------------------
    def progress_fraction(self) -> float:
        by_steps = self.step / self.config.max_steps if self.config.max_steps else 0.0
        by_time = self.elapsed / self.config.max_seconds if self.config.max_seconds else 0.0
        return min(1.0, max(by_steps, by_time))

    def _set_lr(self) -> float:
        lr = self.config.lr * (1 - self.progress_fraction()) ** self.config.poly_power
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def finished(self) -> bool:
        return self.progress_fraction() >= 1.0

    def stopped_by_hook(self) -> bool:
        """Whether a hook ends training before its budget (:meth:`TrainerHook.should_stop`)."""
        return any(hook.should_stop(self) for hook in self.hooks)

    # ----- progress ----------------------------------------------------------------------------------
    def _by_time(self) -> bool:
        """Whether progress is shown in training seconds: a time budget is set (steps may end it sooner)."""
        return bool(self.config.max_seconds)

    def _progress(self) -> Progress:
        if self._by_time():
            return progress_bar(math.ceil(self.config.max_seconds), "training", initial=int(self.elapsed),
                                enabled=self.show_progress, unit="s")
        return progress_bar(self.config.max_steps, "training", initial=self.step, enabled=self.show_progress,
                            unit="step")

    def _show(self, bar: Progress, record: dict[str, Any]) -> None:
        """This step on the progress bar: one step, or the training seconds spent, with the step beside them."""
        postfix = {"loss": f"{record['loss']:.3f}"}
        if "val_dice" in record:
            postfix["dice"] = f"{record['val_dice']:.3f}"
        if not self._by_time():
            bar.set_postfix(**postfix)
            bar.update(1)
            return
        limit = f"/{self.config.max_steps}" if self.config.max_steps else ""
        bar.set_postfix(step=f"{self.step}{limit}", **postfix)
        bar.update((bar.total if self.finished() else min(bar.total, int(self.elapsed))) - bar.count)

    # ----- checkpoints -------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def save_checkpoint(self) -> None:
        if not is_main():
            return
        state = CHECKPOINT_FORMAT.stamp({
            "step": self.step, "elapsed": self.elapsed, "best_dice": self.best_dice, "config": asdict(self.config),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "hooks": [hook.state_dict() for hook in self.hooks],
            "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
        })
        atomic_write(self.checkpoint_path, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self, state: dict[str, Any] | None = None) -> None:
        """Restore the state of :meth:`save_checkpoint` (read from the run folder unless given)."""
        path = self.checkpoint_path
        state = state if state is not None else read_checkpoint(path, self.device)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise SegnasInputError(f"checkpoint belongs to another network ({str(err).splitlines()[0]})", path) from err
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        for hook, hook_state in zip(self.hooks, state["hooks"]):
            hook.load_state_dict(hook_state)
        self.step, self.elapsed, self.best_dice = state["step"], state["elapsed"], state["best_dice"]
        torch.set_rng_state(state["torch_rng"].cpu())
        np.random.set_state(state["numpy_rng"])

    # ----- logging -----------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not is_main():
            return
        with open(self.run_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported late: slow import, optional at runtime

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step":
                self._writer.add_scalar(key, value, record["step"])
        self._writer.flush()

    # ----- validation --------------------------------------------------------------------------------
    def validate(self, forward_kwargs: dict[str, Any] | None = None, surface: bool = False) -> dict[str, Any]:
        """Mean Dice per label over the validation cases, by sliding-window inference: ``val_dice/<label>`` and
        their mean ``val_dice``. ``surface`` (with a known spacing) adds ``val_nsd`` and ``val_hd95`` the same way:
        they cost a distance transform per case and label, so periodic validations leave them out."""
        if not self.val_cases:
            return {}
        if forward_kwargs is None:
            forward_kwargs = {}
            for hook in self.hooks:
                forward_kwargs.update(hook.validation_kwargs(self))
        surface = surface and self.spacing is not None
        self.model.eval()
        scores: dict[str, list[list[float]]] = {metric: [] for metric in (METRICS if surface else ("dice",))}
        for index in range(len(self.val_cases)):
            case = self.val_cases[index]
            image = torch.as_tensor(case["image"])[None].to(self.device)
            logits = predict_logits(self.model, image, self.patch_size, self.config.sw_overlap, amp=self.amp,
                                    forward_kwargs=forward_kwargs)
            prediction, label = logits.argmax(1)[0].cpu(), torch.as_tensor(case["label"])[0]
            if surface:
                for metric, values in case_metrics(prediction, label, self.num_classes, self.spacing,
                                                   [SURFACE_TOLERANCE_MM] * (self.num_classes - 1)).items():
                    scores[metric].append(values)
            else:
                scores["dice"].append(dice_per_label(prediction, label, self.num_classes))
        self.model.train()
        result: dict[str, Any] = {}
        for metric, values in scores.items():
            table = np.array(values, dtype=float)
            table[~np.isfinite(table)] = np.nan  # HD95 of a label missing from a prediction: left out, as in evaluate
            with warnings.catch_warnings():  # a label without any score stays NaN, silently
                warnings.simplefilter("ignore", RuntimeWarning)
                per_label = np.nanmean(table, axis=0)
                result.update({f"val_{metric}/{name}": float(v) for name, v in zip(self.label_names, per_label)})
                result[f"val_{metric}"] = float(np.nanmean(per_label))
        return result

    # ----- the loop ----------------------------------------------------------------------------------
    def fit(self, resume: bool = False, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train until the step or time budget is spent; returns the last validation result.

        ``resume`` continues from the run folder's checkpoint (or from ``checkpoint``, already read).
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_checkpoint(checkpoint)
        config = self.config
        loader = DataLoader(self.batches, batch_size=None, num_workers=config.workers,
                            sampler=range(self.step, config.step_limit), persistent_workers=False)
        bar = self._progress()
        self.model.train()
        last_validation: dict[str, Any] = {}
        tick = time.perf_counter()
        for batch in loader:
            if self.finished() or self.stopped_by_hook():
                break
            step = self.step
            lr = self._set_lr()
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            forward_kwargs: dict[str, Any] = {}
            for hook in self.hooks:
                forward_kwargs.update(hook.before_step(self, step, batch))
            with mixed_precision(self.device, self.amp):
                logits = self.train_model(batch["image"], **forward_kwargs)
                loss = self.loss_fn(logits.float(), batch["label"])
                for hook in self.hooks:
                    extra = hook.extra_loss(self, step, batch, logits, forward_kwargs)
                    if extra is not None:
                        loss = loss + extra
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self._params, config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            now = time.perf_counter()
            self.elapsed += now - tick
            tick = now
            record: dict[str, Any] = {"step": self.step, "loss": float(loss.detach()), "lr": lr,
                                      "seconds": round(self.elapsed, 3)}
            validate_now = config.val_every and self.step % config.val_every == 0
            last_step = self.finished() or self.step == config.step_limit
            if validate_now or last_step:
                last_validation = self.validate(surface=last_step)
                record.update(last_validation)
                if last_validation.get("val_dice", -math.inf) > self.best_dice:
                    self.best_dice = last_validation["val_dice"]
            for hook in self.hooks:  # after validation, so hooks see this step's validation in the record
                hook.after_step(self, step, record)
            stopping = self.stopped_by_hook()
            if stopping and not last_step:
                record.update(self.validate(surface=True))
            if "val_dice" in record:
                last_validation = {k: v for k, v in record.items() if k.startswith("val_")}
                tick = time.perf_counter()  # validation time is not training time
            if self.step % config.log_every == 0 or "val_dice" in record:
                self._log(record)
            self._show(bar, record)
            if self.step % config.checkpoint_every == 0 or self.finished() or self.step == config.step_limit \
                    or stopping:
                self.save_checkpoint()
            if stopping:
                break
        bar.close()
        if not last_validation:  # resumed with no steps left: report the model as it is
            last_validation = self.validate(surface=True)
        if self._writer is not None:
            self._writer.close()
        if self.distributed:
            last_validation["ranks_in_sync"] = self._ranks_in_sync()
        return last_validation

    def _ranks_in_sync(self) -> bool:
        """Whether every rank holds the same weights (DDP should guarantee it; cheap to confirm once)."""
        checksum = torch.stack([p.detach().double().sum() for p in self.model.parameters()]).sum().view(1)
        gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, checksum)
        return all(torch.equal(g, gathered[0]) for g in gathered)

"""The evaluator: how good is a network on one fold? Shared by every strategy and by the analyses.

NNI separates a strategy from its *evaluator* (what a candidate scores) and its *profiler* (what it costs).
In segnas the profiler is :mod:`segnas.cost.measure`; this module is the evaluator. It offers three
estimates of increasing price, all through the one trainer and the one sliding-window inference:

* :meth:`Evaluator.score`: mean Dice of a network (or a super-net with forward arguments) on the foreground
  regions of validation cases, predicted patch by patch: the one-shot estimate;
* :meth:`Evaluator.finetune`: a network trained further from the weights it holds (e.g. inherited from a
  super-net), returned for scoring;
* :meth:`Evaluator.train_standalone`: an architecture trained from scratch into a run folder (the ground
  truth of a ranking analysis).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from segnas.data.dataset import DatasetSpec
from segnas.data.plan import Plan
from segnas.data.transforms import TrainingBatches, augmentation, cached_cases
from segnas.engine.inference import predict_logits
from segnas.engine.metrics import dice_per_label
from segnas.engine.run import train_run
from segnas.engine.trainer import CHECKPOINT_NAME, TrainConfig, Trainer
from segnas.networks.registry import NetworkSpec


def foreground_region(image: torch.Tensor, label: torch.Tensor, multiple: int, margin: int = 8,
                      max_size: int = 192) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``(C, H, W, D)`` image and ``(1, H, W, D)`` label to the label's bounding box plus ``margin``,
    at most ``max_size`` voxels per side (HyperSegNAS's 192 mm at 1 mm spacing), sides rounded up to
    ``multiple`` where the image allows."""
    foreground = label[0].nonzero()
    if len(foreground) == 0:
        return image, label
    slices = []
    for axis in range(3):
        lo = int(foreground[:, axis].min()) - margin
        hi = int(foreground[:, axis].max()) + 1 + margin
        size = min(int(np.ceil((hi - lo) / multiple) * multiple), max_size, image.shape[axis + 1])
        centre = (lo + hi) // 2
        start = int(np.clip(centre - size // 2, 0, image.shape[axis + 1] - size))
        slices.append(slice(start, start + size))
    return image[(slice(None), *slices)], label[(slice(None), *slices)]


def foreground_dice(model: Callable[..., torch.Tensor], cases: Sequence[dict], patch_size: list[int],
                    num_classes: int, device: torch.device, forward_kwargs: dict[str, Any] | None = None) -> float:
    """Mean Dice over the foreground regions of ``cases`` (preprocessed), predicted patch by patch."""
    dices = []
    for case in cases:
        image, label = foreground_region(torch.as_tensor(case["image"]), torch.as_tensor(case["label"]),
                                         min(patch_size))
        logits = predict_logits(model, image[None].to(device), patch_size, overlap=0.25,
                                forward_kwargs=forward_kwargs)
        dices.append(dice_per_label(logits.argmax(1)[0].cpu(), label[0], num_classes))
    return float(np.nanmean(np.array(dices, dtype=float)))


class Evaluator:
    """Scores and trains networks on one fold of a planned dataset.

    Args:
        data_dir, dataset, plan, fold: the data (training cases are the fold's ``train``, scoring cases its ``val``).
        device: where networks run.
        batch_size, lr, seed: the recipe of fine-tuning and stand-alone training (AdamW, poly decay, flips).
        score_cases: score on the first N validation cases (``None``: all of them).
    """

    def __init__(self, data_dir: str | Path, dataset: DatasetSpec, plan: Plan, fold: int, device: torch.device,
                 batch_size: int, lr: float, seed: int = 0, score_cases: int | None = None,
                 show_progress: bool = True):
        self.data_dir, self.dataset, self.plan, self.fold = Path(data_dir), dataset, plan, fold
        self.device, self.batch_size, self.lr, self.seed = device, batch_size, lr, seed
        self.score_cases, self.show_progress = score_cases, show_progress
        self._cases: dict[str, Any] = {}

    def _cached(self, name: str, ids: list[str]) -> Any:
        if name not in self._cases:
            self._cases[name] = cached_cases(self.dataset, self.plan, ids, show_progress=False)
        return self._cases[name]

    def scoring_cases(self) -> Any:
        """The fold's first ``score_cases`` validation cases, preprocessed (cached)."""
        return self._cached("scoring", self.plan.fold(self.fold)["val"][: self.score_cases])

    def validation_cases(self) -> Any:
        """Every validation case of the fold, preprocessed (cached)."""
        return self._cached("validation", self.plan.fold(self.fold)["val"])

    def training_cases(self) -> Any:
        return self._cached("training", self.plan.fold(self.fold)["train"])

    def score(self, model: Callable[..., torch.Tensor], cases: Sequence[dict] | None = None,
              forward_kwargs: dict[str, Any] | None = None) -> float:
        """Foreground-region Dice of ``model`` on ``cases`` (default: the scoring cases)."""
        with torch.no_grad():
            return foreground_dice(model, self.scoring_cases() if cases is None else cases, self.plan.patch_size,
                                   self.plan.num_classes, self.device, forward_kwargs)

    def finetune(self, net: nn.Module, run_dir: Path, steps: int, lr: float, resume: bool = False) -> nn.Module:
        """Train ``net`` from the weights it holds for ``steps`` at ``lr``; returned in eval mode.

        ``resume`` continues (or, when finished, just reloads) the checkpoint in ``run_dir``. Under torchrun
        each rank fine-tunes its own networks: no gradient averaging across ranks.
        """
        batches = TrainingBatches(self.training_cases(), augmentation(self.plan, "flips"), self.batch_size,
                                  self.seed, steps)
        config = TrainConfig(max_steps=steps, batch_size=self.batch_size, lr=lr, seed=self.seed,
                             checkpoint_every=10**9, log_every=10)
        Trainer(net, batches, None, config, run_dir, self.plan.num_classes, self.plan.patch_size, (), self.device,
                show_progress=False, distributed=False).fit(resume=resume and (run_dir / CHECKPOINT_NAME).is_file())
        return net.eval()

    def train_standalone(self, network: NetworkSpec, run_dir: Path, steps: int, seed: int | None = None
                         ) -> dict[str, Any]:
        """Train ``network`` from scratch into the run folder ``run_dir`` (replacing it); the run record."""
        config = TrainConfig(max_steps=steps, batch_size=self.batch_size, lr=self.lr,
                             seed=self.seed if seed is None else seed, checkpoint_every=max(steps // 4, 1))
        return train_run(self.data_dir, self.plan, network, run_dir, self.fold, config, force=True,
                         device=str(self.device), augment="flips", spec=self.dataset,
                         show_progress=self.show_progress)

"""A training run folder: what ``segnas train`` creates, resumes, and ``segnas predict`` reads.

Layout::

    RUN_DIR/run.json            settings, network spec, status and results
    RUN_DIR/plan.json           the data plan used
    RUN_DIR/architecture.json   for topology networks
    RUN_DIR/checkpoint_last.pt  resumable state (atomic, every N steps)
    RUN_DIR/model_final.pt      {"network": spec, "state_dict": ...} for prediction
    RUN_DIR/log.jsonl, RUN_DIR/tensorboard/

``run.json`` and ``model_final.pt`` are versioned (:mod:`segnas.formats`); older ones are upgraded on reading.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from segnas.data.dataset import DatasetSpec, load_dataset
from segnas.data.plan import Plan
from segnas.data.transforms import TrainingBatches, augmentation, cached_cases
from segnas.engine.trainer import CHECKPOINT_NAME, TrainConfig, Trainer, TrainerHook, read_checkpoint
from segnas.errors import SegnasInputError
from segnas.formats import FileFormat
from segnas.networks.registry import NetworkSpec, network_from_dict
from segnas.utils.distributed import barrier, is_main, rank, world_size
from segnas.utils.files import atomic_write, prepare_output_dir
from segnas.utils.runtime import configure_torch, pick_device, precision_name, seed_everything

RUN_FORMAT = FileFormat("segnas.run", 2, what="run record")
MODEL_FORMAT = FileFormat("segnas.model", 1, unversioned=0, what="model file")
FINAL_MODEL = "model_final.pt"


def _network_in_full(data: dict[str, Any]) -> dict[str, Any]:
    """The network spec written with every field (older files left defaults out)."""
    return {**data, "network": network_from_dict(data["network"]).to_dict()}


RUN_FORMAT.upgrade(1)(_network_in_full)
MODEL_FORMAT.upgrade(0)(_network_in_full)


def check_patch(patch_size: Sequence[int], strides: Sequence[int], source: str = "--patch",
                taker: str = "this network") -> None:
    """Refuse a patch the network (or ``taker``) cannot take, saying which multiple is needed on each axis."""
    if len(patch_size) != 3 or any(p <= 0 or p % s for p, s in zip(patch_size, strides)):
        need = f"a positive multiple of {strides[0]}" if len(set(strides)) == 1 else \
            f"positive multiples of {list(strides)} respectively"
        raise SegnasInputError(f"patch size {list(patch_size)} cannot be taken by {taker}: the three sides "
                               f"must be {need}", source)


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``run.json``, upgraded to the current format."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise SegnasInputError("not a segnas run folder (no run.json)", run_dir)
    return RUN_FORMAT.read_json(path)


def run_network(run_dir: str | Path) -> NetworkSpec:
    """The network a run folder trains."""
    return network_from_dict(read_run(run_dir)["network"], str(Path(run_dir) / "run.json"))


def save_model(path: Path, model: nn.Module, network: NetworkSpec) -> None:
    payload = MODEL_FORMAT.stamp({"network": network.to_dict(), "state_dict": model.state_dict()})
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, NetworkSpec]:
    """The trained module of a ``model_final.pt`` (in eval mode) and its spec."""
    path = Path(path)
    if not path.is_file():
        raise SegnasInputError("model file does not exist (did training finish?)", path)
    try:
        saved = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:
        raise SegnasInputError(f"cannot read the model file ({type(err).__name__}: {err})", path) from err
    saved = MODEL_FORMAT.load(saved, path)
    network = network_from_dict(saved["network"], str(path))
    model = network.build()
    try:
        model.load_state_dict(saved["state_dict"])
    except Exception as err:
        raise SegnasInputError(f"the weights do not fit the network ({type(err).__name__}: {err})", path) from err
    return model.to(device).eval(), network


def train_run(data_dir: str | Path, plan: Plan, network: NetworkSpec, run_dir: str | Path, fold: int | str,
              config: TrainConfig, resume: bool = False, force: bool = False, device: str = "auto",
              augment: str = "full", hooks: Sequence[TrainerHook] = (), model: nn.Module | None = None,
              spec: DatasetSpec | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Train one network on one fold (``"all"``: every case, no validation); returns the run record (also
    written to ``run.json``).

    ``model`` may be passed to train an existing module (e.g. a super-net with hooks); otherwise it is
    built from ``network``.
    """
    configure_torch()
    run_dir = Path(run_dir)
    check_patch(plan.patch_size, network.stride(), "plan patch size")
    spec = spec or load_dataset(data_dir)
    folds = plan.fold(fold)
    record: dict[str, Any] = {
        "dataset": plan.dataset_name, "data_dir": str(Path(data_dir).resolve()),
        "fold": fold, "network": network.to_dict(), "train": asdict(config), "augmentation": augment,
        "validation_cases": len(folds["val"]),
    }
    if not folds["val"]:
        record["validation_split"] = "none: trained on every case (fold all); no validation figures"
    checkpoint = None
    if resume:
        previous = read_run(run_dir)
        checkpoint = read_checkpoint(run_dir / CHECKPOINT_NAME)
        same = {k: previous.get(k) == record[k] for k in ("dataset", "fold", "network")}
        if not all(same.values()):
            raise SegnasInputError(f"cannot resume: the run folder was made with other settings "
                                   f"({', '.join(k for k, ok in same.items() if not ok)} differ)", run_dir)
        record["created"] = previous.get("created")
    elif is_main():
        prepare_output_dir(run_dir, force, "run folder")
    record.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    record.update(status="training", world_size=world_size())
    if is_main():
        plan.save(run_dir / "plan.json")
        architecture = getattr(network, "architecture", None)
        if architecture is not None:
            architecture.save(run_dir / "architecture.json")
        RUN_FORMAT.write_json(run_dir / "run.json", record)
    barrier()

    seed_everything(config.seed)
    torch_device = pick_device(device)
    model = model if model is not None else network.build()
    train_cases = cached_cases(spec, plan, folds["train"], show_progress=show_progress)
    val_cases = cached_cases(spec, plan, folds["val"], show_progress=show_progress) if folds["val"] else None
    # Each rank draws its own batches; the model starts identical everywhere (same seed, DDP broadcast).
    batches = TrainingBatches(train_cases, augmentation(plan, augment, config.foreground), config.batch_size,
                              config.seed + 1_000_003 * rank(), config.step_limit)
    trainer = Trainer(model, batches, val_cases, config, run_dir, plan.num_classes, plan.patch_size, hooks,
                      torch_device, [plan.labels[k] for k in sorted(plan.labels) if k != 0], show_progress,
                      spacing=plan.target_spacing)
    validation = trainer.fit(resume=resume, checkpoint=checkpoint)
    record.update(status="finished", steps=trainer.step, train_seconds=round(trainer.elapsed, 2),
                  seconds_per_step=round(trainer.elapsed / max(trainer.step, 1), 4), validation=validation,
                  parameters=sum(p.numel() for p in model.parameters()), device=str(torch_device),
                  precision=precision_name(torch_device, trainer.amp))
    if is_main():
        save_model(run_dir / FINAL_MODEL, model, network)
        RUN_FORMAT.write_json(run_dir / "run.json", record)
    barrier()
    return record


def train_or_resume(data_dir: str | Path, plan: Plan, network: NetworkSpec, run_dir: str | Path, fold: int | str,
                    config: TrainConfig, **options: Any) -> dict[str, Any]:
    """:func:`train_run` into ``run_dir`` that picks up where an earlier call stopped: a finished run is
    returned as it is (its hooks restored to their final state from its checkpoint), an interrupted one resumes
    from its checkpoint, and otherwise training starts afresh (replacing what is there)."""
    run_dir = Path(run_dir)
    previous = read_run(run_dir) if (run_dir / "run.json").is_file() else {}
    if previous.get("status") == "finished":
        hooks = options.get("hooks", ())
        if hooks:
            for hook, state in zip(hooks, read_checkpoint(run_dir / CHECKPOINT_NAME)["hooks"]):
                hook.load_state_dict(state)
        return previous
    resumable = (run_dir / CHECKPOINT_NAME).is_file()
    return train_run(data_dir, plan, network, run_dir, fold, config, resume=resumable, force=not resumable,
                     **options)

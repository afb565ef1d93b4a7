"""segnas's Python API: every stage of the pipeline as one function. The ``segnas`` command only parses its
arguments, calls these and prints (nnU-Net's ``plan_and_preprocess_api`` under its entry points).

    import segnas

    plan = segnas.plan_dataset("data/Task04_Hippocampus", out="plans/hippo")
    arch = segnas.sample_architectures(segnas.topology_space(), count=1, seed=0)[0]
    report = segnas.measure_cost(segnas.network_for(arch, plan), plan.patch_size, batch_size=2)
    segnas.train("data/Task04_Hippocampus", arch, "runs/a", plan=plan, steps=1000)
    segnas.predict("runs/a", "imagesTs/", "preds/")
    segnas.evaluate("preds/", "labelsTs/")
    winners = segnas.search("data/Task04_Hippocampus", "search/", strategy="hypersegnas", budgets=["85MB"])

Library code reports through :mod:`logging` (logger ``segnas``); the command shows its INFO messages.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from segnas.cost.budget import Budget, parse_budget
from segnas.cost.measure import CostReport, measure_cost
from segnas.data.dataset import load_dataset, read_label_names
from segnas.data.plan import DEFAULT_MAX_PATCH_VOXELS, Plan, make_plan
from segnas.errors import SegnasInputError
from segnas.engine.evaluate import evaluate_folder
from segnas.engine.export import export_run
from segnas.engine.inference import DEFAULT_TTA
from segnas.engine.postprocess import POSTPROCESSING_NAME, decide_postprocessing, write_postprocessing
from segnas.engine.predict import predict_run
from segnas.engine.run import read_run, train_run
from segnas.engine.trainer import TrainConfig
from segnas.networks.registry import (NetworkSpec, TopologyNetworkSpec, cell_network, list_networks,
                                      network_class)
from segnas.report.search_report import write_report
from segnas.spaces.architecture import Architecture
from segnas.spaces.architecture import load_architecture as read_architecture
from segnas.spaces.cells import CellArchitecture
from segnas.spaces.sampler import ArchitectureSampler
from segnas.spaces.topology import TopologySpace
from segnas.strategies.base import (SearchContext, SearchStrategy, get_strategy, list_strategies, open_search,
                                    search_record)
from segnas.strategies.folder import SearchFolder
from segnas.utils.distributed import is_main
from segnas.utils.files import prepare_output_dir
from segnas.utils.runtime import configure_torch, pick_device

#: Training steps of ``train`` (and ``segnas train``) when neither steps nor minutes are given.
DEFAULT_TRAIN_STEPS = 1000

__all__ = ["plan_dataset", "topology_space", "sample_architectures", "load_architecture", "network_for",
           "measure_cost", "train", "predict", "postprocess", "evaluate", "search", "prepare_search", "open_search", "list_strategies",
           "list_networks", "get_strategy", "CostReport", "Plan", "Architecture", "CellArchitecture", "TopologySpace",
           "NetworkSpec"]

log = logging.getLogger(__name__)


def plan_dataset(data_dir: str | Path, out: str | Path | None = None, stride: int = 16,
                 max_patch_voxels: int = DEFAULT_MAX_PATCH_VOXELS, folds: int = 5, force: bool = False, group_by: str | None = None,
                 isotropic: bool = False) -> Plan:
    """Validate an MSD or nnU-Net v2 dataset, fingerprint it and derive its plan; written to ``out/plan.json``.
    ``group_by``: a regular expression naming each case's subject (folds keep a subject's cases together);
    ``isotropic``: pool every axis at every level even when the spacing is anisotropic."""
    plan = make_plan(load_dataset(data_dir), stride=stride, max_patch_voxels=max_patch_voxels, num_folds=folds,
                     group_by=group_by, isotropic=isotropic)
    if out is not None:
        plan.save(prepare_output_dir(out, force, "plan folder") / "plan.json")
    return plan


def topology_space(ops: str = "hypersegnas", **sizes: Any) -> TopologySpace:
    """The topology space with operation set ``hypersegnas`` or ``dints`` (sizes: ``num_blocks``, ...)."""
    return TopologySpace.named(ops, **sizes)


def sample_architectures(space: TopologySpace, count: int = 1, seed: int = 0) -> list[Architecture]:
    """``count`` feasible architectures drawn uniformly (HyperSegNAS's sampler), reproducible by ``seed``."""
    sampler = ArchitectureSampler(space, seed)
    return [sampler.sample() for _ in range(count)]


def load_architecture(path: str | Path) -> Architecture | CellArchitecture:
    """Read and validate an architecture JSON file of either space kind (every problem names the file)."""
    return read_architecture(path)


def network_for(network: NetworkSpec | Architecture | CellArchitecture | str, plan: Plan | None = None, merge: str = "mean",
                in_channels: int | None = None, out_channels: int | None = None,
                patch_size: Sequence[int] | None = None, spacing: Sequence[float] | None = None) -> NetworkSpec:
    """The network spec of an architecture (``merge`` at its nodes) or a baseline kind (``monai-unet``,
    ``dynunet``) for a plan's channels, classes, patch and spacing (each may be given instead); a spec is
    returned as it is. Without a plan: 1 channel, 2 classes, 1 mm spacing (cells: their host's channels and
    classes)."""
    if isinstance(network, NetworkSpec):
        return network
    if isinstance(network, CellArchitecture) and plan is None:  # the host's own channels and classes
        in_channels = in_channels or network.host["in_channels"]
        out_channels = out_channels or network.host["out_channels"]
    in_channels = in_channels or (plan.num_channels if plan else 1)
    out_channels = out_channels or (plan.num_classes if plan else 2)
    if isinstance(network, Architecture):
        return TopologyNetworkSpec(in_channels, out_channels, network, merge)
    if isinstance(network, CellArchitecture):  # its host fixes channels and classes; a mismatch is refused
        return cell_network(network, in_channels, out_channels)
    patch_size = list(patch_size or (plan.patch_size if plan else [64, 64, 64]))
    spacing = list(spacing or (plan.target_spacing if plan else [1.0, 1.0, 1.0]))
    pool_strides = plan.pool_strides if plan else None
    return network_class(network).for_plan(in_channels, out_channels, patch_size, spacing, pool_strides)


def train(data_dir: str | Path, network: NetworkSpec | Architecture | CellArchitecture | str, out: str | Path,
          plan: Plan | str | Path | None = None, fold: int | str = 0, steps: int | None = None,
          minutes: float | None = None,
          batch_size: int = 2, optimizer: str = "adamw", lr: float = 3e-3, augment: str = "full", seed: int = 0,
          device: str = "auto", resume: bool = False, force: bool = False, merge: str = "mean",
          patch: Sequence[int] | None = None, stride: int | None = None, group_by: str | None = None,
          val_every: int = 0,
          checkpoint_every: int = 100, workers: int = 0, amp: bool = True, foreground: float = 0.5,
          show_progress: bool = True) -> dict[str, Any]:
    """Train a network on one fold into the run folder ``out``; returns the run record.

    The budget is ``steps``, ``minutes`` of training time, or both (whichever ends first); with neither, 1000
    steps. ``minutes`` alone means the time alone ends training (a default step count would end it sooner
    without saying so).

    Without ``plan`` the dataset is planned now (subjects by ``group_by``), patch sides multiples of ``stride``
    (default: the architecture's total stride, the host's for cells, 16 for baselines); a baseline named by its
    kind takes the plan's per-axis pooling, any other network an isotropic plan. A resumed run uses the run
    folder's own plan.
    """
    dataset = load_dataset(data_dir)
    if resume:
        plan = Plan.load(Path(out) / "plan.json")
    elif plan is None:
        if stride is None and isinstance(network, Architecture):
            stride = network.space.total_stride
        elif stride is None and isinstance(network, CellArchitecture):
            stride = max(cell_network(network).stride())
        stride = stride or 16
        plan = make_plan(dataset, stride=stride, group_by=group_by, isotropic=not isinstance(network, str))
    elif not isinstance(plan, Plan):
        plan = Plan.load(plan)
    if patch:
        plan.patch_size = list(patch)
    if steps is None and not minutes:
        steps = DEFAULT_TRAIN_STEPS
    config = TrainConfig(max_steps=steps, max_seconds=minutes * 60 if minutes else None, batch_size=batch_size,
                         optimizer=optimizer, lr=lr, seed=seed, val_every=val_every,
                         checkpoint_every=checkpoint_every, workers=workers, amp=amp, foreground=foreground)
    return train_run(data_dir, plan, network_for(network, plan, merge), out, fold, config, resume=resume,
                     force=force, device=device, augment=augment, spec=dataset, show_progress=show_progress)


def predict(run_dir: str | Path | Sequence[str | Path], source: str | Path, output: str | Path, overlap: float = 0.5,
            device: str = "auto", force: bool = False, tta: str = DEFAULT_TTA, amp: bool = True,
            postprocess: bool = True, show_progress: bool = True) -> list[Path]:
    """Segment every NIfTI image under ``source`` with a trained run, or the mean softmax of several runs (an
    ensemble); ``tta`` mirror test-time augmentation (``"flips"``, the default, or ``"none"``: about 8x faster);
    ``amp`` as in training; ``postprocess`` applies the decision of :func:`postprocess` the run holds. Returns the
    mask paths written."""
    return predict_run(run_dir, source, output, force=force, device=device, overlap=overlap, tta=tta, amp=amp,
                       postprocess=postprocess, show_progress=show_progress)


def postprocess(run_dir: str | Path, predictions: str | Path | None = None, force: bool = False,
                device: str = "auto", tta: str = DEFAULT_TTA, show_progress: bool = True) -> dict[str, Any]:
    """Decide a run's connected-component post-processing on its fold's validation cases (see
    :mod:`segnas.engine.postprocess`) and save it in the run folder, where :func:`predict` applies it.

    ``predictions``: the run's masks of its validation cases; without it they are predicted now into
    ``RUN/validation_predictions`` with ``tta`` (as :func:`predict` will predict: mirroring removes some of the
    stray blobs the decision weighs), recorded in the decision. Returns the decision with the validation Dice per
    label before and after.
    """
    run_dir = Path(run_dir)
    target = run_dir / POSTPROCESSING_NAME
    if target.exists() and not force:
        raise SegnasInputError("post-processing is already decided for this run (--force decides again)", target)
    record, plan = read_run(run_dir), Plan.load(run_dir / "plan.json")
    spec = load_dataset(record["data_dir"])
    validation = plan.fold(record["fold"])["val"]
    if not validation:
        raise SegnasInputError("the run has no validation cases (fold all) to decide post-processing on", run_dir)
    if predictions is None:
        images = prepare_output_dir(run_dir / "validation_images", True, "validation image links")
        for case_id in validation:
            for image in spec.case(case_id).images:
                (images / image.name).symlink_to(image.resolve())
        predictions = run_dir / "validation_predictions"
        predict_run(run_dir, images, predictions, force=True, device=device, tta=tta, postprocess=False,
                    show_progress=show_progress)
        decided_on = {"tta": tta}
    else:
        decided_on = {}  # masks of the user's: how they were predicted is not known here
    decision = {**decide_postprocessing(predictions, spec.root / "labelsTr",
                                        {k: v for k, v in plan.labels.items() if k != 0}), **decided_on}
    write_postprocessing(run_dir, decision)
    return decision


def export(run_dir: str | Path, out: str | Path, fmt: str = "torchscript", force: bool = False) -> Path:
    """Write a trained run's final model as a MONAI bundle (``torchscript`` or ``onnx``, checked against the
    network on the plan's patch) under ``out``; returns the model file. ``predict`` takes the bundle as a run."""
    return export_run(run_dir, out, fmt, force)


def report(search_dir: str | Path, out: str | Path | None = None, runs: Sequence[str | Path] = (),
           force: bool = False, device: str | None = None) -> Path:
    """One self-contained HTML page about a search folder (any strategy): budgets and winners, drawings,
    leaderboards, training curves, the strategy's and analyses' pictures, and with ``runs`` (trained run folders)
    a Pareto plot of Dice against measured cost; written to ``out`` (default ``SEARCH_DIR/report.html``)."""
    return write_report(search_dir, out, runs, force, device)


def evaluate(pred_dir: str | Path, labels: str | Path, out: str | Path | None = None,
             dataset_json: str | Path | None = None, nsd_tolerance: Sequence[float] = (1.0,),
             show_progress: bool = True) -> dict[str, Any]:
    """Dice, NSD and HD95 per case and label (``metrics.csv``, ``summary.json`` under ``out``, default
    ``pred_dir``); label names from ``dataset_json`` of either layout."""
    names = None
    if dataset_json is not None:
        names = {k: v for k, v in read_label_names(dataset_json).items() if k != 0}
    return evaluate_folder(pred_dir, labels, out or pred_dir, names, nsd_tolerance, show_progress)


def prepare_search(data_dir: str | Path, out: str | Path, strategy: str | SearchStrategy = "hypersegnas",
                   budgets: Sequence[str | Budget] | None = (), profile: str = "cpu",
                   options: Mapping[str, Any] | None = None, fold: int = 0, seed: int = 0, device: str = "auto",
                   resume: bool = False, force: bool = False, show_progress: bool = True,
                   patch: Sequence[int] | None = None, group_by: str | None = None) -> SearchStrategy:
    """A strategy initialised on the search folder ``out``, ready to ``run(budgets)``; ``patch`` replaces the
    plan's patch (the budgets are measured at it); ``group_by`` names each case's subject (``segnas plan
    --group-by``), so that the search's folds keep a subject's cases on one side.

    Everything that can be refused is refused before any training or writing: the strategy's options and
    profile, the budgets' units and kinds, the folder (occupied without ``force``/``resume``, or made with
    other settings), the dataset, and budgets outside the range the strategy can reach (measured).
    ``budgets=None`` skips the budget checks (to use a strategy's parts without searching a budget).
    """
    configure_torch()
    if isinstance(strategy, str):
        strategy = get_strategy(strategy)(profile, options)
    if patch is not None:
        strategy.search_at_patch(patch)
    parsed = None if budgets is None else [b if isinstance(b, Budget) else parse_budget(b) for b in budgets]
    if parsed is not None:
        strategy.validate_request(parsed)
    folder = SearchFolder(out)
    dataset = load_dataset(data_dir)
    record = search_record(strategy, dataset, Path(data_dir), fold, seed, group_by)
    if resume:
        previous = folder.check_resume(record, [f"settings.{key}" for key in strategy.resume_may_change])
        plan = folder.plan()
    else:
        folder.check_new(force)
        plan = strategy.search_plan(dataset, show_progress, group_by)
    strategy.initialize(SearchContext(Path(data_dir), dataset, plan, folder, fold, seed, pick_device(device),
                                      show_progress))
    if parsed is not None:
        strategy.check_budgets(parsed)
    if not resume:
        folder.create(record, plan, force)
    elif previous["settings"] != record["settings"]:
        if is_main():
            log.info("search settings changed on resume; search.json now records the new ones")
        folder.update_record({**record, "data_dir": previous.get("data_dir") or record["data_dir"]})
    return strategy


def search(data_dir: str | Path, out: str | Path, strategy: str | SearchStrategy = "hypersegnas",
           budgets: Sequence[str | Budget] = (), profile: str = "cpu", options: Mapping[str, Any] | None = None,
           fold: int = 0, seed: int = 0, device: str = "auto", resume: bool = False, force: bool = False,
           show_progress: bool = True, patch: Sequence[int] | None = None,
           group_by: str | None = None) -> dict[str, Architecture]:
    """Search with a registered strategy (see :func:`prepare_search` for what is checked first); one
    architecture per budget, by folder label (``budget-85MB``), each also written under ``out``."""
    parsed = [b if isinstance(b, Budget) else parse_budget(b) for b in budgets]
    prepared = prepare_search(data_dir, out, strategy, parsed, profile, options, fold, seed, device, resume, force,
                              show_progress, patch, group_by)
    return prepared.run(parsed)

"""What the strategy benchmarks share: Hippocampus fold 0, and retraining a chosen architecture from scratch
the way the foundation benchmark trained its baselines (same patch, batch, learning rate, minutes)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segnas.data.dataset import DatasetSpec
from segnas.data.plan import Plan
from segnas.engine.evaluate import evaluate_folder
from segnas.engine.predict import predict_run
from segnas.engine.run import read_run, train_run
from segnas.engine.trainer import CHECKPOINT_NAME, TrainConfig
from segnas.formats import RESULT_FORMAT
from segnas.networks.registry import TopologyNetworkSpec
from segnas.spaces.architecture import Architecture

ROOT = Path(__file__).resolve().parent
DEFAULT_DATA = ROOT.parent.parent / "shared" / "data" / "Task04_Hippocampus"
RESULTS = ROOT / "results"


def read_result(path: Path) -> dict[str, Any]:
    """A results file (``benchmarks/results/*.json``), upgraded: files written before results had a header load
    too, and a bare list comes back under ``rows``."""
    return RESULT_FORMAT.read_json(path)


def write_result(path: Path, result: dict[str, Any]) -> Path:
    """Write a results file with its format header and the versions that produced it."""
    return RESULT_FORMAT.write_json(path, result, default=str)


def link_images(spec: DatasetSpec, case_ids: list[str], folder: Path) -> Path:
    """A folder of symbolic links to the cases' images, the input ``segnas predict`` takes."""
    folder.mkdir(parents=True, exist_ok=True)
    for case_id in case_ids:
        link = folder / f"{case_id}.nii.gz"
        if not link.exists():
            link.symlink_to(spec.case(case_id).images[0])
    return folder


def retrain_and_evaluate(data_dir: Path, spec: DatasetSpec, plan: Plan, arch: Architecture, run_dir: Path,
                         minutes: float, smoke: bool = False) -> dict[str, Any]:
    """Train ``arch`` from scratch for ``minutes`` (batch 4, lr 3e-3, flips: the foundation baselines' recipe),
    predict the fold-0 validation images and return Dice / NSD per label and their means.

    Resumes: an interrupted run of ``arch`` continues from its checkpoint; a finished one is not trained again.
    A run folder holding another architecture (the search chose anew) is trained anew.
    """
    network = TopologyNetworkSpec(plan.num_channels, plan.num_classes, arch, "mean")
    same_arch = (run_dir / "run.json").is_file() and \
        Architecture.from_dict(read_run(run_dir)["network"]["architecture"]).key() == arch.key()
    if not (same_arch and (run_dir / "model_final.pt").is_file()):
        config = TrainConfig(max_steps=2 if smoke else 10**7, max_seconds=minutes * 60, batch_size=4, lr=3e-3,
                             checkpoint_every=100)
        resumable = same_arch and (run_dir / CHECKPOINT_NAME).is_file()  # the time budget sums across resumes
        train_run(data_dir, plan, network, run_dir, 0, config, resume=resumable, force=not resumable,
                  augment="flips", spec=spec)
    images = link_images(spec, plan.fold(0)["val"], run_dir / "val_images")
    predictions = run_dir / "predictions"
    predict_run(run_dir, images, predictions, force=True)
    summary = evaluate_folder(predictions, data_dir / "labelsTr", predictions,
                              {k: v for k, v in plan.labels.items() if k})
    return {"dice": summary["per_label"], "mean_dice": summary["mean"]["dice"], "mean_nsd": summary["mean"]["nsd"],
            "train_steps": read_run(run_dir).get("steps"), "train_minutes": minutes}


def benchmark_parser(doc: str, parts: list[str], work: str) -> argparse.ArgumentParser:
    """The options every strategy benchmark takes: the part to run, data, work and results folders,
    retraining minutes and ``--smoke``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=parts)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=ROOT / "work" / work)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--minutes", type=float, default=20.0, help="retraining budget per winner (20)")
    parser.add_argument("--smoke", action="store_true", help="tiny profile and sizes: checks the script runs")
    return parser

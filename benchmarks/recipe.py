"""Is segnas's default training recipe as good as a plain MONAI loop? MONAI's UNet (16..256 channels, 2 residual
units) on one fold (0) of a dataset, every recipe for the same wall-clock minutes with each seed, every prediction
scored by the same evaluator (Dice, NSD at 1 mm and HD95 per label on the fold's validation cases).

Recipes:

* ``plain``: the loop of ``../shared/reference/plain_monai_unet.py`` with a seed: whole volumes z-scored per case
  and zero-padded to the isotropic plan's patch, batch 4 drawn with replacement, AdamW 3e-3 constant (weight decay
  1e-5), DiceCE, random flips, no validation during training; the validation volumes predicted whole (one forward
  each), the padding cropped off and written as NIfTI with the image's geometry. Where the volumes are larger
  than that patch (ACDC: up to 276x384x18 against 224x256x16), the variant a MONAI user writes for them: each step's
  four patches cropped by ``RandCropByPosNegLabeld`` (half centred on foreground) from the padded volumes, and
  the validation volumes predicted by ``sliding_window_inference`` (overlap 0.25).
* ``segnas``: ``segnas train --net monai-unet --fold 0 --batch 4 --augment flips`` as it is (the plan's
  normalisation, crop sampling, poly decay of the learning rate to zero over the minutes, AdamW 3e-3, gradient
  clipping), predicted by ``segnas predict`` (sliding window).
* ``segnas-constant``: the same with a constant learning rate (poly power 0): the schedule alone.
* ``segnas-defaults``: ``segnas train --net monai-unet`` with nothing else (batch 2, full augmentation: rotation
  and scaling within the slices on thick-slice data; bfloat16 autocast on a CPU with AVX-512 BF16 or AMX; the
  plan's patch capped at 320,000 voxels, ACDC: 160x160x12).
* ``segnas-0.2-defaults``: segnas 0.2.0's defaults, the same on a plan capped at 128^3 voxels (nnU-Net's GPU
  cap; ACDC: 224x256x12). Measured as ``segnas-patch-160``'s "before" and ``segnas-defaults`` as its "after":
  the results file holds them under these names.
* ``segnas-0.1-defaults``: segnas 0.1's defaults, ``--augment full-3d --no-amp`` (rotation about every axis, float32).
* ``segnas-isotropic``: ``segnas-defaults`` on the plan of ``segnas plan --isotropic`` (every axis pooled four
  times, thin volumes padded to the stride): what per-axis strides buy on thick slices.
* The levers apart, each ``segnas-defaults`` with one thing changed: ``segnas-float32`` (``--no-amp``),
  ``segnas-rotate-3d`` (``--augment full-3d``), ``segnas-workers`` (``--workers 1``), ``segnas-batch-4``
  (``--batch 4``), ``segnas-patch-128`` (the plan capped at 128x128x12's voxels: smaller still),
  ``segnas-foreground-0.33`` (``--foreground 0.33``: nnU-Net's share of patches centred on foreground).

On a dataset whose subjects have several cases (ACDC: two frames per patient), ``--group-by`` names them and
fold 0 keeps each subject on one side.

    python benchmarks/recipe.py run --minutes 20 --seeds 0 1 --recipes plain segnas segnas-constant
    python benchmarks/recipe.py run --data ../shared/data/Task27_ACDC --group-by 'patient\\d+' --minutes 30 \\
        --seeds 0 1 --recipes plain segnas-defaults
    python benchmarks/recipe.py run --smoke       # seconds, synthetic data: the script runs

Every run's validation predictions also get ``segnas postprocess``'s decision (keep the largest connected
component where it raises Dice), decided and scored on the same validation cases as nnU-Net does: ``postprocessed``.

``tta`` measures mirror test-time augmentation (``segnas predict --tta flips``) on the models a ``run`` trained,
in the same work folder (a lever of prediction time, so the same models give its before and after):

    python benchmarks/recipe.py tta --data ../shared/data/Task27_ACDC --recipes segnas-defaults --seeds 0 1

Results: ``benchmarks/results/recipe.json`` (Hippocampus) or ``recipe_<dataset>.json``: per recipe and seed Dice,
NSD and HD95 per label, steps, post-processed Dice; per recipe mean and spread.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.transforms import RandCropByPosNegLabeld

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (TRAIN_RECIPES, benchmark_parser, machine, read_result, result_path,  # noqa: E402
                    retrain_and_evaluate, seed_summary, write_result)

from segnas.data.dataset import DatasetSpec, load_dataset  # noqa: E402
from segnas.data.dataset import scan_dataset  # noqa: E402
from segnas.data.plan import DEFAULT_MAX_PATCH_VOXELS, Plan, make_plan  # noqa: E402
from segnas.data.synthetic import write_synthetic_dataset  # noqa: E402
from segnas.engine.evaluate import evaluate_folder  # noqa: E402
from segnas.engine.postprocess import decide_postprocessing  # noqa: E402
from segnas.engine.predict import predict_run  # noqa: E402
from segnas.networks.registry import MonaiUNetSpec  # noqa: E402

RECIPES = ("plain", "segnas", "segnas-constant", "segnas-defaults", "segnas-0.2-defaults", "segnas-0.1-defaults",
           "segnas-isotropic", "segnas-float32", "segnas-rotate-3d", "segnas-workers", "segnas-batch-4",
           "segnas-patch-128", "segnas-foreground-0.33")
#: The patch cap of the plans before segnas 0.3 (nnU-Net's): the plain loop's and the older defaults'.
GPU_PATCH_VOXELS = 128**3
#: Per segnas recipe: TrainConfig fields, augmentation, whether the plan pools every axis alike, and the plan's
#: patch cap where it is not today's default.
SEGNAS_RECIPES: dict[str, dict[str, Any]] = {
    "segnas": {"config": {}, "augment": "flips"},
    "segnas-constant": {"config": {"poly_power": 0.0}, "augment": "flips"},
    "segnas-defaults": TRAIN_RECIPES["defaults"],
    "segnas-0.2-defaults": {"config": {"batch_size": 2}, "augment": "full", "max_patch_voxels": GPU_PATCH_VOXELS},
    "segnas-0.1-defaults": {"config": {"batch_size": 2, "amp": False}, "augment": "full-3d",
                            "max_patch_voxels": GPU_PATCH_VOXELS},
    "segnas-isotropic": {"config": {"batch_size": 2}, "augment": "full", "isotropic": True},
    # the defaults with one thing changed each: the levers apart
    "segnas-float32": {"config": {"batch_size": 2, "amp": False}, "augment": "full"},
    "segnas-rotate-3d": {"config": {"batch_size": 2}, "augment": "full-3d"},
    "segnas-workers": {"config": {"batch_size": 2, "workers": 1}, "augment": "full"},
    "segnas-batch-4": {"config": {"batch_size": 4}, "augment": "full"},
    "segnas-patch-128": {"config": {"batch_size": 2}, "augment": "full", "max_patch_voxels": 128 * 128 * 12},
    "segnas-foreground-0.33": {"config": {"batch_size": 2, "foreground": 0.33}, "augment": "full"},
}


def _volume(path: Path, shape: list[int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """The volume zero-padded at the far end of each axis to at least ``shape`` (never cropped)."""
    data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    return np.pad(data, [(0, max(s - d, 0)) for s, d in zip(shape, data.shape)]), data.shape


def plain_run(spec: DatasetSpec, plan: Plan, seconds: float, seed: int, folder: Path) -> dict[str, Any]:
    """The reference loop (see the module docstring), then its validation predictions scored by segnas's
    evaluator like the other recipes'."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    shape = list(plan.patch_size)
    fold = plan.fold(0)
    whole = all(d <= s for d, s in zip(plan.fingerprint["max_shape"], shape))
    crop = RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=shape, pos=1, neg=1,
                                  num_samples=1)
    crop.set_random_state(seed=seed)

    def load(case_ids: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, ...]]]:
        images, labels, shapes = [], [], []
        for case_id in case_ids:
            case = spec.case(case_id)
            image, original = _volume(case.images[0], shape)
            raw = image[tuple(slice(0, s) for s in original)]
            image[tuple(slice(0, s) for s in original)] = (raw - raw.mean()) / (raw.std() + 1e-8)
            images.append(torch.from_numpy(image)[None])
            labels.append(torch.from_numpy(_volume(case.label, shape)[0].astype(np.int64))[None])
            shapes.append(original)
        return images, labels, shapes

    def batch(images: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        index = rng.integers(0, len(images), 4)
        if whole:
            return torch.stack([images[i] for i in index]), torch.stack([labels[i] for i in index])
        samples = [crop({"image": images[i], "label": labels[i]})[0] for i in index]
        return (torch.stack([torch.as_tensor(s["image"]) for s in samples]),
                torch.stack([torch.as_tensor(s["label"]) for s in samples]))

    x_train, y_train, _ = load(fold["train"])
    network = MonaiUNetSpec(plan.num_channels, plan.num_classes).build()
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3, weight_decay=1e-5)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        x, y = batch(x_train, y_train)
        for axis in (2, 3, 4):
            if rng.random() < 0.5:
                x, y = x.flip(axis), y.flip(axis)
        optimizer.zero_grad()
        loss_function(network(x), y).backward()
        optimizer.step()
        steps += 1
    train_seconds = time.perf_counter() - start
    network.eval()
    predictions = folder / "predictions"
    predictions.mkdir(parents=True, exist_ok=True)
    x_val, _, shapes = load(fold["val"])
    with torch.no_grad():
        for case_id, image, original in zip(fold["val"], x_val, shapes):
            logits = network(image[None]) if whole else \
                sliding_window_inference(image[None], shape, 4, network, overlap=0.25)
            mask = logits.argmax(1)[0].numpy()[tuple(slice(0, s) for s in original)]
            reference = nib.load(spec.case(case_id).images[0])
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), reference.affine), predictions / f"{case_id}.nii.gz")
    summary = evaluate_folder(predictions, spec.root / "labelsTr", predictions,
                              {k: v for k, v in plan.labels.items() if k}, show_progress=False)
    return {"mean_dice": summary["mean"]["dice"], "mean_nsd": summary["mean"]["nsd"], "dice": summary["per_label"],
            "train_steps": steps, "train_seconds": round(train_seconds, 1), "seed": seed,
            "patch_size": shape, "whole_volumes": whole}


def with_postprocessing(run: dict[str, Any], predictions: Path, spec: DatasetSpec, plan: Plan) -> dict[str, Any]:
    """``run`` with ``postprocessed``: the connected-component decision on its validation predictions and the
    Dice per label after it (kept as is when already there or when the predictions are gone)."""
    if "postprocessed" in run or not predictions.is_dir():
        return run
    decision = decide_postprocessing(predictions, spec.root / "labelsTr", {k: v for k, v in plan.labels.items() if k})
    return {**run, "postprocessed": {**decision, "mean_dice": statistics.mean(decision["dice_after"].values())}}


def _recipe_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    row = {"runs": runs, **seed_summary(runs), "mean_steps": statistics.mean(run["train_steps"] for run in runs)}
    if all("postprocessed" in run for run in runs):
        row["mean_dice_postprocessed"] = statistics.mean(run["postprocessed"]["mean_dice"] for run in runs)
    if all("tta_flips" in run for run in runs):
        row["mean_dice_tta"] = statistics.mean(run["tta_flips"]["mean_dice"] for run in runs)
    return row


def part_run(args: Any, recorded: dict[str, Any], save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every recipe with every seed; a seed ``recorded`` for the same minutes on the same CPU is not run again
    (the recipes race the clock, so rows of two CPUs never mix), and ``save`` gets the rows after every run (two
    hours of runs outlive a session's work folder only in the results file)."""
    spec = load_dataset(args.data)
    facts = scan_dataset(spec, show_progress=False)
    plans: dict[tuple[int, bool], Plan] = {}

    def plan_of(max_patch_voxels: int = DEFAULT_MAX_PATCH_VOXELS, isotropic: bool = False) -> Plan:
        if (max_patch_voxels, isotropic) not in plans:
            plans[max_patch_voxels, isotropic] = make_plan(spec, stride=16, max_patch_voxels=max_patch_voxels,
                                                           facts=facts, show_progress=False, group_by=args.group_by,
                                                           isotropic=isotropic)
        return plans[max_patch_voxels, isotropic]

    plan, isotropic_plan = plan_of(), plan_of(GPU_PATCH_VOXELS, isotropic=True)
    minutes = 0.05 if args.smoke else args.minutes
    this_machine = machine()
    same_minutes = (recorded.get("minutes") == minutes and not args.smoke
                    and recorded.get("machine", this_machine)["cpu"] == this_machine["cpu"])
    rows: dict[str, Any] = {}

    def part() -> dict[str, Any]:
        return {"recipes": rows, "minutes": minutes, "seeds": args.seeds, "patch_size": plan.patch_size,
                "stride": plan.stride, "isotropic_patch_size": isotropic_plan.patch_size,
                "group_by": args.group_by, "subjects": len(plan.subjects), "fold_0_validation_cases":
                len(plan.fold(0)["val"]), "torch_threads": torch.get_num_threads(), "machine": this_machine}

    for recipe in args.recipes:
        done = {run["seed"]: run for run in recorded.get("recipes", {}).get(recipe, {}).get("runs", [])
                if same_minutes}
        runs = []
        for seed in args.seeds:
            folder = args.work / f"{recipe}_{seed}"
            if seed in done:
                run = done[seed]
            elif recipe == "plain":
                run = plain_run(spec, isotropic_plan, minutes * 60, seed, folder)
            else:
                settings = SEGNAS_RECIPES[recipe]
                chosen = plan_of(settings.get("max_patch_voxels", DEFAULT_MAX_PATCH_VOXELS),
                                 settings.get("isotropic", False))
                network = MonaiUNetSpec.for_plan(chosen.num_channels, chosen.num_classes, chosen.patch_size,
                                                 chosen.target_spacing, chosen.pool_strides)
                run = retrain_and_evaluate(args.data, spec, chosen, network, folder, minutes=minutes, seed=seed,
                                           device=args.device, config_overrides=settings["config"],
                                           augment=settings["augment"])
                run["patch_size"] = chosen.patch_size
            runs.append(with_postprocessing(run, folder / "predictions", spec, plan))
            rows[recipe] = _recipe_row(runs)
            save(part())
            print(f"{recipe} seed {seed}: Dice {run['mean_dice']:.4f}, NSD {run['mean_nsd']:.4f}, "
                  f"{run['train_steps']} steps{' (recorded)' if seed in done else ''}", flush=True)
    return part()


def part_tta(args: Any, recorded: dict[str, Any], save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Mirror test-time augmentation as a lever of its own: each recorded run of ``--recipes`` and ``--seeds``
    predicted again from its model by ``segnas predict --tta flips`` (the 8 mirrorings averaged) and scored as
    the run was, with its own post-processing decision. It costs prediction time, not training time, so it is
    measured on the race's very models: their work folders must still hold them (a run already measured is kept)."""
    spec = load_dataset(args.data)
    plan = Plan.load(args.work / f"{args.recipes[0]}_{args.seeds[0]}" / "plan.json")
    labels = {k: v for k, v in plan.labels.items() if k}
    rows = {name: dict(row) for name, row in recorded.get("recipes", {}).items()}
    for recipe in args.recipes:
        runs = rows.get(recipe, {}).get("runs", [])
        for index, run in enumerate(runs):
            folder = args.work / f"{recipe}_{run['seed']}"
            if run["seed"] not in args.seeds or "tta_flips" in run:
                continue
            if not (folder / "model_final.pt").is_file():
                raise SystemExit(f"recipe.py: error: {folder}: no trained model; `run` this recipe and seed in this "
                                 "work folder first")
            start = time.perf_counter()
            predictions = predict_run(folder, folder / "val_images", folder / "predictions_tta", force=True,
                                      tta="flips", postprocess=False, show_progress=False)
            seconds = time.perf_counter() - start
            summary = evaluate_folder(folder / "predictions_tta", spec.root / "labelsTr", folder / "predictions_tta",
                                      labels, show_progress=False)
            scored = with_postprocessing({"mean_dice": summary["mean"]["dice"], "mean_nsd": summary["mean"]["nsd"],
                                          "dice": summary["per_label"]}, folder / "predictions_tta", spec, plan)
            runs[index] = {**run, "tta_flips": {**scored, "predict_seconds_per_case":
                                                round(seconds / len(predictions), 2)}}
            rows[recipe] = _recipe_row(runs)
            save({**recorded, "recipes": rows})
            print(f"{recipe} seed {run['seed']}: Dice {run['mean_dice']:.4f} -> {scored['mean_dice']:.4f} with "
                  f"flip TTA ({seconds / len(predictions):.1f} s a case)", flush=True)
    return {**recorded, "recipes": rows}


def main() -> None:
    parser = benchmark_parser(__doc__, ["run", "tta"], "recipe", subjects=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=["plain", "segnas", "segnas-constant"])
    parser.add_argument("--tag", help="a suffix of the results file (recipe_<dataset>_<tag>.json): runs on another "
                        "CPU race another clock and go in a file of their own")
    args = parser.parse_args()
    if args.smoke:
        args.data = args.work / "data" / "Task99_Smoke"
        if not (args.data / "dataset.json").is_file():
            write_synthetic_dataset(args.data, num_cases=8, shape=(32, 32, 32))
    path = result_path(args, "recipe")
    if args.tag:
        path = path.with_name(f"{path.stem}_{args.tag}{path.suffix}")
    result = read_result(path) if path.is_file() else {}
    recorded = dict(result.get("run", {}))

    def save(run: dict[str, Any]) -> None:  # a subset of recipes adds its rows
        result["run"] = {**run, "recipes": {**recorded.get("recipes", {}), **run["recipes"]}}
        write_result(path, result)

    save((part_tta if args.part == "tta" else part_run)(args, recorded, save))
    print(f"written {path}")


if __name__ == "__main__":
    main()

"""``segnas export``: a trained run as a MONAI bundle, TorchScript or ONNX, that leaves segnas.

Layout (MONAI's bundle specification)::

    DIR/configs/metadata.json    the bundle's metadata: versions (bundle, MONAI, PyTorch, NumPy, segnas), the
                                 network's input and output (channels, patch, labels), the run it came from
    DIR/configs/inference.json   a MONAI bundle config: segnas's preprocessing as MONAI transforms, the model,
                                 a sliding-window inferer, softmax -> argmax -> NIfTI (``monai.bundle run``)
    DIR/configs/plan.json        segnas's plan (spacing, normalisation, patch, labels): how ``segnas predict``
                                 reads the bundle
    DIR/models/model.ts          TorchScript (``--format torchscript``), or
    DIR/models/model.onnx        ONNX (``--format onnx``; opset 17, batch and spatial axes dynamic)

The conversion and its check are MONAI's (``convert_to_torchscript``, ``convert_to_onnx``): the exported
model's output on the plan's patch must equal the segnas network's within float tolerance, or nothing is
written. Only discrete networks export: a search's super-net needs an architecture at every call.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import monai
import numpy as np
import torch
from monai.networks.utils import convert_to_onnx, convert_to_torchscript

from segnas.data.plan import Plan
from segnas.engine.run import FINAL_MODEL, load_model, read_run
from segnas.errors import SegnasInputError
from segnas.formats import written_by
from segnas.utils.files import atomic_write_text, prepare_output_dir

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("torchscript", "onnx")
MODEL_FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
#: The bundle version segnas writes (MONAI's bundles carry their own semantic version).
BUNDLE_VERSION = "0.1.0"
ONNX_OPSET = 17
#: Relative and absolute tolerance of the export check (float32 through another runtime).
TOLERANCE = (1e-4, 1e-5)


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "torchscript", force: bool = False) -> Path:
    """Write the final model of ``run_dir`` as a bundle under ``out``; returns the model file's path."""
    if fmt not in EXPORT_FORMATS:
        raise SegnasInputError(f"must be one of {list(EXPORT_FORMATS)}, got {fmt!r}", "--format")
    run_dir = Path(run_dir)
    record = read_run(run_dir)
    model, network = load_model(run_dir / FINAL_MODEL, "cpu")
    if network.forward_kwargs():
        raise SegnasInputError(f"a {network.kind!r} network is a search network (it needs an architecture at every "
                               "call) and cannot be exported; train its derived architecture and export that run",
                               run_dir)
    plan = Plan.load(run_dir / "plan.json")
    out = prepare_output_dir(out, force, "bundle folder")
    try:
        target = out / "models" / MODEL_FILES[fmt]
        target.parent.mkdir(parents=True)
        example = torch.randn(1, plan.num_channels, *plan.patch_size, generator=torch.Generator().manual_seed(0))
        _convert(model, example, fmt, target)
        configs = out / "configs"
        configs.mkdir()
        plan.save(configs / "plan.json")
        metadata = bundle_metadata(plan, record, network.kind, fmt)
        atomic_write_text(configs / "metadata.json", json.dumps(metadata, indent=1) + "\n")
        atomic_write_text(configs / "inference.json", json.dumps(inference_config(plan, fmt), indent=1) + "\n")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-written bundle
        raise
    log.info("exported %s (%s) to %s", network.kind, fmt, out)
    return target


def _convert(model: torch.nn.Module, example: torch.Tensor, fmt: str, target: Path) -> None:
    """MONAI's conversion with its output check on ``example``; a mismatch or an unsupported operation is refused
    with the network's kind (nothing is kept)."""
    rtol, atol = TOLERANCE
    try:
        with warnings.catch_warnings():
            # Tracing warns wherever a module reads a shape as a Python value (instance norm's checks); segnas's
            # networks are fixed graphs, and the check runs the exported model against the network anyway.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            if fmt == "torchscript":
                convert_to_torchscript(model, str(target), verify=True, inputs=[example], device=torch.device("cpu"),
                                       rtol=rtol, atol=atol, use_trace=True)
            else:
                spatial = {0: "batch", 2: "x", 3: "y", 4: "z"}
                convert_to_onnx(model, [example], input_names=["image"], output_names=["logits"],
                                opset_version=ONNX_OPSET, dynamic_axes={"image": spatial, "logits": spatial},
                                filename=str(target), verify=True, device=torch.device("cpu"), use_ort=True,
                                rtol=rtol, atol=atol, use_trace=True, dynamo=False)
    except ImportError as err:
        raise SegnasInputError(f"ONNX export needs onnx and onnxruntime ({err}); pip install 'segnas[export]'",
                               "--format") from err
    except (RuntimeError, AssertionError, ValueError) as err:
        raise SegnasInputError(f"the {fmt} export failed or does not reproduce the network "
                               f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err


def bundle_metadata(plan: Plan, record: dict[str, Any], kind: str, fmt: str) -> dict[str, Any]:
    """MONAI's ``metadata.json`` fields, with segnas's run and versions under ``segnas``."""
    versions = written_by()
    channels = {str(i): name for i, name in enumerate(plan.channel_names)}
    labels = {str(k): v for k, v in sorted(plan.labels.items())}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: f"exported by segnas {versions['segnas']}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {"onnxruntime": _version("onnxruntime")} if fmt == "onnx" else {},
        "name": f"segnas {kind} for {plan.dataset_name}",
        "task": f"3D segmentation of {', '.join(v for k, v in labels.items() if k != '0')}",
        "description": f"A {kind} network trained by segnas on {plan.dataset_name} (fold {record.get('fold')}), "
                       f"exported as {fmt}; images are resampled to {plan.target_spacing} mm and normalised as "
                       "configs/inference.json does before the model sees them.",
        "authors": "segnas",
        "copyright": "see the training dataset's licence",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": plan.num_channels,
                                 "spatial_shape": list(plan.patch_size), "dtype": "float32", "value_range": [],
                                 "is_patch_data": True, "channel_def": channels}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": plan.num_classes,
                                 "spatial_shape": list(plan.patch_size), "dtype": "float32", "value_range": [],
                                 "is_patch_data": True, "channel_def": labels}}},
        "segnas": {"versions": versions, "network": kind, "format": fmt, "model": f"models/{MODEL_FILES[fmt]}",
                   "plan": "configs/plan.json", "target_spacing": plan.target_spacing,
                   "normalisation": plan.normalisation, "patch_size": plan.patch_size, "labels": labels,
                   "fold": record.get("fold"), "validation": record.get("validation", {}),
                   "steps": record.get("steps")},
    }


def _version(package: str) -> str:
    try:
        return __import__(package).__version__
    except ImportError:
        return "not installed"


def normalisation_config(plan: Plan) -> list[Any]:
    """segnas's intensity normalisation (:func:`segnas.data.transforms.normalisation_transforms`) as MONAI bundle
    config entries; images whose channels need different schemes fall back to segnas's own transform."""
    if all(n["scheme"] == "zscore" for n in plan.normalisation):
        return [{"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True}]
    if plan.num_channels == 1:
        n = plan.normalisation[0]
        lo, hi = n["clip"]
        return [{"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": lo, "a_max": hi,
                 "b_min": (lo - n["mean"]) / n["std"], "b_max": (hi - n["mean"]) / n["std"], "clip": True}]
    return ["$segnas.data.transforms.normalisation_transforms("
            "segnas.data.plan.Plan.load(@bundle_root + '/configs/plan.json'))[0]"]  # needs segnas


def inference_config(plan: Plan, fmt: str) -> dict[str, Any]:
    """A MONAI bundle inference config in the model zoo's shape: the same preprocessing as ``segnas predict``."""
    if fmt == "torchscript":
        network = "$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device).eval()"
    else:  # MONAI has no ONNX network component: onnxruntime through segnas's loader
        network = "$segnas.engine.export.load_bundle_model(@bundle_root, @device)"
    normalisation = normalisation_config(plan)
    needs_segnas = fmt == "onnx" or any("segnas" in str(entry) for entry in normalisation)
    return {
        "imports": ["$import glob", "$import torch", *(["$import segnas.engine.export"] if needs_segnas else [])],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "images",
        "output_dir": "$@bundle_root + '/predictions'",
        "datalist": "$sorted(glob.glob(@dataset_dir + '/*.nii*'))",
        "network": network,
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": list(plan.target_spacing), "mode": "bilinear"},
            *normalisation,
            {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"}]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(plan.patch_size), "sw_batch_size": 2,
                    "overlap": 0.5, "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$torch.uint8", "resample": False, "separate_folder": False}]},
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing"},
        "run": ["$@evaluator.run()"],
    }


# ----- reading a bundle back -------------------------------------------------------------------------------------
def is_bundle(path: str | Path) -> bool:
    return (Path(path) / "configs" / "metadata.json").is_file()


def bundle_plan(path: str | Path) -> Plan:
    """The plan a bundle's model was trained under (``configs/plan.json``)."""
    path = Path(path)
    if not (path / "configs" / "plan.json").is_file():
        raise SegnasInputError("this bundle has no configs/plan.json: it was not exported by segnas", path)
    return Plan.load(path / "configs" / "plan.json")


def load_bundle_model(path: str | Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The bundle's model as a function of a batch ``(B, C, *S) -> (B, K, *S)`` on ``device`` (TorchScript), or
    on the CPU through onnxruntime (ONNX)."""
    path = Path(path)
    metadata = json.loads((path / "configs" / "metadata.json").read_text())
    model_file = path / (metadata.get("segnas") or {}).get("model", "models/model.ts")
    if not model_file.is_file():
        raise SegnasInputError("the bundle's model file is missing", model_file)
    try:
        if model_file.suffix == ".onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])

            def run_onnx(x: torch.Tensor) -> torch.Tensor:
                (logits,) = session.run(None, {"image": x.detach().float().cpu().numpy()})
                return torch.from_numpy(logits).to(x.device)

            return run_onnx
        return torch.jit.load(str(model_file), map_location=device).eval()
    except ImportError as err:
        raise SegnasInputError(f"an ONNX bundle needs onnxruntime ({err}); pip install 'segnas[export]'",
                               model_file) from err
    except Exception as err:
        raise SegnasInputError(f"cannot load the bundle's model ({type(err).__name__}: {err})", model_file) from err

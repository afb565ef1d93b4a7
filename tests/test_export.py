"""``segnas export``: the TorchScript and ONNX bundles reproduce the network (checked through ``torch.jit.load``
and onnxruntime, not only by the exporter), carry MONAI's bundle layout with a config MONAI parses, and
``segnas predict`` reads a bundle as it reads a run."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segnas.data.plan import make_plan
from segnas.data.dataset import load_dataset
from segnas.engine.run import FINAL_MODEL, load_model, train_run
from segnas.engine.trainer import TrainConfig
from segnas.networks.registry import MonaiUNetSpec, TopologyNetworkSpec
from segnas.spaces.presets import unet_architecture
from tests.conftest import TINY_SPACE, run_cli

onnxruntime = pytest.importorskip("onnxruntime")  # the test extra installs it; a bare environment skips, saying so

NETWORKS = {"topology": lambda: TopologyNetworkSpec(1, 3, unet_architecture(TINY_SPACE)),
            "monai-unet": lambda: MonaiUNetSpec.example(1, 3)}


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def trained(request: pytest.FixtureRequest, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-step run of each network kind."""
    network = NETWORKS[request.param]()
    plan = make_plan(load_dataset(tiny_dataset), stride=max(network.stride()), show_progress=False)
    run_dir = tmp_path_factory.mktemp(request.param) / "run"
    train_run(tiny_dataset, plan, network, run_dir, 0, TrainConfig(max_steps=2, batch_size=1, seed=0),
              device="cpu", show_progress=False)
    return run_dir


def _patch(run_dir: Path) -> torch.Tensor:
    plan = json.loads((run_dir / "plan.json").read_text())
    return torch.randn(2, 1, *plan["patch_size"], generator=torch.Generator().manual_seed(1))


def test_the_torchscript_bundle_loads_with_torch_jit_and_reproduces_the_network(trained: Path, tmp_path: Path) -> None:
    result = run_cli("export", trained, "--out", tmp_path / "bundle")
    assert result.returncode == 0, result.stderr
    model, _ = load_model(trained / FINAL_MODEL)
    scripted = torch.jit.load(str(tmp_path / "bundle" / "models" / "model.ts"))
    x = _patch(trained)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), rtol=1e-4, atol=1e-5)
    metadata = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == 3
    assert metadata["segnas"]["versions"]["torch"] == torch.__version__

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(tmp_path / "bundle" / "configs" / "inference.json"))
    parser["bundle_root"] = str(tmp_path / "bundle")
    parser["device"] = "$torch.device('cpu')"
    with torch.no_grad():  # MONAI's own parser builds the model and the inferer the bundle names
        assert torch.allclose(parser.get_parsed_content("network")(x), model(x), rtol=1e-4, atol=1e-5)
    assert parser.get_parsed_content("inferer").roi_size == metadata["segnas"]["patch_size"]


def test_the_onnx_bundle_runs_in_onnxruntime_like_the_network(trained: Path, tmp_path: Path) -> None:
    result = run_cli("export", trained, "--format", "onnx", "--out", tmp_path / "bundle")
    assert result.returncode == 0, result.stderr
    model, _ = load_model(trained / FINAL_MODEL)
    session = onnxruntime.InferenceSession(str(tmp_path / "bundle" / "models" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    x = _patch(trained)
    (logits,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        assert np.allclose(logits, model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_predict_reads_a_bundle_as_it_reads_the_run(trained: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    assert run_cli("export", trained, "--out", tmp_path / "bundle").returncode == 0
    image = tiny_dataset / "imagesTr" / "synth_000.nii.gz"
    for source, out in ((trained, "from_run"), (tmp_path / "bundle", "from_bundle")):
        # float32 both ways: the same network read two ways (bfloat16's closeness is tested in test_trainer)
        result = run_cli("predict", source, "--input", image, "--output", tmp_path / out, "--device", "cpu",
                         "--no-amp")
        assert result.returncode == 0, result.stderr
    masks = [nib.load(str(tmp_path / out / "synth_000.nii.gz")).get_fdata() for out in ("from_run", "from_bundle")]
    assert (masks[0] == masks[1]).mean() > 0.999  # float differences may flip a voxel at a tie


def test_export_refuses_an_occupied_folder_and_a_folder_that_is_no_run_without_writing(trained: Path,
                                                                                      tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    result = run_cli("export", trained, "--out", tmp_path / "taken")
    assert result.returncode == 2 and result.stderr.startswith("segnas: error: ")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    result = run_cli("export", tmp_path / "nothing", "--out", tmp_path / "b")
    assert result.returncode == 2 and "no run.json" in result.stderr and not (tmp_path / "b").exists()

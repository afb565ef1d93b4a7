"""The cell space (DARTS/PC-DARTS), implanting cells into U-Net skips, and IAC-LTH's stability rule and search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segnas.api import sample_architectures, search, topology_space, train
from segnas.errors import SegnasInputError
from segnas.networks.cells import Cell, DepthwiseConv3d, MaxPool3d, MixedEdge
from segnas.networks.registry import (SKIP_CELL, DynUNetSpec, ImplantedNetworkSpec, MonaiUNetSpec,
                                      implanted_network)
from segnas.spaces.architecture import load_architecture
from segnas.spaces.cells import CellArchitecture, CellSpace, discretize, genotype_problems, random_genotype
from segnas.strategies.iac_lth.stability import StabilityRule, StabilityTracker, js_divergence
from tests.conftest import run_cli, run_cli_here

SMALL = CellSpace(ops=("zero", "skip_connect", "conv_3x3x3", "max_pool_3x3x3"), nodes=2)


def test_edges_are_numbered_node_by_node() -> None:
    space = CellSpace(nodes=3)
    assert space.edges == ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3))
    assert list(space.node_edges(2)) == [5, 6, 7, 8] and space.edge_name(7) == "n0->n2"
    with pytest.raises(SegnasInputError, match="ops must be distinct names"):
        CellSpace(ops=("zero",))


def test_discretize_keeps_the_strongest_non_zero_operations_and_edges() -> None:
    op_weights = np.full((SMALL.num_edges, SMALL.num_ops), 0.1)
    op_weights[0] = [0.7, 0.1, 0.15, 0.05]  # zero is strongest: the edge's strength is conv's 0.15
    op_weights[1, 3] = 0.6
    op_weights[2, 1] = 0.5
    op_weights[4, 2] = 0.9
    genotype = discretize(SMALL, op_weights)
    assert genotype == (((0, "conv_3x3x3"), (1, "max_pool_3x3x3")), ((0, "skip_connect"), (2, "conv_3x3x3")))
    edge_weights = np.array([1.0, 1.0, 1.0, 1.0, 0.01])  # PC-DARTS's edge weights demote edge 4
    assert discretize(SMALL, op_weights, edge_weights)[1] == ((0, "skip_connect"), (1, "skip_connect"))
    assert genotype_problems(SMALL, genotype) == []
    assert random_genotype(SMALL, np.random.default_rng(0)) != random_genotype(SMALL, np.random.default_rng(1))


def test_cell_architecture_round_trips_and_bad_files_name_their_problem(tmp_path: Path) -> None:
    host = MonaiUNetSpec.example().to_dict()
    arch = CellArchitecture(SMALL, host, {SKIP_CELL: (((0, "conv_3x3x3"),), ((1, "skip_connect"), (2, "zero")))})
    with pytest.raises(SegnasInputError, match="'zero'"):
        arch.validate()
    arch.cells[SKIP_CELL] = (((0, "conv_3x3x3"),), ((1, "skip_connect"), (2, "max_pool_3x3x3")))
    path = arch.save(tmp_path / "arch.json")
    loaded = load_architecture(path)
    assert isinstance(loaded, CellArchitecture) and loaded.key() == arch.key() and loaded.cells == arch.cells
    data = json.loads(path.read_text())
    data["cells"][SKIP_CELL][1][0] = [7, "conv_3x3x3"]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(SegnasInputError, match=r"(?s)bad\.json.*source 7 is outside 0\.\.2"):
        load_architecture(tmp_path / "bad.json")
    result = run_cli("arch", "validate", tmp_path / "bad.json")
    assert result.returncode == 2 and "bad.json" in result.stderr and "Traceback" not in result.stderr


def test_a_relaxed_edge_skips_pruned_operations_and_mixes_partial_channels() -> None:
    edge = MixedEdge(SMALL, channels=8, partial=2)
    x = torch.randn(1, 8, 6, 6, 6)
    identity = torch.tensor([0.0, 1.0, 0.0, 0.0])  # only skip_connect alive
    out = edge(x, identity)
    assert out.shape == x.shape
    assert torch.equal(out.sort(dim=1).values, x.sort(dim=1).values)  # a shuffle of the same channels


@pytest.mark.parametrize("memory", [torch.contiguous_format, torch.channels_last_3d])
def test_channels_last_kernels_compute_the_plain_operations(memory: torch.memory_format) -> None:
    """The cell operations run channels-last for speed (issue 46) and must give the plain operation's outputs and
    gradients (within float32 rounding; max pooling exactly), in the input's memory format, with nn.Conv3d's
    parameters, also strided per axis and dilated."""
    torch.manual_seed(0)
    for stride, dilation in ((1, 1), ((2, 2, 1), 1), (1, 2)):
        conv = DepthwiseConv3d(6, 3, stride=stride, padding=dilation, dilation=dilation)
        assert list(conv.state_dict()) == ["weight"] and conv.weight.shape == (6, 1, 3, 3, 3)
        pool = MaxPool3d(stride)
        for module, plain, tolerance in (
                (conv, lambda x: torch.nn.functional.conv3d(x, conv.weight, stride=conv.stride, padding=dilation,
                                                            dilation=dilation, groups=6), 1e-5),
                (pool, lambda x: torch.nn.functional.max_pool3d(x, 3, stride=pool.stride, padding=1), 0.0)):
            x = torch.randn(2, 6, 10, 12, 6).contiguous(memory_format=memory).requires_grad_()
            reference = x.detach().contiguous().requires_grad_()
            with torch.no_grad():  # a forward alone: the default layout's kernel, same answer
                torch.testing.assert_close(module(x), plain(reference), rtol=tolerance, atol=tolerance)
            out, expected = module(x), plain(reference)
            assert out.is_contiguous(memory_format=memory)
            torch.testing.assert_close(out, expected, rtol=tolerance, atol=tolerance)
            gradient = torch.randn_like(expected)
            out.backward(gradient)
            expected.backward(gradient)
            torch.testing.assert_close(x.grad, reference.grad, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("host", [MonaiUNetSpec.example(), DynUNetSpec.example()], ids=["monai-unet", "dynunet"])
def test_implanted_cells_start_as_the_identity_and_host_weights_load(host) -> None:
    torch.manual_seed(0)
    trained = host.build().eval()
    x = torch.randn(1, 1, 16, 16, 16)
    relaxed = implanted_network(host, SMALL, None, partial=2).eval()
    missing, unexpected = relaxed.host.load_state_dict(trained.state_dict(), strict=False)
    assert not unexpected and missing and all(".cell." in key for key in missing)
    weights = torch.softmax(torch.randn(SMALL.num_edges, SMALL.num_ops), -1)
    with torch.no_grad():
        assert torch.equal(relaxed(x, (weights, None)), trained(x))
    spec = ImplantedNetworkSpec(1, 3, CellArchitecture(SMALL, host.to_dict(), {
        SKIP_CELL: (((0, "conv_3x3x3"), (1, "skip_connect")), ((2, "max_pool_3x3x3"),))}))
    discrete = spec.build().eval()
    discrete.host.load_state_dict(trained.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.equal(discrete(x), trained(x))
    assert len(discrete.cells) == 2 and all(isinstance(cell, Cell) for cell in discrete.cells)


def test_js_divergence_bounds() -> None:
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    q = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert js_divergence(p, q).tolist() == [0.0, 1.0]


def test_stable_edges_are_pruned_until_decided_and_the_state_round_trips() -> None:
    rule = StabilityRule(threshold=1e-3, patience=2, prune_below=0.5)
    tracker = StabilityTracker(num_edges=2, num_ops=4, rule=rule)
    moving = np.zeros((2, 4))
    for epoch in range(12):
        logits = np.array([[2.0, 1.0, 0.0, -1.0],  # edge 0: fixed from the start
                           [0.0, 0.3 * epoch, 0.0, 0.0]])  # edge 1: keeps moving
        moving = logits
        tracker.end_epoch(epoch, logits)
    assert tracker.decided.tolist() == [True, False]
    assert tracker.alive[0].tolist() == [True, False, False, False]  # the strongest survives
    assert tracker.decided_epoch[0] <= 6 and tracker.alive[1].all()
    copy = StabilityTracker(2, 4, rule)
    copy.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert copy.end_epoch(12, moving) == tracker.end_epoch(12, moving)
    untracked = StabilityTracker(2, 4, None)
    for epoch in range(5):
        untracked.end_epoch(epoch, np.zeros((2, 4)))
    assert untracked.alive.all() and untracked.history[-1]["js"] == [0.0, 0.0]


def test_iac_search_stops_when_every_edge_is_decided_and_the_full_search_does_not(tiny_dataset: Path,
                                                                                 tmp_path: Path) -> None:
    run = dict(strategy="iac-lth", profile="tiny", device="cpu", show_progress=False)
    stopped = search(tiny_dataset, tmp_path / "lth", **run)["cells"]
    full = search(tiny_dataset, tmp_path / "full", options={"stopping": "full"}, **run)["cells"]
    assert stopped.metadata["stopped_early"] and stopped.metadata["epochs"] < full.metadata["epochs"] == 6
    assert stopped.metadata["edges_decided"] == SMALL.num_edges and full.metadata["edges_decided"] == 0
    history = json.loads((tmp_path / "lth" / "cells" / "stability.json").read_text())["history"]
    assert any(entry["events"] for entry in history) and (tmp_path / "lth" / "cells" / "stability.png").is_file()
    # the result trains and predicts as any architecture does
    record = train(tiny_dataset, stopped, tmp_path / "run", plan=tmp_path / "lth" / "plan.json", steps=2,
                   device="cpu", show_progress=False)
    assert record["network"]["kind"] == "implanted-cells"


def test_iac_search_takes_a_trained_backbone_and_refuses_others(tiny_dataset: Path, tmp_path: Path) -> None:
    train(tiny_dataset, "monai-unet", tmp_path / "unet", steps=2, device="cpu", show_progress=False)
    result = run_cli("search", tiny_dataset, "--strategy", "iac-lth", "--profile", "tiny", "--backbone",
                     tmp_path / "unet", "--out", tmp_path / "s", "--device", "cpu", "--epochs", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    arch = load_architecture(tmp_path / "s" / "cells" / "arch.json")
    assert arch.host["channels"] == list(MonaiUNetSpec(1, 3).channels)  # the backbone's network, not the profile's
    for args, problem in ((["--fold", "1"], "trained on fold 0"), (["--budget", "1GB"], "takes no --budget")):
        refused = run_cli_here("search", tiny_dataset, "--strategy", "iac-lth", "--profile", "tiny", "--backbone",
                          tmp_path / "unet", "--out", tmp_path / "t", "--device", "cpu", *args)
        assert refused.returncode == 2 and problem in refused.stderr and not (tmp_path / "t").exists()
    topology = tmp_path / "topo"
    space = topology_space(num_blocks=3, num_depths=2, channel_mul=0.125)
    train(tiny_dataset, sample_architectures(space)[0], topology, steps=1, device="cpu", show_progress=False)
    refused = run_cli_here("search", tiny_dataset, "--strategy", "iac-lth", "--profile", "tiny", "--backbone", topology,
                      "--out", tmp_path / "t", "--device", "cpu")
    assert refused.returncode == 2 and "cells can be implanted into" in refused.stderr

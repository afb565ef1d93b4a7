"""Scalable NAS: the U-Net of cells, the stochastic draw and its gradients, the derivation, the budget fit, and
the derived network trained by ``segnas train --arch``. (The registry-driven tests in test_strategies.py and
test_formats.py run the strategy end to end, resume it, and round-trip both network kinds.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from segnas.api import search
from segnas.cost.budget import Budget
from segnas.cost.measure import CostReport
from segnas.networks.cell_unet import CellUNet
from segnas.networks.cells import Cell, genotype_sample
from segnas.networks.registry import CellUNetSpec
from segnas.spaces.cells import UNET_CELL_TYPES, CellSpace
from segnas.strategies.scalable_nas import (CostTable, SamplingSearchHook, ScalableNasStrategy, ScalableProfile, derive,
                                            draw)
from tests.conftest import run_cli

SPACE = CellSpace(("zero", "skip_connect", "conv_3x3x3", "avg_pool_3x3x3"), nodes=3, placement="encoder-decoder")


def test_a_draw_keeps_two_edges_per_node_with_gates_of_one_whose_gradients_reach_only_drawn_edges() -> None:
    alpha = torch.zeros(SPACE.num_edges, SPACE.num_ops, requires_grad=True)
    beta = torch.zeros(SPACE.num_edges, requires_grad=True)
    ops, gates = draw(SPACE, alpha, beta, tau=1.0, generator=torch.Generator().manual_seed(0))
    for node in range(SPACE.nodes):
        drawn = [e for e in SPACE.node_edges(node) if ops[e] >= 0]
        assert len(drawn) == SPACE.keep
    drawn = [e for e in range(SPACE.num_edges) if ops[e] >= 0]
    assert all(SPACE.ops[ops[e]] != "zero" for e in drawn)
    assert torch.allclose(gates[drawn], torch.ones(len(drawn)))
    assert torch.all(gates[[e for e in range(SPACE.num_edges) if ops[e] < 0]] == 0)
    (gates * torch.arange(1.0, SPACE.num_edges + 1)).sum().backward()
    rows_with_gradient = set(alpha.grad.abs().sum(dim=1).nonzero()[:, 0].tolist())
    assert rows_with_gradient == set(drawn)
    assert alpha.grad[:, SPACE.ops.index("zero")].abs().sum() == 0  # zero is never drawn
    assert beta.grad.abs().sum() > 0


def test_a_sampled_step_runs_only_the_drawn_operations() -> None:
    net = CellUNet(SPACE, 1, 3, 4, 2)
    called: set[str] = set()
    for name, module in net.named_modules():
        if re.fullmatch(r"cells\.\w+\.edges\.\d+\.ops\.\d+", name):
            module.register_forward_hook(lambda m, i, o, n=name: called.add(n))
    hook = SamplingSearchHook(SPACE, steps=10, warmup_steps=0)
    cells = hook.cells_kwargs(0, torch.device("cpu"))
    out = net(torch.randn(1, 1, 8, 8, 8), cells=cells)
    assert out.shape == (1, 3, 8, 8, 8)
    expected = {f"cells.{layer}.edges.{e}.ops.{cells[cell_type]['sample'][0][e]}"
                for layer, cell_type, _ in net.layers for e in range(SPACE.num_edges)
                if cells[cell_type]["sample"][0][e] >= 0}
    assert called == expected
    out.mean().backward()  # the trainer's backward fills the logits' gradients (joint optimisation)
    assert hook.alpha.grad is not None and hook.alpha.grad.abs().sum() > 0


def test_the_derivation_keeps_each_node_s_strongest_edges_with_their_most_probable_operations() -> None:
    alpha = torch.zeros(SPACE.num_edges, SPACE.num_ops)
    beta = torch.zeros(SPACE.num_edges)
    alpha[:, SPACE.ops.index("zero")] = 50.0  # the zero operation is never derived, however probable
    alpha[:, SPACE.ops.index("avg_pool_3x3x3")] = 1.0
    alpha[3, SPACE.ops.index("conv_3x3x3")] = 2.0
    beta[[0, 1, 3, 4, 6, 8]] = 1.0
    assert derive(SPACE, alpha, beta) == (((0, "avg_pool_3x3x3"), (1, "avg_pool_3x3x3")),
                                          ((1, "conv_3x3x3"), (2, "avg_pool_3x3x3")),
                                          ((1, "avg_pool_3x3x3"), (3, "avg_pool_3x3x3")))
    ops, gates = genotype_sample(SPACE, derive(SPACE, alpha, beta))
    assert [SPACE.ops[o] if o >= 0 else None for o in ops][2:5] == [None, "conv_3x3x3", "avg_pool_3x3x3"]
    assert torch.equal(gates, torch.ones(SPACE.num_edges))


@pytest.mark.parametrize("resample, side", [(("strided", "strided"), 4), (("up", "same"), 16), (("same", "down"), 8)])
def test_reduction_expansion_and_projected_inputs_set_the_cell_s_resolution(resample: tuple[str, str],
                                                                            side: int) -> None:
    genotype = (((0, "conv_3x3x3"), (1, "skip_connect")), ((0, "avg_pool_3x3x3"), (2, "conv_3x3x3")),
                ((1, "skip_connect"), (3, "conv_3x3x3")))
    second = 8 if resample[1] == "strided" else 16  # the inputs: 8^3 and, as a U-Net passes it, this
    cell = Cell(SPACE, [4, 4], 4, 6, genotype, zero_output=False, resample=resample)
    out = cell([torch.randn(1, 4, 8, 8, 8), torch.randn(1, 4, second, second, second)])
    assert out.shape == (1, 6, side, side, side)


def _linear_cost_strategy(bias: float) -> tuple[ScalableNasStrategy, CostTable]:
    """A strategy over SPACE whose measured parameter count is a linear model (plus ``bias`` it does not know)."""
    table = CostTable("parameters", 100.0, {t: {"skip_connect": 0.0, "conv_3x3x3": 10.0, "avg_pool_3x3x3": 4.0}
                                            for t in UNET_CELL_TYPES})
    strategy = ScalableNasStrategy(ScalableProfile("test", SPACE, batch_size=1))
    strategy.measure = lambda cells: CostReport(int(table.of(cells) + bias), 0.0, 0, "test", 0.0, 0.0, "cpu",
                                                [8, 8, 8], 1)
    return strategy, table


def _hook_preferring(ranked: dict[str, float]) -> SamplingSearchHook:
    hook = SamplingSearchHook(SPACE, steps=10, warmup_steps=0)
    with torch.no_grad():
        hook.alpha.zero_()
        hook.beta.zero_()
        for op, logit in ranked.items():
            hook.alpha[:, :, SPACE.ops.index(op)] = logit
    return hook


def test_the_derivation_swaps_up_into_the_window_by_the_least_probability_lost_per_unit_of_cost() -> None:
    strategy, table = _linear_cost_strategy(bias=0.0)
    # skip most probable; avg_pool costs 4 for 0.1 of log-probability, conv 10 for 2.0: avg_pool's rate is lower
    hook = _hook_preferring({"skip_connect": 2.0, "avg_pool_3x3x3": 1.9, "conv_3x3x3": 0.0})
    cells, report, swaps = strategy.fit_budget(hook, Budget("parameters", 200.0, "200params"), table)
    kept = SPACE.keep * SPACE.nodes * len(UNET_CELL_TYPES)
    assert swaps == {"up": kept, "down": 0}  # 100 + 24 x 4 = 196 is the first cost inside [194, 200]
    assert report.parameters == 196
    assert {op for g in cells.values() for node in g for _, op in node} == {"avg_pool_3x3x3"}


def test_the_derivation_swaps_down_under_the_budget_when_measured_over_it() -> None:
    strategy, table = _linear_cost_strategy(bias=7.0)  # the model underestimates: the swaps aim at the measured cost
    hook = _hook_preferring({"conv_3x3x3": 2.0, "avg_pool_3x3x3": 1.0, "skip_connect": 0.0})
    budget = Budget("parameters", 200.0, "200params")
    cells, report, swaps = strategy.fit_budget(hook, budget, table)
    assert report.parameters <= 200 and swaps["up"] == 0 and swaps["down"] > 0
    assert strategy.measure(hook.genotypes()).parameters == 100 + 24 * 10 + 7  # the most probable cells: over


def test_a_budgeted_search_derives_a_network_within_the_budget(tiny_dataset: Path, tmp_path: Path) -> None:
    budget = "1.2kparams"
    arch = search(tiny_dataset, tmp_path / "s", "scalable-nas", budgets=[budget], profile="tiny", device="cpu",
                  show_progress=False)[f"budget-{budget}"]
    meta = arch.metadata
    assert meta["cost"]["parameters"] <= 1200 and meta["budget"]["measured"] == meta["cost"]["parameters"]
    assert meta["budget"]["inside_window"] == (1164 <= meta["cost"]["parameters"] <= 1200)
    table = json.loads((tmp_path / "s" / f"budget-{budget}" / "cost_table.json").read_text())
    assert table["kind"] == "parameters" and table["per_edge"]["encoder"]["conv_3x3x3"] > 0
    assert (tmp_path / "s" / f"budget-{budget}" / "probabilities.png").is_file()
    assert np.isfinite(meta["discretisation_gap"])


def test_a_u_net_of_cells_trains_from_its_file_and_a_file_missing_a_cell_type_is_refused(
        tiny_dataset: Path, tmp_path: Path) -> None:
    arch = CellUNetSpec.example(1, 3).architecture
    arch.save(tmp_path / "arch.json")
    result = run_cli("train", tiny_dataset, "--arch", tmp_path / "arch.json", "--out", tmp_path / "run",
                     "--steps", "2", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["network"]["kind"] == "cell-unet"
    data = json.loads((tmp_path / "arch.json").read_text())
    del data["cells"][UNET_CELL_TYPES[1]]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    result = run_cli("arch", "validate", tmp_path / "bad.json")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"segnas: error: {tmp_path / 'bad.json'}: invalid U-Net of cells: it has no "
                                     "'reduction' cell")

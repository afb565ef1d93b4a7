"""Thrifty NAS: the path lattice and its exact decoding, the cell-path network (discrete, relaxed, on a fixed path),
the thrift term, the width fit to a budget, the ablations and the default budget, and the derived network trained
by ``segnas train --arch``. (The registry-driven tests in test_strategies.py and test_formats.py run the strategy
end to end, resume it, refuse an out-of-range budget and round-trip its network kinds.)"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segnas.api import prepare_search, search
from segnas.cost.budget import BUDGET_WINDOW, parse_budget
from segnas.errors import SegnasInputError
from segnas.networks.registry import cell_network, network_from_dict
from segnas.spaces.cells import CellArchitecture, CellSpace, uniform_genotype
from segnas.strategies.thrifty import (CellPathSpec, ThriftCostModel, ThriftySearchHook, ThriftySearchNetSpec,
                                       decode_path, move_probabilities, u_path, visit_probabilities)
from segnas.strategies.thrifty.network import NORMAL_CELL, CellPathNet, cell_path_host
from segnas.strategies.thrifty.path import MOVES, move_mask, path_one_hot, path_problems, reachable
from segnas.strategies.thrifty.search import reference_genotype
from tests.conftest import run_cli

SPACE = CellSpace(("zero", "skip_connect", "avg_pool_3x3x3", "sep_conv_3x3x3"), nodes=2, placement="cell-path")


def all_paths(layers: int, levels: int) -> list[list[int]]:
    """Every path by brute force: levels in range, one move at most per layer from the stem's 0, ending at 0."""
    return [list(p) for p in itertools.product(range(levels), repeat=layers) if not path_problems(list(p), levels)]


def path_probability(probs: torch.Tensor, path: list[int]) -> float:
    return float(np.prod([probs[layer, source, MOVES.index(target - source)]
                          for layer, (source, target) in enumerate(zip([0, *path], path))]))


def test_the_lattice_holds_exactly_the_nodes_and_moves_of_some_path() -> None:
    layers, levels = 6, 3
    used_nodes, used_moves = np.zeros((layers, levels), bool), np.zeros((layers, levels, 3), bool)
    for path in all_paths(layers, levels):
        for layer, (source, target) in enumerate(zip([0, *path], path)):
            used_nodes[layer, target] = used_moves[layer, source, MOVES.index(target - source)] = True
    assert (used_nodes == reachable(layers, levels)).all()
    assert (used_moves == move_mask(layers, levels)).all()
    assert u_path(5, 3) == [0, 1, 2, 1, 0] and u_path(8, 4) == [0, 1, 2, 3, 3, 2, 1, 0]
    assert path_problems([0, 2, 1, 0], 3) and path_problems([0, 1], 3) and path_problems([0, 3, 0], 3)
    assert not path_problems(u_path(6, 3), 3)


@pytest.mark.parametrize("seed", range(4))
def test_visits_sum_the_paths_through_a_node_and_viterbi_finds_the_most_probable_path(seed: int) -> None:
    layers, levels = 6, 3
    probs = move_probabilities(3 * torch.randn(layers, levels, 3, generator=torch.Generator().manual_seed(seed)))
    paths = all_paths(layers, levels)
    assert sum(path_probability(probs, p) for p in paths) == pytest.approx(1.0)
    visits = visit_probabilities(probs)
    for layer, level in [(1, 1), (2, 2), (3, 0)]:
        through = sum(path_probability(probs, p) for p in paths if p[layer] == level)
        assert float(visits[layer, level]) == pytest.approx(through, abs=1e-6)
    assert float(visits[-1, 0]) == pytest.approx(1.0)
    assert decode_path(probs) == max(paths, key=lambda p: path_probability(probs, p))


def test_a_cell_path_network_builds_round_trips_and_refuses_a_broken_path() -> None:
    spec = CellPathSpec.example()
    assert spec.build()(torch.randn(2, 1, 16, 16, 16)).shape == (2, 3, 16, 16, 16)
    assert spec.stride() == [4, 4, 4]  # the stem's halving, then one level down
    assert network_from_dict(spec.to_dict()) == spec
    assert cell_network(spec.architecture) == spec  # dispatched on the cells' placement
    host = cell_path_host(1, 3, [4, 8, 16], [0, 2, 0])
    with pytest.raises(SegnasInputError, match="invalid cell path: each layer moves at most one level"):
        CellPathSpec(1, 3, CellArchitecture(spec.architecture.space, host, spec.architecture.cells))


def test_the_relaxed_lattice_skips_moves_of_probability_zero() -> None:
    spec = ThriftySearchNetSpec(1, 3, SPACE, (4, 8), 4)
    net = spec.build()
    path = [0, 0, 0, 0]  # level 0 throughout: every cell's second input (level 0, two layers back) is on it
    uniform = torch.full((SPACE.num_edges, SPACE.num_ops), 1 / SPACE.num_ops)
    net(torch.randn(1, 1, 16, 16, 16), cells={"op_weights": uniform}, moves=path_one_hot(path, 2)).sum().backward()
    trained = {name for name, cell in net.cells.items() if any(p.grad is not None for p in cell.parameters())}
    moves = zip([0, *path], path)
    assert trained == {CellPathNet.cell_name(layer, s, MOVES.index(t - s)) for layer, (s, t) in enumerate(moves)}
    relaxed = net(torch.randn(1, 1, 16, 16, 16), **spec.forward_kwargs())  # every cell of the lattice
    assert relaxed.shape == (1, 3, 16, 16, 16) and len(net.cells) == int(move_mask(4, 2).sum())


def test_a_held_cell_runs_as_a_sample_on_partial_channel_edges() -> None:
    spec = ThriftySearchNetSpec(1, 3, SPACE, (4, 8), 3, partial=2)  # the macro ablation of a PC-DARTS lattice
    hook = ThriftySearchHook(SPACE, 3, 2, [], 0, "macro", ThriftCostModel.build("parameters", SPACE, [4, 8],
                                                                                [16, 16, 16], 1), thrift=1.0)
    out = spec.build()(torch.randn(1, 1, 16, 16, 16), **hook.forward_kwargs(torch.device("cpu"), detach=False))
    out.sum().backward()
    assert out.shape == (1, 3, 16, 16, 16) and hook.gamma.grad is not None and hook.alpha.grad is None


def test_the_parameter_model_counts_a_networks_cells_exactly_when_its_levels_are_equally_wide() -> None:
    widths, path = [6, 6], [1, 1, 0]
    model = ThriftCostModel.build("parameters", SPACE, widths, [16, 16, 16], 1)
    genotype = (((0, "sep_conv_3x3x3"), (1, "skip_connect")), ((0, "avg_pool_3x3x3"), (2, "sep_conv_3x3x3")))
    net = CellPathNet(SPACE, 1, 3, widths, 3, path, genotype)
    outside = sum(p.numel() for module in (net.stem, net.down, net.head) for p in module.parameters())
    assert model.of(SPACE, path, genotype) + outside == sum(p.numel() for p in net.parameters())
    memory = ThriftCostModel.build("memory", SPACE, widths, [16, 16, 16], 1)
    assert memory.per_edge[1][SPACE.ops.index("sep_conv_3x3x3")] < memory.per_edge[0][SPACE.ops.index(
        "sep_conv_3x3x3")]  # the coarser level holds fewer activations


def test_the_thrift_term_pushes_the_cell_off_costly_operations_once_over_the_reference() -> None:
    model = ThriftCostModel.build("parameters", SPACE, [4, 8], [16, 16, 16], 1)
    hook = ThriftySearchHook(SPACE, 3, 2, [], 0, "both", model, thrift=1.0)
    assert hook.reference_cost == pytest.approx(model.of(SPACE, u_path(3, 2), reference_genotype(SPACE)))
    assert float(hook.cost_ratio().detach()) < 1  # the uniform cell holds free operations: under the reference, no term
    sep = SPACE.ops.index("sep_conv_3x3x3")
    with torch.no_grad():
        hook.alpha[:, sep] = 5.0  # nearly every edge a separable convolution
        hook.gamma[:, :, MOVES.index(1)] = 5.0  # and the path as deep as it goes
    ratio = hook.cost_ratio()
    assert float(ratio.detach()) > 1
    (ratio - 1).backward()
    assert (hook.alpha.grad[:, sep] > 0).all()  # descending the term lowers every separable convolution's logit


def test_the_width_fit_spends_parameter_budgets_inside_the_window_and_refuses_what_it_cannot_spend(
        tiny_dataset: Path, tmp_path: Path) -> None:
    strategy = prepare_search(tiny_dataset, tmp_path / "s", "thrifty", None, profile="tiny", device="cpu",
                              show_progress=False)
    path, genotype = u_path(3, 2), reference_genotype(strategy.space)
    for text in ("60kparams", "100kparams"):  # below ~50k, one channel can be more than the window
        budget = parse_budget(text)
        widths, trials = strategy.fit_widths(path, genotype, budget)
        spent = strategy.cost(strategy.network(path, genotype, widths), "parameters")
        assert budget.value * (1 - BUDGET_WINDOW) <= spent <= budget.value, (text, widths, trials)
    with pytest.raises(SegnasInputError, match="cannot be spent by the searched network .* --resume"):
        strategy.fit_widths(path, genotype, parse_budget("100params"))


def test_the_ablations_hold_their_level_and_a_search_without_budget_records_the_default(
        tiny_dataset: Path, tmp_path: Path) -> None:
    run = dict(budgets=[], profile="tiny", device="cpu", show_progress=False)
    micro = search(tiny_dataset, tmp_path / "micro", "thrifty", options={"search": "micro"}, **run)
    arch = micro["budget-3kparams"]
    assert arch.metadata["path"] == u_path(3, 2) and arch.metadata["budget"]["default"] is True
    macro = search(tiny_dataset, tmp_path / "macro", "thrifty", options={"search": "macro"}, **run)
    assert macro["budget-3kparams"].cells[NORMAL_CELL] == uniform_genotype(SPACE, "sep_conv_3x3x3")
    for name in ("path.png", "probabilities.png"):
        assert (tmp_path / "macro" / "search" / name).is_file()

    trained = run_cli("train", tiny_dataset, "--arch", tmp_path / "micro" / "budget-3kparams" / "arch.json",
                      "--out", tmp_path / "run", "--steps", "2", "--device", "cpu")
    assert trained.returncode == 0, trained.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["network"]["kind"] == "cell-path" and record["status"] == "finished"

"""DiNTS pieces checked against MONAI's reference implementation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.networks.nets import TopologySearch

from segnas.spaces import TopologySpace
from segnas.spaces.sampler import FeasiblePatterns
from segnas.strategies.dints import decode, pattern_probabilities


def _monai_search(space: TopologySpace) -> TopologySearch:
    return TopologySearch(channel_mul=0.0625, num_blocks=space.num_blocks, num_depths=space.num_depths,
                          use_downsample=space.stem_downsample)


@pytest.mark.parametrize("blocks,depths", [(3, 2), (6, 3), (4, 4)])
def test_decode_returns_exactly_monais_result(blocks: int, depths: int) -> None:
    space = TopologySpace.named("dints", num_blocks=blocks, num_depths=depths)
    reference = _monai_search(space)
    table = FeasiblePatterns(space)
    for seed in range(5 if depths < 4 else 1):  # MONAI's own decode of 4 depths takes ~17 s a call (ours: ms)
        generator = torch.Generator().manual_seed(seed)
        log_alpha_a = torch.randn(blocks, space.num_edges, generator=generator) * 2
        log_alpha_c = torch.randn(blocks, space.num_edges, 5, generator=generator)
        with torch.no_grad():
            reference.log_alpha_a.copy_(log_alpha_a)
            reference.log_alpha_c.copy_(log_alpha_c)
        node_a, arch_code_a, arch_code_c, _ = reference.decode()
        ours = decode(space, log_alpha_a, log_alpha_c, table)
        np.testing.assert_array_equal(ours.edges.astype(int), arch_code_a.astype(int))
        np.testing.assert_array_equal(ours.node_activation(), node_a)
        np.testing.assert_array_equal(ours.ops[ours.edges], arch_code_c[ours.edges])


def test_pattern_probabilities_match_monai_and_sum_to_one() -> None:
    space = TopologySpace.named("dints", num_blocks=3, num_depths=3)
    reference = _monai_search(space)
    with torch.no_grad():
        reference.log_alpha_a.normal_()
    monai_probs, _ = reference.get_prob_a(child=True)
    patterns = np.asarray(reference.child_list).astype(bool)
    ours = pattern_probabilities(reference.log_alpha_a.detach(), patterns)
    torch.testing.assert_close(ours, monai_probs.float())
    torch.testing.assert_close(ours.sum(-1), torch.ones(3))


def test_relaxed_supernet_equals_monai_topology_search() -> None:
    from monai.networks.nets import DiNTS

    from segnas.networks.monai_compat import monai_key
    from segnas.networks.topology_net import TopologyNet
    from segnas.strategies.dints.relaxation import path_probabilities

    torch.manual_seed(0)
    space = TopologySpace.named("dints", num_blocks=3, num_depths=3, channel_mul=0.125)
    search = TopologySearch(channel_mul=0.125, num_blocks=3, num_depths=3, use_downsample=True)
    reference = DiNTS(search, in_channels=1, num_classes=2, use_downsample=True).eval()
    with torch.no_grad():
        search.log_alpha_a.normal_()
        search.log_alpha_c.normal_()
    ours = TopologyNet(space, 1, 2, merge="sum").eval()
    # segnas -> MONAI here (MONAI's search space also holds the stems and cells ours has, all of them)
    state = reference.state_dict()
    ours.load_state_dict({key: state[monai_key(key, search=True)] for key in ours.state_dict()})
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = reference(x)
        got = ours.forward_relaxed(x, path_probabilities(search.log_alpha_a),
                                   torch.softmax(search.log_alpha_c, -1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depths", [2, 3, 4])
def test_memory_and_topology_losses_equal_monais(depths: int) -> None:
    from segnas.strategies.dints.relaxation import ram_cost_usage, topology_entropy

    space = TopologySpace.named("dints", num_blocks=4, num_depths=depths, channel_mul=0.5)
    reference = TopologySearch(channel_mul=0.5, num_blocks=4, num_depths=depths, use_downsample=True)
    with torch.no_grad():
        reference.log_alpha_a.normal_()
        reference.log_alpha_c.normal_()
    size = (2, 1, 64, 64, 32)
    for full in (False, True):
        expected = reference.get_ram_cost_usage(size, full=full)
        got = ram_cost_usage(space, reference.log_alpha_a, reference.log_alpha_c, size, full=full)
        torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-4)
    probs, _ = reference.get_prob_a(child=True)
    expected_entropy = reference.get_topology_entropy(probs)
    table = FeasiblePatterns(space)
    ours_probs = pattern_probabilities(reference.log_alpha_a, table.patterns)
    torch.testing.assert_close(topology_entropy(space, ours_probs, table), expected_entropy.float(),
                               rtol=1e-4, atol=1e-4)


def test_dints_search_end_to_end_with_ram_factor_and_resume(tiny_dataset, tmp_path) -> None:
    import json

    from segnas.spaces import Architecture
    from tests.conftest import run_cli

    out = tmp_path / "dints"
    result = run_cli("search", tiny_dataset, "--strategy", "dints", "--ram-factor", "0.5", "--profile", "tiny",
                     "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    folder = out / "ram-0.5"
    arch = Architecture.load(folder / "arch.json")
    meta = arch.metadata
    assert meta["strategy"] == "dints" and meta["measured_memory_mb"] > 0 and meta["estimated_memory_mb"] > 0
    assert meta["val_dice_decoded"] is not None and meta["val_dice_relaxed"] is not None
    codes = json.loads((folder / "monai_codes.json").read_text())
    instance_arch = Architecture.from_monai_codes(arch.space, np.array(codes["arch_code_a"]),
                                                  np.array(codes["arch_code_c"]))
    assert instance_arch.key() == arch.key()
    log = [json.loads(line) for line in (folder / "supernet" / "log.jsonl").read_text().splitlines()]
    assert any("arch_loss" in r for r in log) and any("val_dice_relaxed" in r for r in log)
    again = run_cli("search", tiny_dataset, "--strategy", "dints", "--ram-factor", "0.5", "--profile", "tiny",
                    "--out", out, "--device", "cpu", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert Architecture.load(folder / "arch.json").key() == arch.key()


def test_dints_refuses_bad_relative_budgets(tiny_dataset, tmp_path) -> None:
    from tests.conftest import run_cli_here

    for factor in ("0", "1.5"):
        result = run_cli_here("search", tiny_dataset, "--strategy", "dints", "--ram-factor", factor, "--profile", "tiny",
                         "--out", tmp_path / "x")
        assert result.returncode == 2 and "--ram-factor must lie in (0, 1]" in result.stderr
    result = run_cli_here("search", tiny_dataset, "--strategy", "dints", "--budget", "1TB", "--profile", "tiny",
                     "--out", tmp_path / "x", "--device", "cpu")
    assert result.returncode == 2 and "outside the memory range that strategy dints can reach" in result.stderr
    assert not (tmp_path / "x").exists()  # refused before any training or writing
    result = run_cli_here("search", tiny_dataset, "--strategy", "dints", "--budget", "2Mparams", "--profile", "tiny",
                     "--out", tmp_path / "x")
    assert result.returncode == 2 and "searches under memory budgets" in result.stderr
    assert not (tmp_path / "x").exists()


def test_logits_and_checkpoints_from_another_space_are_refused() -> None:
    from segnas.errors import SegnasInputError
    from segnas.strategies.dints.search import DintsHook

    small = TopologySpace.named("dints", num_blocks=3, num_depths=2)
    large = TopologySpace.named("dints", num_blocks=4, num_depths=3)
    with pytest.raises(SegnasInputError, match="belong to another space"):
        decode(small, torch.zeros(large.num_blocks, large.num_edges),
               torch.zeros(large.num_blocks, large.num_edges, large.num_ops))
    hook = DintsHook(small, [], 1, 2, 0.5, (1, 1, 32, 32, 32), seed=0)
    other = DintsHook(large, [], 1, 2, 0.5, (1, 1, 32, 32, 32), seed=0)
    with pytest.raises(SegnasInputError, match="another search space"):
        hook.load_state_dict(other.state_dict())


def _random_logits(space: TopologySpace, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(space.num_blocks, space.num_edges, generator=generator) * 2,
            torch.randn(space.num_blocks, space.num_edges, space.num_ops, generator=generator))


def _every_chain(space: TopologySpace, table: FeasiblePatterns, log_alpha_a: torch.Tensor,
                 edge_cost: np.ndarray) -> list[tuple[float, float, tuple[int, ...]]]:
    """Brute force: (decode cost, additive cost, chain) of every feasible chain of patterns."""
    import itertools

    from segnas.strategies.dints.decode import _pattern_costs

    costs = _pattern_costs(space, log_alpha_a, table)
    pattern_cost = table.patterns.astype(float) @ edge_cost.T  # (C, L)
    chains = []
    for chain in itertools.product(range(len(table.patterns)), repeat=space.num_blocks):
        if all(table.targets[a] == table.sources[b] for a, b in zip(chain, chain[1:])):
            chains.append((sum(costs[block, c] for block, c in enumerate(chain)),
                           sum(pattern_cost[c, block] for block, c in enumerate(chain)), chain))
    return chains


def test_decode_within_is_the_most_probable_chain_inside_the_interval() -> None:
    from segnas.strategies.dints.decode import decode_within
    from segnas.strategies.dints.relaxation import edge_ram_costs

    space = TopologySpace.named("dints", num_blocks=3, num_depths=2, channel_mul=0.125)
    table = FeasiblePatterns(space)
    for seed in range(4):
        log_alpha_a, log_alpha_c = _random_logits(space, seed)
        edge_cost = edge_ram_costs(space, log_alpha_c.numpy().argmax(-1), (2, 1, 32, 32, 32))
        chains = _every_chain(space, table, log_alpha_a, edge_cost)
        plain = decode(space, log_alpha_a, log_alpha_c, table)
        everything = decode_within(space, log_alpha_a, log_alpha_c, edge_cost, 0.0, 2 * max(c[1] for c in chains),
                                   table, bins=4000)
        assert everything.key() == plain.key()  # no restriction: DiNTS's own decode
        spent = sorted(c[1] for c in chains)
        low, high = spent[len(spent) // 4], spent[len(spent) // 2]
        found = decode_within(space, log_alpha_a, log_alpha_c, edge_cost, low, high, table, bins=4000)
        unit = high / 4000  # each block's cost is rounded to a bin: at most half a bin off each
        slack = space.num_blocks * unit / 2
        cost = float(edge_cost[found.edges].sum())
        assert low - slack <= cost <= high + slack
        best_inside = min(c[0] for c in chains if low + slack <= c[1] <= high - slack)
        found_chain = next(c for c in chains if np.array_equal(table.patterns[list(c[2])], found.edges))
        assert found_chain[0] <= best_inside + 1e-9
        assert decode_within(space, log_alpha_a, log_alpha_c, edge_cost, 0.0, spent[0] * 0.5, table) is None


def _budget_decode_setting(seed: int):
    """A random DiNTS relaxation of the cpu profile's space: its plain decode, DiNTS's additive estimate of a
    topology (MB) and the constrained decode :func:`budget_decode` searches with."""
    from segnas.strategies.dints.decode import decode_within
    from segnas.strategies.dints.relaxation import edge_ram_costs

    space = TopologySpace.named("dints", num_blocks=8, num_depths=3, channel_mul=0.25)
    table = FeasiblePatterns(space)
    log_alpha_a, log_alpha_c = _random_logits(space, seed)
    size = (2, 1, 40, 56, 40)
    edge_cost = edge_ram_costs(space, log_alpha_c.numpy().argmax(-1), size)

    def estimate(arch) -> float:
        return float(edge_ram_costs(space, arch.ops, size)[arch.edges].sum())

    def between(low: float, high: float):
        return decode_within(space, log_alpha_a, log_alpha_c, edge_cost, low, high, table)

    return decode(space, log_alpha_a, log_alpha_c, table), estimate, between


def test_budget_decode_lands_inside_the_window_when_the_estimate_is_off() -> None:
    """Measured memory is 1.3x DiNTS's estimate plus a fixed part, the calibration believes 1x: the shifted
    decodes find a topology measured inside [97%, 100%] of the budget in a few tries."""
    from segnas.cost.budget import parse_budget
    from segnas.strategies.dints.decode import BUDGET_DECODE_TRIES, budget_decode

    plain, estimate, between = _budget_decode_setting(0)

    def measure(arch) -> float:
        return 1.3e6 * estimate(arch) + 4e6

    budget = parse_budget(f"{0.6 * measure(plain):.0f}B")
    believed = [(x, 1e6 * x) for x in (50.0, 150.0, 300.0)]
    found, trials = budget_decode(between, estimate, measure, believed, budget)
    assert 1 < len(trials) <= BUDGET_DECODE_TRIES  # the first decode, on the believed line, misses
    assert trials[-1]["inside_window"] and 0.97 * budget.value <= measure(found) <= budget.value


def test_budget_decode_returns_the_cheapest_trial_when_nothing_measures_under() -> None:
    """A fixed part of the measured cost larger than the budget (a step ceiling no topology of the space meets):
    no trial lands under it, and the cheapest one measured comes back, over the budget, for the caller to weigh."""
    from segnas.cost.budget import parse_budget
    from segnas.strategies.dints.decode import budget_decode

    plain, estimate, between = _budget_decode_setting(1)

    def measure(arch) -> float:
        return 1e6 * estimate(arch) + 5e9

    budget = parse_budget(f"{0.8e6 * estimate(plain):.0f}B")
    found, trials = budget_decode(between, estimate, measure, [(x, 1e6 * x) for x in (50.0, 150.0, 300.0)], budget)
    assert trials and all(trial["ratio"] > 1 for trial in trials)
    assert measure(found) == min(trial["measured"] for trial in trials)


@pytest.mark.parametrize("stem", ["dints", "light"])
def test_a_dints_search_under_a_budget_writes_both_decodes(tiny_dataset, tmp_path, stem: str) -> None:
    """Both decodes land, in a space with either stem (the light one's costs calibrate the decode as well)."""
    from dataclasses import replace

    from segnas.api import get_strategy, prepare_search
    from segnas.spaces import Architecture

    cls = get_strategy("dints")
    profile = cls.profiles["tiny"].replaced({"space": replace(cls.profiles["tiny"].space, stem=stem)})
    strategy = prepare_search(tiny_dataset, tmp_path / "s", cls(profile), budgets=None, device="cpu",
                              show_progress=False)
    low, high = strategy.budget_range("memory")
    from segnas.cost.budget import parse_budget

    budget = parse_budget(f"{int(low + 0.3 * (high - low))}B")
    arch = strategy.run([budget])[budget.label()]
    meta = arch.metadata
    plain = Architecture.load(tmp_path / "s" / budget.label() / "arch_plain.json")
    assert meta["decode"].startswith(("budget", "plain")) and meta["plain_decode"]["key"] == plain.key()
    assert plain.metadata["decode"] == "plain" and "budget_fit" in plain.metadata
    fit = meta["budget_fit"]
    assert fit["measured"] == meta["cost"]["memory_bytes"]
    if meta["decode"] == "budget":  # inside the window, or (the tiny space has few costs) the nearest under it
        assert fit["inside_window"] or fit["measured"] <= budget.value
        assert [t["key"] for t in meta["decode_trials"]].count(arch.key()) == 1
    assert arch.space.stem == stem == json.loads((tmp_path / "s" / budget.label() / "monai_codes.json").read_text())[
        "stem"]

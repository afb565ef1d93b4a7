"""DiNTS pieces checked against MONAI's reference implementation."""

from __future__ import annotations

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
    for seed in range(5):
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

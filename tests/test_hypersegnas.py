"""HyperSegNAS building blocks: HyperNet masking, annealing schedule, HyperNet removal, per-step sampling."""

from __future__ import annotations

import pytest
import torch

from segnas.spaces import ArchitectureSampler, TopologySpace
from segnas.strategies.hypersegnas import (
    FIXED_WEIGHT,
    HyperSuperNet,
    MetaAssistant,
    SupernetTrainingHook,
    annealed_weights,
    sample_for_step,
)

SPACE = TopologySpace(num_blocks=3, num_depths=2, channel_mul=0.125)


def test_hypernet_outputs_one_weight_per_channel_and_no_gradient_reaches_inactive_ones() -> None:
    torch.manual_seed(0)
    man = MetaAssistant(SPACE, in_channels=1)
    arch = ArchitectureSampler(SPACE, 2).sample()
    weights = man(torch.randn(2, 1, 16, 16, 16), arch)
    assert weights.shape == (2, SPACE.reweightable_channels())
    assert ((weights > 0) & (weights < 1)).all()
    (weights * torch.randn_like(weights)).sum().backward()  # a loss that would reach every channel
    mask = man.active_mask(arch)
    assert mask.sum() > 0 and (~mask).sum() > 0
    last = man.hypernet[-2]  # the final Linear: row c produces channel c's weight
    assert torch.all(last.weight.grad[~mask] == 0) and torch.all(last.bias.grad[~mask] == 0)
    assert torch.all(last.bias.grad[mask] != 0)


def test_hypernet_starts_at_the_fixed_weight_and_its_image_vector_tells_images_apart() -> None:
    torch.manual_seed(0)
    man = MetaAssistant(SPACE, in_channels=1)
    arch = ArchitectureSampler(SPACE, 2).sample()
    grid = torch.linspace(-1, 1, 16)
    blob = torch.exp(-4 * (grid[:, None, None] ** 2 + grid[None, :, None] ** 2 + grid[None, None, :] ** 2))
    noise = torch.randn(16, 16, 16)
    images = torch.stack([blob, noise])[:, None]
    with torch.no_grad():
        assert torch.equal(man(images, arch), torch.full((2, SPACE.reweightable_channels()), FIXED_WEIGHT))
        features = man.encoder(images)
    # A norm right before the pooling would make both vectors nearly equal (relative difference ~0.09).
    assert (features[0] - features[1]).abs().mean() > 0.3 * features.mean(0).abs().mean()


def test_hypernet_masking_follows_the_architecture_layout() -> None:
    man = MetaAssistant(SPACE, in_channels=1)
    arch = ArchitectureSampler(SPACE, 5).sample()
    mask = man.active_mask(arch)
    from segnas.networks.topology_net import TopologyNet

    net = TopologyNet(SPACE, 1, 2)
    expected = torch.zeros_like(mask)
    for block, edge in zip(*arch.edges.nonzero()):
        start = net.reweight_offset(block, edge, arch.ops[block, edge])
        expected[start:start + SPACE.node_channels[SPACE.edge_target(edge)]] = True
    assert torch.equal(mask, expected)


def test_annealing_goes_linearly_to_exactly_one_half() -> None:
    weights = torch.rand(3, 10)
    torch.testing.assert_close(annealed_weights(weights, 0.0), weights)
    torch.testing.assert_close(annealed_weights(weights, 0.25), 0.25 * 0.5 + 0.75 * weights)
    assert torch.equal(annealed_weights(weights, 1.0), torch.full_like(weights, FIXED_WEIGHT))
    model = HyperSuperNet(SPACE, 1, 2, "hypersegnas")
    hook = SupernetTrainingHook(model, train_steps=10, anneal_steps=4, seed=0,
                                validation_architecture=ArchitectureSampler(SPACE, 0).sample())
    assert [hook.anneal_progress(s) for s in range(9, 16)] == [0.0, 0.0, 0.25, 0.5, 0.75, None, None]


def test_removed_hypernet_leaves_the_supernet_output_unchanged() -> None:
    torch.manual_seed(0)
    model = HyperSuperNet(SPACE, 1, 2, "hypersegnas").eval()
    arch = ArchitectureSampler(SPACE, 1).sample()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        with_module = model(x, arch, anneal_progress=None)
        end_of_annealing = model(x, arch, anneal_progress=1.0)
        supernet = model.remove_hypernet()
        assert model.man is None
        alone = supernet(x, arch)
    assert torch.equal(with_module, alone)
    torch.testing.assert_close(end_of_annealing, alone)


@pytest.mark.parametrize("variant", ["vanilla", "hypernet-image", "hypernet-image-arch", "noanneal"])
def test_ablation_variants_train_and_evaluate_as_documented(variant: str) -> None:
    torch.manual_seed(0)
    model = HyperSuperNet(SPACE, 1, 2, variant)
    arch = ArchitectureSampler(SPACE, 3).sample()
    x = torch.randn(2, 1, 16, 16, 16)
    out = model(x, arch, anneal_progress=0.0)
    out.mean().backward()
    man_trained = model.man is not None and any(p.grad is not None for p in model.man.parameters())
    assert man_trained == (variant != "vanilla")
    evaluated_with_hypernet = model.channel_weights(x, arch, None) is not None
    assert evaluated_with_hypernet == (variant in ("hypernet-image", "hypernet-image-arch"))


def test_each_step_samples_the_same_architecture_everywhere() -> None:
    assert sample_for_step(SPACE, 3, 17).key() == sample_for_step(SPACE, 3, 17).key()
    assert len({sample_for_step(SPACE, 3, s).key() for s in range(20)}) > 10

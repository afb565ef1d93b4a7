"""The topology space, the architecture format and its validator, the sampler and the U-Net preset."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from monai.networks.nets import TopologyInstance

from segnas.errors import SegnasInputError
from segnas.spaces import Architecture, ArchitectureSampler, TopologySpace, unet_architecture
from tests.conftest import TINY_SPACE


@pytest.mark.parametrize("depths", [2, 3, 4, 5])
def test_edge_tables_match_monai(depths: int) -> None:
    space = TopologySpace(num_blocks=2, num_depths=depths)
    reference = TopologyInstance(arch_code=None, num_blocks=1, num_depths=depths, channel_mul=0.125)
    assert [space.edge_source(e) for e in range(space.num_edges)] == reference.arch_code2in
    assert [space.edge_target(e) for e in range(space.num_edges)] == reference.arch_code2out
    assert [space.edge_rate(e) for e in range(space.num_edges)] == reference.arch_code2ops


def test_paper_configuration_has_27648_reweightable_channels() -> None:
    space = TopologySpace(num_blocks=12, num_depths=4, channel_mul=0.5)
    assert space.node_channels == [32, 64, 128, 256]
    assert space.reweightable_channels() == 27_648


@pytest.mark.parametrize("space", [TopologySpace(), TINY_SPACE, TopologySpace.named("dints", num_depths=3)])
def test_sampled_architectures_are_feasible_and_reproducible(space: TopologySpace) -> None:
    first = [ArchitectureSampler(space, 7).sample() for _ in range(1)]
    sampler = ArchitectureSampler(space, 7)
    drawn = [sampler.sample() for _ in range(300)]
    for arch in drawn:
        assert arch.problems() == []
        assert arch.edges.any(axis=1).all()  # every block has an edge: all L blocks are used
    assert first[0].key() == drawn[0].key()
    again = ArchitectureSampler(space, 7)
    assert [again.sample().key() for _ in range(300)] == [a.key() for a in drawn]


def test_sampler_is_uniform_over_first_block_patterns_and_operations() -> None:
    space = TopologySpace(num_blocks=2, num_depths=2)  # 4 edges: 15 non-empty patterns
    sampler = ArchitectureSampler(space, 0)
    draws = [sampler.sample() for _ in range(6000)]
    counts = Counter(tuple(a.edges[0]) for a in draws)
    assert len(counts) == 15
    assert max(counts.values()) / min(counts.values()) < 1.35  # expected 400 each
    ops = np.concatenate([a.ops[a.edges] for a in draws])
    assert abs(ops.mean() - 0.5) < 0.02


def test_validator_explains_each_infeasibility() -> None:
    arch = unet_architecture(TopologySpace())
    broken = Architecture(arch.space, arch.edges.copy(), arch.ops.copy())
    broken.edges[5, 9], broken.ops[5, 9] = False, -1  # block 5 stops the 3->3 edge ...
    broken.edges[5, 7], broken.ops[5, 7] = False, -1  # ... and the 3->2 edge: scale 3 becomes a dead end
    problems = "\n".join(broken.problems())
    assert "block 4 activates scale 3 but no edge of block 5 leaves it" in problems

    leaving = Architecture(arch.space, arch.edges.copy(), arch.ops.copy())
    leaving.edges[0, 9], leaving.ops[0, 9] = True, 1  # block 0 may start anywhere, but then block 1 ...
    leaving.edges[11, 9], leaving.ops[11, 9] = True, 1  # block 11 edge from scale 3, inactive after block 10
    assert any("block 11, edge 3->3 (same) leaves scale 3, which block 10 does not activate" in p
               for p in leaving.problems())

    empty = Architecture(arch.space, arch.edges.copy(), arch.ops.copy())
    empty.edges[11], empty.ops[11] = False, -1
    assert "block 11 has no active edge" in "\n".join(empty.problems())

    with pytest.raises(SegnasInputError, match="shape"):
        Architecture(arch.space, arch.edges[:3], arch.ops[:3]).validate()
    bad_op = Architecture(arch.space, arch.edges.copy(), arch.ops.copy())
    bad_op.ops[0, 0] = 4
    assert "operation index 4 is outside 0..1" in "\n".join(bad_op.problems())


def test_json_round_trip_and_version_checks(tmp_path) -> None:
    arch = ArchitectureSampler(TopologySpace.named("dints"), 3).sample()
    arch.metadata["cost"] = {"memory_bytes": 123}
    path = arch.save(tmp_path / "a.json")
    loaded = Architecture.load(path)
    assert loaded.key() == arch.key() and loaded.metadata == arch.metadata and loaded.space == arch.space
    data = json.loads(path.read_text())
    data["version"] = 99
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(SegnasInputError, match="version 99"):
        Architecture.load(tmp_path / "v.json")


def test_stem_is_validated_and_written_only_when_not_the_default() -> None:
    """Files of spaces with DiNTS's stem stay as they were (and so do the hashes of their networks)."""
    assert "stem" not in TopologySpace().to_dict()
    light = TopologySpace(stem="light")
    assert light.to_dict()["stem"] == "light" and TopologySpace.from_dict(light.to_dict()) == light
    with pytest.raises(SegnasInputError, match="stem must be one of"):
        TopologySpace(stem="big")
    with pytest.raises(SegnasInputError, match="needs stem_downsample"):
        TopologySpace(stem="light", stem_downsample=False)


def test_monai_code_round_trip() -> None:
    space = TopologySpace.named("hypersegnas", num_blocks=6, num_depths=3)
    for seed in range(10):
        arch = ArchitectureSampler(space, seed).sample()
        node_a, code_a, code_c = arch.to_monai_codes()
        assert node_a.shape == (7, 3) and code_a.shape == (6, 7) and code_c.shape == (6, 7)
        assert Architecture.from_monai_codes(space, code_a, code_c).key() == arch.key()
        one_hot = np.eye(5)[code_c]
        assert Architecture.from_monai_codes(space, code_a, one_hot).key() == arch.key()


def test_monai_code_with_foreign_operation_is_refused() -> None:
    space = TopologySpace(num_blocks=1, num_depths=2)
    with pytest.raises(SegnasInputError, match="conv_1x3x3"):
        Architecture.from_monai_codes(space, np.ones((1, 4)), np.full((1, 4), 4))


def test_unet_preset_is_a_u_shape() -> None:
    arch = unet_architecture(TopologySpace())
    assert arch.problems() == []
    deepest = [max(arch.active_nodes(c)) for c in range(13)]
    assert deepest == [0, 1, 2, 3, 3, 3, 3, 2, 2, 1, 1, 0, 0]
    assert arch.active_nodes(12) == {0}
    with pytest.raises(SegnasInputError, match="at least"):
        unet_architecture(TopologySpace(num_blocks=4, num_depths=4))

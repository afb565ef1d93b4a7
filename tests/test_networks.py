"""Super-net, derived networks, equality with MONAI's DiNTS, channel re-weighting, baselines."""

from __future__ import annotations

import json

import pytest
import torch

from segnas.errors import SegnasInputError

from segnas.networks.registry import list_networks, network_class, network_from_dict
from segnas.networks.monai_compat import load_into_monai, monai_dints
from segnas.networks.topology_net import TopologyNet, derive
from segnas.spaces import ArchitectureSampler, TopologySpace, unet_architecture


@pytest.mark.parametrize("ops", ["hypersegnas", "dints"])
@pytest.mark.parametrize("downsample", [True, False])
def test_derived_network_equals_monai_dints(ops: str, downsample: bool) -> None:
    torch.manual_seed(0)
    space = TopologySpace.named(ops, num_blocks=4, num_depths=3, channel_mul=0.25, stem_downsample=downsample)
    x = torch.randn(2, 1, 16, 16, 16)
    for seed in range(4):
        arch = ArchitectureSampler(space, seed).sample()
        ours = TopologyNet(space, in_channels=1, out_channels=3, architecture=arch, merge="sum").eval()
        reference = monai_dints(arch, in_channels=1, out_channels=3).eval()
        load_into_monai(ours, reference)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("merge", ["sum", "mean"])
def test_derived_network_matches_supernet_and_holds_only_active_modules(merge: str) -> None:
    torch.manual_seed(0)
    space = TopologySpace.named("dints", num_blocks=4, num_depths=3, channel_mul=0.25)
    supernet = TopologyNet(space, 1, 2, merge=merge).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    for seed in range(3):
        arch = ArchitectureSampler(space, seed).sample()
        derived = derive(supernet, arch).eval()
        with torch.no_grad():
            torch.testing.assert_close(derived(x), supernet(x, arch), rtol=0, atol=0)
        assert set(derived.cells) == {f"{b}_{e}" for b, e in zip(*arch.edges.nonzero())}
        assert all(len(cell.ops) == 1 for cell in derived.cells.values())
        assert sum(p.numel() for p in derived.parameters()) < sum(p.numel() for p in supernet.parameters())


def test_light_stem_keeps_only_image_and_logits_at_full_resolution() -> None:
    """The light stem frees DiNTS's full-resolution features: the same U-Net costs far less training memory, its
    super-net and derived network agree, and MONAI's DiNTS (which has only its own stem) is refused."""
    from segnas.cost.measure import measure_cost
    from segnas.errors import SegnasInputError
    from segnas.networks.registry import TopologyNetworkSpec

    torch.manual_seed(0)
    costs = {}
    for stem in ("dints", "light"):
        space = TopologySpace(num_blocks=4, num_depths=3, channel_mul=0.25, stem=stem)
        arch = unet_architecture(space)
        costs[stem] = measure_cost(TopologyNetworkSpec(1, 2, arch, "mean"), (16, 16, 16), 1, "cpu").memory_bytes
    supernet = TopologyNet(space, 1, 2).eval()
    assert "0" not in supernet.stem_up and isinstance(supernet.stem_finals[-1], torch.nn.ConvTranspose3d)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert supernet(x, arch).shape == (1, 2, 16, 16, 16)
        torch.testing.assert_close(derive(supernet, arch).eval()(x), supernet(x, arch), rtol=0, atol=0)
    full_resolution_features = 4 * space.filter_nums[0] * 16**3  # bytes of one 8-channel map of DiNTS's stems
    assert costs["dints"] - costs["light"] > 5 * full_resolution_features  # DiNTS's stems hold about 7 of them
    with pytest.raises(SegnasInputError, match="only DiNTS's stem"):
        monai_dints(arch, 1, 2)


def test_supernet_runs_only_active_edges() -> None:
    space = TopologySpace(num_blocks=4, num_depths=3, channel_mul=0.25)
    supernet = TopologyNet(space, 1, 2)
    arch = ArchitectureSampler(space, 1).sample()
    called: set[str] = set()
    for key, cell in supernet.cells.items():
        for name, op in cell.ops.items():
            op.register_forward_hook(lambda *_, k=f"{key}/{name}": called.add(k))
    supernet(torch.randn(1, 1, 16, 16, 16), arch)
    expected = {f"{b}_{e}/{space.ops[arch.ops[b, e]]}" for b, e in zip(*arch.edges.nonzero())}
    assert called == expected


def test_mean_merge_differs_from_sum_where_edges_meet() -> None:
    torch.manual_seed(0)
    space = TopologySpace(num_blocks=12, num_depths=4, channel_mul=0.125)
    arch = unet_architecture(space)  # decoder nodes sum a skip and an up-sampled path
    summed = TopologyNet(space, 1, 2, arch, merge="sum").eval()
    averaged = TopologyNet(space, 1, 2, arch, merge="mean").eval()
    averaged.load_state_dict(summed.state_dict())
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(summed(x), averaged(x))


def test_channel_reweighting_changes_the_output_where_kernel_scaling_would_not() -> None:
    torch.manual_seed(0)
    space = TopologySpace(num_blocks=3, num_depths=2, channel_mul=0.25)
    arch = ArchitectureSampler(space, 0).sample()
    net = TopologyNet(space, 1, 2).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    ones = torch.ones(2, space.reweightable_channels())
    weights = torch.rand(2, space.reweightable_channels())
    with torch.no_grad():
        plain = net(x, arch)
        torch.testing.assert_close(net(x, arch, ones), plain)
        reweighted_change = (net(x, arch, weights) - plain).abs().max()
        # Why re-weighting acts after the normalisation: scaling a conv kernel's output channels right
        # before instance normalisation is divided out again (up to the norm's epsilon).
        block, edge = next((b, e) for b, e in zip(*arch.edges.nonzero()) if arch.ops[b, e] == 1)
        conv = net.cells[f"{block}_{edge}"].ops["conv_3x3x3"].conv
        conv.weight.mul_(torch.linspace(0.5, 2.0, conv.weight.shape[0]).view(-1, 1, 1, 1, 1))
        kernel_scaled_change = (net(x, arch) - plain).abs().max()
    assert reweighted_change > 0.05
    assert kernel_scaled_change < reweighted_change / 50


def test_reweight_offsets_tile_the_channel_vector() -> None:
    space = TopologySpace(num_blocks=2, num_depths=3, channel_mul=0.25)
    net = TopologyNet(space, 1, 2)
    spans = sorted((net.reweight_offset(b, e, o), space.node_channels[space.edge_target(e)])
                   for b in range(space.num_blocks) for e in range(space.num_edges) for o in range(space.num_ops))
    position = 0
    for start, width in spans:
        assert start == position
        position += width
    assert position == space.reweightable_channels()


def test_patches_that_are_multiples_of_the_total_stride_run() -> None:
    space = TopologySpace(num_blocks=3, num_depths=3, channel_mul=0.125)
    assert space.total_stride == 8
    net = TopologyNet(space, 1, 2)
    for size in (8, 24, 40):
        arch = ArchitectureSampler(space, size).sample()
        assert net(torch.randn(1, 1, size, 16, 8), arch).shape == (1, 2, size, 16, 8)


def test_baselines_build_from_specs() -> None:
    unet = network_from_dict({"kind": "monai-unet", "in_channels": 1, "out_channels": 3}).build()
    assert sum(p.numel() for p in unet.parameters()) == 4_807_482
    spec = network_from_dict({"kind": "dynunet", "in_channels": 1, "out_channels": 3, "patch_size": [32, 32, 16],
                              "spacing": [1.0, 1.0, 2.0]})
    dyn = spec.build()
    assert dyn(torch.randn(1, 1, 32, 32, 16)).shape == (1, 3, 32, 32, 16)
    assert spec.stride() == [8, 8, 4]  # z is coarser: pooled once less


@pytest.mark.parametrize("stem", ["dints", "light"])
def test_topology_networks_take_per_axis_strides(stem: str) -> None:
    space = TopologySpace(num_blocks=3, num_depths=3, channel_mul=0.125, stem=stem,
                          strides=[[2, 2, 1], [2, 2, 1], [2, 2, 2]])
    assert space.axis_stride == [8, 8, 2] and space.total_stride == 8
    assert TopologySpace.from_dict(space.to_dict()) == space
    # every axis halved at every level is the space of earlier files, spelled the same
    assert TopologySpace(strides=[[2, 2, 2]] * 4).to_dict() == TopologySpace().to_dict()
    with pytest.raises(SegnasInputError, match="strides must give 3 levels"):
        TopologySpace(num_depths=3, strides=[[2, 2, 1]])
    torch.manual_seed(0)
    supernet = TopologyNet(space, 1, 3)
    architecture = ArchitectureSampler(space, 0).sample()
    image = torch.randn(1, 1, 32, 32, 6)  # 6 slices: a multiple of 2, not of 8
    logits = supernet(image, architecture)
    assert logits.shape == (1, 3, 32, 32, 6)
    torch.testing.assert_close(derive(supernet, architecture)(image), logits)


def _thick(levels: int) -> list[list[int]]:
    """Per-level strides that keep the last axis at the first level (thick slices), as a plan's pooling."""
    return [[2, 2, 1]] + [[2, 2, 2]] * (levels - 1)


def _with_thick_slices(spec: dict) -> dict:
    """The document of a network of any registered kind, pooling the last axis once less (or, for DynUNet, whose
    layout follows the spacing, on voxels four times as thick along it)."""
    kind = spec["kind"]
    if kind == "dynunet":
        return {**spec, "spacing": [1.0, 1.0, 4.0], "patch_size": [16, 16, 8]}
    if kind == "monai-unet":
        return {**spec, "strides": _thick(len(spec["strides"]))}
    if "host" in spec:  # IAC's search net: a UNet host
        return {**spec, "host": _with_thick_slices(spec["host"])}
    if "architecture" in spec:
        arch = spec["architecture"]
        host = arch.get("host")
        if host is None:  # a topology architecture: its space
            space = {k: v for k, v in arch["space"].items() if k != "type"}
            arch["space"]["strides"] = _thick(TopologySpace.from_dict(space).levels)
        elif host["kind"] == "monai-unet":
            arch["host"] = _with_thick_slices(host)
        else:  # a U-Net of cells or a cell path: its skeleton
            host["strides"] = _thick(host["levels"] - 1 if "levels" in host else len(host["widths"]))
        return spec
    if spec["space"].get("type") == "cells":  # the cell strategies' search nets
        return {**spec, "strides": _thick(spec["levels"] - 1 if "levels" in spec else len(spec["widths"]))}
    return {**spec, "space": {**spec["space"], "strides": _thick(TopologySpace.from_dict(spec["space"]).levels)}}


@pytest.mark.parametrize("kind", [kind for kind in list_networks()
                                  if network_class(kind).__module__.startswith("segnas.")])  # (not plugins')
def test_every_network_kind_takes_per_axis_strides(kind: str) -> None:
    """Each registered kind, on thick slices: the thick axis is pooled fewer times, the spec survives JSON, the
    network maps a patch of its strides to logits of the same shape; every axis halved is spelled as before."""
    example = json.dumps(network_class(kind).example(1, 3).to_dict())
    assert "[2, 2, 1]" not in example
    spec = network_from_dict(_with_thick_slices(json.loads(example)))
    stride = spec.stride()
    assert stride[2] < stride[0] == stride[1], stride
    assert network_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    torch.manual_seed(0)
    image = torch.randn(1, 1, 2 * stride[0], 2 * stride[1], 2 * stride[2])
    logits = spec.build()(image, **spec.forward_kwargs())
    assert logits.shape == (1, 3, *image.shape[2:])

"""Bridges to MONAI's DiNTS: build the reference network for an architecture and move weights across.

segnas keys ``stem_down.D.I``, ``cells.B_E.preprocess...``, ``cells.B_E.ops.NAME...``; MONAI keys
``stem_down.D.mod.I``, ``dints_space.cell_tree.(B, E).preprocess...``, ``...op.ops.0...`` (MONAI's
``MixedOp`` keeps only the chosen operation, at position 0).
"""

from __future__ import annotations

import re

import torch
from monai.networks.nets import DiNTS, TopologyInstance

from segnas.networks.topology_net import TopologyNet
from segnas.spaces.architecture import Architecture

_CELL_KEY = re.compile(r"^cells\.(\d+)_(\d+)\.(preprocess|ops\.[a-z0-9_]+)(.*)$")
_STEM_KEY = re.compile(r"^(stem_down|stem_up)\.(\d+)\.(.*)$")


def monai_key(segnas_key: str) -> str:
    """The MONAI ``DiNTS`` state-dict key of a segnas :class:`TopologyNet` key."""
    cell = _CELL_KEY.match(segnas_key)
    if cell:
        block, edge, part, rest = cell.groups()
        part = "preprocess" if part == "preprocess" else "op.ops.0"
        return f"dints_space.cell_tree.({block}, {edge}).{part}{rest}"
    stem = _STEM_KEY.match(segnas_key)
    if stem:
        return f"{stem.group(1)}.{stem.group(2)}.mod.{stem.group(3)}"
    return segnas_key


def monai_dints(architecture: Architecture, in_channels: int, out_channels: int) -> DiNTS:
    """MONAI's ``DiNTS(TopologyInstance(...))`` for ``architecture`` (always sums at merge points)."""
    space = architecture.space
    node_a, arch_code_a, arch_code_c = architecture.to_monai_codes()
    instance = TopologyInstance(
        arch_code=[arch_code_a, arch_code_c], channel_mul=space.channel_mul * space.base_channels / 32,
        num_blocks=space.num_blocks, num_depths=space.num_depths, use_downsample=space.stem_downsample,
    )
    return DiNTS(instance, in_channels=in_channels, num_classes=out_channels,
                 use_downsample=space.stem_downsample, node_a=torch.from_numpy(node_a))


def load_into_monai(net: TopologyNet, reference: DiNTS) -> None:
    """Copy a derived segnas network's weights into MONAI's network of the same architecture."""
    state = {monai_key(key): value for key, value in net.state_dict().items()}
    missing = set(state) - set(reference.state_dict())
    if missing:
        raise KeyError(f"MONAI's network has no parameters for {sorted(missing)[:5]}")
    reference.load_state_dict(state, strict=False)

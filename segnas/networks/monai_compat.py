"""Bridges to MONAI's DiNTS: build the reference network for an architecture and move weights across.

segnas keys ``stem_down.D.I``, ``cells.B_E.preprocess...``, ``cells.B_E.ops.NAME...``; MONAI keys
``stem_down.D.mod.I``, ``dints_space.cell_tree.(B, E).preprocess...``, ``...op.ops.K...``. In a MONAI
``TopologyInstance`` the ``MixedOp`` keeps only the chosen operation, at position K = 0; in a
``TopologySearch`` it keeps all five of ``Cell.OPS3D``, and K is the operation's position there.
"""

from __future__ import annotations

import re

import torch
from monai.networks.nets import DiNTS, TopologyInstance

from segnas.errors import SegnasInputError
from segnas.networks.topology_net import TopologyNet
from segnas.spaces.architecture import Architecture
from segnas.spaces.topology import DINTS_OPS

_CELL_KEY = re.compile(r"^cells\.(\d+)_(\d+)\.(preprocess|ops\.[a-z0-9_]+)(.*)$")
_STEM_KEY = re.compile(r"^(stem_down|stem_up)\.(\d+)\.(.*)$")


def monai_key(segnas_key: str, search: bool = False) -> str:
    """The MONAI ``DiNTS`` state-dict key of a segnas :class:`TopologyNet` key.

    ``search``: the key of MONAI's ``TopologySearch`` (all operations) instead of ``TopologyInstance``.
    """
    cell = _CELL_KEY.match(segnas_key)
    if cell:
        block, edge, part, rest = cell.groups()
        if part != "preprocess":
            position = DINTS_OPS.index(part[len("ops."):]) if search else 0
            part = f"op.ops.{position}"
        return f"dints_space.cell_tree.({block}, {edge}).{part}{rest}"
    stem = _STEM_KEY.match(segnas_key)
    if stem:
        return f"{stem.group(1)}.{stem.group(2)}.mod.{stem.group(3)}"
    return segnas_key


def monai_dints(architecture: Architecture, in_channels: int, out_channels: int) -> DiNTS:
    """MONAI's ``DiNTS(TopologyInstance(...))`` for ``architecture`` (always sums at merge points)."""
    space = architecture.space
    if space.stem != "dints":
        raise SegnasInputError(f"MONAI's DiNTS has only DiNTS's stem; this space's stem is {space.stem!r}")
    node_a, arch_code_a, arch_code_c = architecture.to_monai_codes()
    instance = TopologyInstance(
        arch_code=[arch_code_a, arch_code_c], channel_mul=space.channel_mul * space.base_channels / 32,
        num_blocks=space.num_blocks, num_depths=space.num_depths, use_downsample=space.stem_downsample,
    )
    return DiNTS(instance, in_channels=in_channels, num_classes=out_channels,
                 use_downsample=space.stem_downsample, node_a=torch.from_numpy(node_a))


def load_into_monai(net: TopologyNet, reference: DiNTS) -> None:
    """Copy a segnas network's weights into MONAI's network: a derived network into a ``TopologyInstance``
    DiNTS of the same architecture, a super-net into a ``TopologySearch`` DiNTS of the same space."""
    search = net.architecture is None
    state = {monai_key(key, search): value for key, value in net.state_dict().items()}
    missing = set(state) - set(reference.state_dict())
    if missing:
        raise KeyError(f"MONAI's network has no parameters for {sorted(missing)[:5]}")
    reference.load_state_dict(state, strict=False)

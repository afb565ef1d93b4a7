"""Build any segnas network from a JSON-able *network spec*, the one form run folders store.

Specs::

    {"kind": "topology", "architecture": {...architecture JSON...}, "merge": "mean",
     "in_channels": 1, "out_channels": 3, "fixed_channel_weight": null}
    {"kind": "monai-unet", "in_channels": 1, "out_channels": 3}     # MONAI UNet, 16..256 channels, 2 res units
    {"kind": "dynunet",   "in_channels": 1, "out_channels": 3, "patch_size": [...], "spacing": [...]}

The registry maps ``--net`` names to builders, in the spirit of timm's model registry.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch.nn as nn
from monai.networks.nets import DynUNet, UNet

from segnas.errors import SegnasInputError
from segnas.networks.topology_net import TopologyNet
from segnas.spaces.architecture import Architecture
from segnas.spaces.topology import TopologySpace


def _topology(spec: dict[str, Any]) -> nn.Module:
    arch = Architecture.from_dict(spec["architecture"], source="network spec")
    return TopologyNet(arch.space, spec["in_channels"], spec["out_channels"], arch, spec.get("merge", "mean"),
                       spec.get("fixed_channel_weight"))


def _monai_unet(spec: dict[str, Any]) -> nn.Module:
    """MONAI's UNet as the foundation benchmark uses it: channels 16..256, strides 2, 2 residual units (4.8M)."""
    return UNet(spatial_dims=3, in_channels=spec["in_channels"], out_channels=spec["out_channels"],
                channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm="INSTANCE")


def dynunet_layout(patch_size: list[int], spacing: list[float], max_levels: int = 5) -> tuple[list, list]:
    """nnU-Net's kernel sizes and strides: halve an axis while it stays >= 8 voxels and not 2x coarser than the finest."""
    sizes, spacings = list(patch_size), list(spacing)
    kernels, strides = [], [[1, 1, 1]]
    while len(strides) < max_levels:
        ratio = [s / min(spacings) for s in spacings]
        stride = [2 if r <= 2 and size >= 8 else 1 for r, size in zip(ratio, sizes)]
        if all(s == 1 for s in stride):
            break
        kernels.append([3 if r <= 2 else 1 for r in ratio])
        strides.append(stride)
        sizes = [size // s for size, s in zip(sizes, stride)]
        spacings = [sp * s for sp, s in zip(spacings, stride)]
    kernels.append([3, 3, 3])
    return kernels, strides


def _dynunet(spec: dict[str, Any]) -> nn.Module:
    kernels, strides = dynunet_layout(spec["patch_size"], spec["spacing"])
    return DynUNet(spatial_dims=3, in_channels=spec["in_channels"], out_channels=spec["out_channels"],
                   kernel_size=kernels, strides=strides, upsample_kernel_size=strides[1:], norm_name="instance",
                   res_block=True)


NETWORKS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "topology": _topology, "monai-unet": _monai_unet, "dynunet": _dynunet,
}


def build_network(spec: dict[str, Any]) -> nn.Module:
    kind = spec.get("kind")
    if kind not in NETWORKS:
        raise SegnasInputError(f"unknown network kind {kind!r}; known: {sorted(NETWORKS)}")
    return NETWORKS[kind](spec)


def network_stride(spec: dict[str, Any]) -> list[int]:
    """Per axis, the multiple every patch side must be for this network."""
    if spec["kind"] == "topology":
        return [Architecture.from_dict(spec["architecture"]).space.total_stride] * 3
    if "space" in spec:  # super-nets of strategies record their space
        return [TopologySpace.from_dict(spec["space"]).total_stride] * 3
    if spec["kind"] == "monai-unet":
        return [16] * 3
    _, strides = dynunet_layout(spec["patch_size"], spec["spacing"])
    return [int(np.prod([s[axis] for s in strides])) for axis in range(3)]

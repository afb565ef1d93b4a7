"""HyperSegNAS's Meta-Assistant Network (MAN, paper section 3.2 and Eq. 4-5).

MAN = image encoder M + HyperNet H. For an image batch ``I`` and a sampled architecture ``a`` it produces
one weight in (0, 1) per re-weightable channel of the super-net (c_tot of them, see
:meth:`segnas.spaces.topology.TopologySpace.reweightable_channels`):

    w = H(l_arch ⊕ l_image),  l_image = M(I) ∈ R^256,  l_arch = flatten(one_hot(a)) ∈ {0,1}^{L·E·O}

Annealing (Eq. 5) blends it towards the constant ``w_fixed = 0.5``:

    w_λ = λ · 0.5 + (1 - λ) · w,   λ: 0 -> 1 linearly

The part of ``w`` that belongs to inactive (block, edge, operation) triples is masked off from
back-propagation (the paper's words; the super-net does not read those channels anyway, the mask makes
the guarantee explicit and independent of how the super-net uses the vector).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from segnas.spaces.architecture import Architecture
from segnas.spaces.topology import TopologySpace

FIXED_WEIGHT = 0.5
INPUTS = ("image", "image+arch")


class ImageEncoder(nn.Module):
    """Six 3D convolutions with ReLU, instance norm after the first five, pooled to a 256-vector.
    ``(B, C, H, W, D) -> (B, 256)``.

    Strides 2 on every second layer keep the cost small next to the super-net (the paper does not give
    strides or widths; it fixes the depth, the norm, the activation and the output size). The sixth layer
    has no instance norm on purpose: normalising a channel over space and then averaging it over space
    leaves (nearly) the same number for every image, so the image vector would carry no information.
    """

    def __init__(self, in_channels: int, width: int = 16, out_features: int = 256):
        super().__init__()
        widths = [width, width, 2 * width, 2 * width, 4 * width, out_features]
        layers: list[nn.Module] = []
        previous = in_channels
        for index, channels in enumerate(widths):
            last = index == len(widths) - 1
            layers.append(nn.Conv3d(previous, channels, 3, stride=2 if index % 2 else 1, padding=1, bias=last))
            if not last:
                layers.append(nn.InstanceNorm3d(channels, affine=True))
            layers.append(nn.ReLU(inplace=True))
            previous = channels
        self.layers = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(image).mean(dim=(2, 3, 4))


class MetaAssistant(nn.Module):
    """Image encoder + HyperNet of five fully connected layers (ReLU between, sigmoid at the end).

    Args:
        space: the super-net's space (gives L·E·O and c_tot).
        in_channels: image channels.
        inputs: ``"image+arch"`` (full HyperSegNAS) or ``"image"`` (ablation: the HyperNet sees the image only).
        hidden: width of the four hidden layers.
    """

    def __init__(self, space: TopologySpace, in_channels: int, inputs: str = "image+arch", hidden: int = 256):
        super().__init__()
        if inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}")
        self.space, self.inputs = space, inputs
        self.encoder = ImageEncoder(in_channels)
        arch_features = space.num_blocks * space.num_edges * space.num_ops if inputs == "image+arch" else 0
        sizes = [256 + arch_features, hidden, hidden, hidden, hidden, space.reweightable_channels()]
        layers: list[nn.Module] = []
        for index in range(5):
            layers.append(nn.Linear(sizes[index], sizes[index + 1]))
            layers.append(nn.ReLU(inplace=True) if index < 4 else nn.Sigmoid())
        self.hypernet = nn.Sequential(*layers)
        # The last layer starts at zero, so every weight starts at sigmoid(0) = 0.5 = w_fixed: training begins
        # from the network that annealing returns to, and the HyperNet learns departures from it. (With
        # PyTorch's default initialisation and the super-net's learning rate, the sigmoid saturated to a
        # fixed 0/1 channel mask, the same for every image and architecture, within the CPU profile's steps.)
        last = layers[-2]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self._mask_cache: tuple[str, torch.Tensor] | None = None

    def active_mask(self, architecture: Architecture) -> torch.Tensor:
        """``(c_tot,)`` bool: the channels of ``architecture``'s active (block, edge, operation) triples."""
        key = architecture.key()
        if self._mask_cache is None or self._mask_cache[0] != key:
            space = self.space
            per_channel = []
            for block in range(space.num_blocks):
                for edge in range(space.num_edges):
                    width = space.node_channels[space.edge_target(edge)]
                    for op in range(space.num_ops):
                        on = bool(architecture.edges[block, edge]) and architecture.ops[block, edge] == op
                        per_channel.append(torch.full((width,), bool(on), dtype=torch.bool))
            self._mask_cache = (key, torch.cat(per_channel))
        return self._mask_cache[1]

    def forward(self, image: torch.Tensor, architecture: Architecture) -> torch.Tensor:
        """Channel weights ``(B, c_tot)`` in (0, 1); no gradient flows through inactive channels."""
        features = self.encoder(image)
        if self.inputs == "image+arch":
            code = torch.from_numpy(architecture.one_hot()).flatten().to(features)
            features = torch.cat([features, code.expand(features.shape[0], -1)], dim=1)
        weights = self.hypernet(features)
        mask = self.active_mask(architecture).to(weights.device)
        return torch.where(mask, weights, weights.detach())


def annealed_weights(weights: torch.Tensor, progress: float) -> torch.Tensor:
    """Eq. 5: ``λ · 0.5 + (1 - λ) · w`` with ``λ = progress`` clipped to [0, 1]; exactly 0.5 at the end."""
    lam = min(max(progress, 0.0), 1.0)
    if lam == 1.0:
        return torch.full_like(weights, FIXED_WEIGHT)
    return lam * FIXED_WEIGHT + (1.0 - lam) * weights

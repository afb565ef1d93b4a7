"""The multi-scale, multi-path topology search space of DiNTS and HyperSegNAS (HyperSegNAS section 3.1).

A network of this space is a grid of feature *nodes*: ``num_depths`` scales (rows) at each of
``num_blocks + 1`` columns (column 0 holds the stem's multi-resolution inputs). Block ``b`` connects
column ``b`` to column ``b + 1`` through up to ``E = 3 * num_depths - 2`` *edges*: from every scale to
the scale above (up-sampling), the same scale, and the scale below (down-sampling). Each edge is a
resolution change followed by one operation from the space's operation set.

Edge order follows MONAI's ``TopologyConstruction`` (``arch_code2in`` / ``arch_code2out`` /
``arch_code2ops``), so that architectures convert to and from MONAI's codes by position.
For ``num_depths = 4`` the ten edges are::

    edge : 0  1  2  3  4  5  6  7  8  9
    from : 0  1  0  1  2  1  2  3  2  3
    to   : 0  0  1  1  1  2  2  2  3  3
    rate : 0 +1 -1  0 +1 -1  0 +1 -1  0      (+1 up-sample x2, -1 down-sample x2, 0 same scale)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from segnas.data.plan import LevelStrides, check_level_strides, level_scale, strides_to_json
from segnas.errors import SegnasInputError

#: Operations of HyperSegNAS (paper section 3.1): skip connection and 3x3x3 convolution.
HYPERSEGNAS_OPS: tuple[str, ...] = ("skip_connect", "conv_3x3x3")
#: Operations of DiNTS: HyperSegNAS's two plus three pseudo-3D convolutions. Same order as MONAI's ``Cell.OPS3D``.
DINTS_OPS: tuple[str, ...] = ("skip_connect", "conv_3x3x3", "conv_3x3x1", "conv_3x1x3", "conv_1x3x3")
OP_SETS: dict[str, tuple[str, ...]] = {"hypersegnas": HYPERSEGNAS_OPS, "dints": DINTS_OPS}
#: The stems around the grid: ``dints`` is MONAI DiNTS's (8-channel convolutions at full resolution on the way in
#: and out); ``light`` keeps only the image and the logits at full resolution (a strided convolution in, a
#: transposed one out, as MONAI's UNet does), which frees the memory those full-resolution features cost.
STEMS: tuple[str, ...] = ("dints", "light")


@dataclass(frozen=True)
class TopologySpace:
    """Shape of the topology search space.

    Args:
        num_blocks: L, blocks (layers) between the stem and the output head.
        num_depths: D, number of scales in the space.
        base_channels: channels of the stem's full-resolution features before ``channel_mul``;
            scale ``d`` of the grid has ``base_channels * 2 ** (d + stem_downsample) * channel_mul`` channels
            (MONAI's ``filter_nums``).
        channel_mul: multiplier of every channel count (MONAI's ``channel_mul``).
        stem_downsample: the stem halves the input before the grid (MONAI's ``use_downsample``).
        ops: the operation set; every op keeps the channel count of its edge's output scale.
        stem: the stems around the grid, one of :data:`STEMS` (``dints``: MONAI's; ``light`` needs
            ``stem_downsample``).
        strides: per resolution level (the ``levels`` halvings from the input to the coarsest scale, the stem's
            first), the factor of each axis: ``(2, 2, 1)`` keeps thick slices, as a plan's ``pool_strides`` say;
            ``None``: 2 along every axis at every level (MONAI DiNTS's grid, and every file written before).
    """

    num_blocks: int = 12
    num_depths: int = 4
    base_channels: int = 32
    channel_mul: float = 0.5
    stem_downsample: bool = True
    ops: tuple[str, ...] = HYPERSEGNAS_OPS
    stem: str = "dints"
    strides: LevelStrides | None = None
    _edges: tuple[tuple[int, int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if self.num_blocks < 1:
            problems.append(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.num_depths < 2:
            problems.append(f"num_depths must be >= 2, got {self.num_depths}")
        if self.base_channels < 1 or self.channel_mul <= 0:
            problems.append("base_channels and channel_mul must be positive")
        unknown = [op for op in self.ops if op not in DINTS_OPS]
        if unknown or not self.ops or len(set(self.ops)) != len(self.ops):
            problems.append(f"ops must be distinct names from {list(DINTS_OPS)}, got {list(self.ops)}")
        if self.stem not in STEMS:
            problems.append(f"stem must be one of {list(STEMS)}, got {self.stem!r}")
        elif self.stem == "light" and not self.stem_downsample:
            problems.append("the light stem halves the input (its strided convolution): it needs stem_downsample")
        try:
            object.__setattr__(self, "strides", check_level_strides(self.strides, self.levels))
        except ValueError as err:
            problems.append(str(err))
        if problems:
            raise SegnasInputError("invalid topology space: " + "; ".join(problems))
        object.__setattr__(self, "ops", tuple(self.ops))
        edges = []
        for i in range(3 * self.num_depths - 2):
            source = (i + 1) // 3 - 1 + (i + 1) % 3
            target = (i + 1) // 3
            edges.append((source, target, source - target))
        object.__setattr__(self, "_edges", tuple(edges))
        if min(self.node_channels) < 2:
            raise SegnasInputError(f"invalid topology space: channel counts {self.node_channels} are too small")

    # ----- edges -------------------------------------------------------------------------------------
    @property
    def num_edges(self) -> int:
        """E = 3 D - 2 edges per block."""
        return len(self._edges)

    @property
    def num_ops(self) -> int:
        return len(self.ops)

    def edge_source(self, edge: int) -> int:
        """Scale the edge leaves from."""
        return self._edges[edge][0]

    def edge_target(self, edge: int) -> int:
        """Scale the edge arrives at."""
        return self._edges[edge][1]

    def edge_rate(self, edge: int) -> int:
        """+1 up-samples x2, -1 down-samples x2, 0 keeps the scale (MONAI's ``arch_code2ops``)."""
        return self._edges[edge][2]

    def edge_name(self, edge: int) -> str:
        kind = {1: "up", 0: "same", -1: "down"}[self.edge_rate(edge)]
        return f"{self.edge_source(edge)}->{self.edge_target(edge)} ({kind})"

    # ----- channels and strides ----------------------------------------------------------------------
    @property
    def filter_nums(self) -> list[int]:
        """Channel counts at resolutions 1, 1/2, ..., 1/2**D of the input (MONAI's ``filter_nums``)."""
        return [int(self.base_channels * 2**i * self.channel_mul) for i in range(self.num_depths + 1)]

    @property
    def node_channels(self) -> list[int]:
        """Channels of the grid's nodes at scale 0..D-1."""
        offset = int(self.stem_downsample)
        return self.filter_nums[offset : offset + self.num_depths]

    @property
    def levels(self) -> int:
        """Halvings from the input to the coarsest grid scale: the stem's (if it down-samples), then the grid's."""
        return self.num_depths - 1 + int(self.stem_downsample)

    @property
    def level_strides(self) -> list[tuple[int, int, int]]:
        """Per level, the factor of each axis (see ``strides``)."""
        return list(self.strides) if self.strides is not None else [(2, 2, 2)] * self.levels

    def scale(self, level: int) -> tuple[int, int, int]:
        """How much resolution ``level`` (0: the input) divides each axis by."""
        return level_scale(self.strides, level)

    @property
    def axis_stride(self) -> list[int]:
        """Each patch side must be a multiple of its axis's entry: the coarsest grid scale divides the input by
        it, and the factorised down-sampling of the scales above it needs even sizes."""
        return list(self.scale(self.levels))

    @property
    def total_stride(self) -> int:
        """The finest axes' entry of :attr:`axis_stride` (every axis's, without ``strides``)."""
        return max(self.axis_stride)

    def reweightable_channels(self) -> int:
        """c_tot: output channels of every (block, edge, operation), the channels a HyperNet re-weights.

        The paper's configuration (L=12, D=4, grid channels 32..256, O=2) gives 27,648 = 12 x 1152 x 2.
        """
        per_block = sum(self.node_channels[self.edge_target(e)] for e in range(self.num_edges))
        return self.num_blocks * per_block * self.num_ops

    # ----- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_edges", None)
        data["ops"] = list(self.ops)
        if self.stem == "dints":  # written only when it is not the default: earlier files and their hashes stay
            data.pop("stem")
        if self.strides is None:
            data.pop("strides")
        else:
            data["strides"] = strides_to_json(self.strides)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> "TopologySpace":
        known = {"num_blocks", "num_depths", "base_channels", "channel_mul", "stem_downsample", "ops", "stem",
                 "strides"}
        unknown = set(data) - known
        if unknown:
            raise SegnasInputError(f"unknown fields in the search space: {sorted(unknown)}", source)
        kwargs = dict(data)
        if "ops" in kwargs:
            kwargs["ops"] = tuple(kwargs["ops"])
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise SegnasInputError(f"invalid search space: {err}", source) from err

    @classmethod
    def named(cls, ops: str = "hypersegnas", **kwargs: Any) -> "TopologySpace":
        """A space with a named operation set (``hypersegnas`` or ``dints``)."""
        if ops not in OP_SETS:
            raise SegnasInputError(f"unknown operation set {ops!r}; choose one of {sorted(OP_SETS)}")
        return cls(ops=OP_SETS[ops], **kwargs)

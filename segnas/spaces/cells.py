"""The cell search space (DARTS, PC-DARTS) shared by IAC-LTH, Scalable NAS and Thrifty NAS.

A *cell* is a small directed acyclic graph. It has ``inputs`` input nodes and ``nodes`` intermediate nodes;
intermediate node ``i`` may take an edge from every input and every earlier intermediate node, so it has
``inputs + i`` candidate edges. Each edge applies one operation of the space's operation set. The cell's
output combines the intermediate nodes (``concat``: concatenated, then projected; ``sum``: summed).

Edge numbering (the order of the architecture parameters): node 0's candidate edges first (from input 0,
input 1, ...), then node 1's, and so on. With 2 inputs and 3 nodes the 9 edges are::

    edge   : 0  1 | 2  3  4 | 5  6  7  8
    node   : 0  0 | 1  1  1 | 2  2  2  2
    source : 0  1 | 0  1  2 | 0  1  2  3     (sources 0, 1 = the inputs; 2 = node 0, 3 = node 1)

A *genotype* is the discrete cell: per intermediate node, the ``keep`` edges it keeps, each as
``(source, operation)`` (DARTS keeps 2 per node, never the ``zero`` operation). The search relaxes it: a
softmax over operations per edge (DARTS), optionally with an edge weight per node (PC-DARTS's edge
normalisation); :func:`discretize` turns those weights back into a genotype.

A :class:`CellArchitecture` places one genotype per named cell into a *host* network; the JSON document is
the architecture format's ``cells`` space kind (see :mod:`segnas.spaces.architecture`)::

    {"format": "segnas.architecture", "version": 2,
     "space": {"type": "cells", "ops": [...], "nodes": 3, "inputs": 2, "keep": 2, "output": "concat",
               "placement": "skip-connections"},
     "host": {"kind": "monai-unet", ...},             # the network the cells are implanted into
     "cells": {"skip": [[[0, "conv_3x3x3"], [1, "skip_connect"]], ...]},   # one genotype per cell name
     "metadata": {...}}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segnas.errors import SegnasInputError
from segnas.spaces.document import ARCHITECTURE_FORMAT, json_default

#: The 3D candidate operations. DARTS's eight, carried to 3D: the zero operation (lets the search drop an
#: edge), identity, 3x3x3 max and average pooling (stride 1), 3x3x3 and 5x5x5 separable convolutions
#: (depthwise then pointwise, twice, as DARTS), a dilated 3x3x3 separable convolution (dilation 2: a 5x5x5
#: receptive field at 3x3x3's cost) and, beside DARTS's, a plain 3x3x3 convolution: the operation 3D
#: segmentation networks are built from (nnU-Net, MONAI's UNet), which separable convolutions approximate.
CELL_OPS: tuple[str, ...] = ("zero", "skip_connect", "max_pool_3x3x3", "avg_pool_3x3x3", "conv_3x3x3",
                             "sep_conv_3x3x3", "sep_conv_5x5x5", "dil_conv_3x3x3")
OUTPUTS = ("concat", "sum")
#: Where a host network receives its cells: ``skip-connections`` = one cell per encoder-decoder skip (IAC);
#: ``encoder-decoder`` = every layer of a U-Net is a cell, of one of :data:`UNET_CELL_TYPES` (Scalable NAS);
#: ``cell-path`` = one cell repeated along a path over resolutions (Thrifty NAS).
PLACEMENTS = ("skip-connections", "encoder-decoder", "cell-path")
#: The cell types of a U-Net built of cells (Kim et al. 2019): encoder-normal, reduction (its edges from the
#: inputs stride 2), expansion (its lower-resolution input up-sampled) and decoder-normal cells.
UNET_CELL_TYPES = ("encoder", "reduction", "expansion", "decoder")

Genotype = tuple[tuple[tuple[int, str], ...], ...]


@dataclass(frozen=True)
class CellSpace:
    """Shape of a cell and its operation set (see the module docstring).

    Args:
        ops: candidate operations, names from :data:`CELL_OPS`.
        nodes: intermediate nodes per cell.
        inputs: input nodes per cell (IAC: the encoder's skip feature and the decoder's up-sampled feature;
            a U-Net of cells: the two previous layers, DARTS's ``c_{k-1}`` and ``c_{k-2}``).
        keep: edges each intermediate node keeps when discretised (DARTS: 2).
        output: how the intermediate nodes make the output: ``concat`` or ``sum``.
        placement: where the cells go in the host network.
    """

    ops: tuple[str, ...] = CELL_OPS
    nodes: int = 3
    inputs: int = 2
    keep: int = 2
    output: str = "concat"
    placement: str = "skip-connections"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        problems = []
        unknown = [op for op in self.ops if op not in CELL_OPS]
        if unknown or len(set(self.ops)) != len(self.ops) or not [op for op in self.ops if op != "zero"]:
            problems.append(f"ops must be distinct names from {list(CELL_OPS)}, at least one not 'zero'; "
                            f"got {list(self.ops)}")
        if self.nodes < 1 or self.inputs < 1 or self.keep < 1:
            problems.append(f"nodes, inputs and keep must be >= 1, got {self.nodes}, {self.inputs}, {self.keep}")
        if self.output not in OUTPUTS:
            problems.append(f"output must be one of {list(OUTPUTS)}, got {self.output!r}")
        if self.placement not in PLACEMENTS:
            problems.append(f"placement must be one of {list(PLACEMENTS)}, got {self.placement!r}")
        if problems:
            raise SegnasInputError("invalid cell space: " + "; ".join(problems))

    # ----- edges -------------------------------------------------------------------------------------------
    @property
    def num_ops(self) -> int:
        return len(self.ops)

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """``(node, source)`` of every candidate edge, in the order of the architecture parameters."""
        return tuple((node, source) for node in range(self.nodes) for source in range(self.inputs + node))

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    def node_edges(self, node: int) -> range:
        """Indices of node ``node``'s candidate edges."""
        start = sum(self.inputs + i for i in range(node))
        return range(start, start + self.inputs + node)

    def source_name(self, source: int) -> str:
        return f"in{source}" if source < self.inputs else f"n{source - self.inputs}"

    def edge_name(self, edge: int) -> str:
        node, source = self.edges[edge]
        return f"{self.source_name(source)}->n{node}"

    # ----- JSON --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"type": "cells", "ops": list(self.ops), "nodes": self.nodes, "inputs": self.inputs,
                "keep": self.keep, "output": self.output, "placement": self.placement}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> "CellSpace":
        data = {k: v for k, v in data.items() if k != "type"}
        known = {"ops", "nodes", "inputs", "keep", "output", "placement"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SegnasInputError(f"the cell space has no setting(s) {unknown}", source)
        try:
            return cls(**data)
        except (TypeError, SegnasInputError) as err:
            raise SegnasInputError(str(err), source) from err


# ----- genotypes --------------------------------------------------------------------------------------------
def genotype_problems(space: CellSpace, genotype: Any) -> list[str]:
    """Every reason ``genotype`` is not a discrete cell of ``space``, in words; empty when it is one."""
    if not isinstance(genotype, (list, tuple)) or len(genotype) != space.nodes:
        return [f"a cell needs one entry per intermediate node ({space.nodes}), got {genotype!r:.80}"]
    found = []
    for node, kept in enumerate(genotype):
        allowed = space.inputs + node
        if not isinstance(kept, (list, tuple)) or not kept or len(kept) > min(space.keep, allowed):
            found.append(f"node {node} must keep 1 to {min(space.keep, allowed)} edges, got {kept!r:.80}")
            continue
        sources = []
        for entry in kept:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], int)
                    and isinstance(entry[1], str)):
                found.append(f"node {node}: an edge is [source, operation], got {entry!r:.80}")
                continue
            source, op = entry
            sources.append(source)
            if not 0 <= source < allowed:
                found.append(f"node {node}: source {source} is outside 0..{allowed - 1} (inputs, then earlier nodes)")
            if op not in space.ops or op == "zero":
                found.append(f"node {node}: operation {op!r} is not one of the space's {list(space.ops)} "
                             "(or is 'zero', which no kept edge may be)")
        if len(set(sources)) != len(sources):
            found.append(f"node {node} takes the same source twice ({sources})")
    return found


def as_genotype(data: Any) -> Genotype:
    """A JSON genotype as nested tuples (validate with :func:`genotype_problems` first)."""
    return tuple(tuple((int(source), str(op)) for source, op in kept) for kept in data)


def discretize(space: CellSpace, op_weights: np.ndarray, edge_weights: np.ndarray | None = None) -> Genotype:
    """The genotype of relaxed weights (DARTS's rule, with PC-DARTS's edge weights).

    Args:
        op_weights: ``(E, O)`` operation probabilities per edge (softmax of the logits; pruned ones 0).
        edge_weights: ``(E,)`` per-edge weights (PC-DARTS's edge normalisation, a softmax over each node's
            edges), or ``None`` (plain DARTS).

    Each edge's strength is its strongest non-``zero`` operation's probability (times its edge weight); each
    node keeps its ``keep`` strongest edges, each with that operation. Ties go to the lower index.
    """
    op_weights = np.asarray(op_weights, dtype=np.float64)
    usable = np.array([op != "zero" for op in space.ops])
    masked = np.where(usable[None, :], op_weights, -np.inf)
    best_op = masked.argmax(axis=1)
    strength = masked.max(axis=1) * (1.0 if edge_weights is None else np.asarray(edge_weights, dtype=np.float64))
    genotype = []
    for node in range(space.nodes):
        edges = list(space.node_edges(node))
        order = sorted(edges, key=lambda e: (-strength[e], e))[: space.keep]
        genotype.append(tuple((space.edges[e][1], space.ops[best_op[e]]) for e in sorted(order)))
    return tuple(genotype)


# ----- architectures ----------------------------------------------------------------------------------------
@dataclass
class CellArchitecture:
    """Cells of a :class:`CellSpace` placed into a host network.

    Attributes:
        space: the cell space.
        host: the host network's spec as a dict (``{"kind": "monai-unet", ...}``), with every field.
        cells: cell name -> genotype (IAC: one genotype, ``skip``, shared by every skip connection).
        metadata: free-form facts (strategy, scores, costs); kept verbatim in the JSON.
    """

    space: CellSpace
    host: dict[str, Any]
    cells: dict[str, Genotype]
    metadata: dict[str, Any] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = []
        if not isinstance(self.host, dict) or "kind" not in self.host:
            found.append("'host' must be a network spec with a 'kind'")
        if not self.cells:
            found.append("'cells' names no cell")
        for name, genotype in self.cells.items():
            found += [f"cell {name!r}: {problem}" for problem in genotype_problems(self.space, genotype)]
        return found

    def validate(self, source: str | Path | None = None) -> "CellArchitecture":
        found = self.problems()
        if found:
            raise SegnasInputError("invalid cell architecture:\n  - " + "\n  - ".join(found), source)
        return self

    def operations(self) -> list[str]:
        """Every kept edge's operation, over all cells."""
        return [op for genotype in self.cells.values() for kept in genotype for _, op in kept]

    def summary(self) -> str:
        """One line per cell: ``skip: n0 <- in0:conv_3x3x3 + in1:skip_connect; n1 <- ...``."""
        lines = []
        for name, genotype in self.cells.items():
            nodes = [f"n{node} <- " + " + ".join(f"{self.space.source_name(s)}:{op}" for s, op in kept)
                     for node, kept in enumerate(genotype)]
            lines.append(f"{name}: " + "; ".join(nodes))
        return "\n".join(lines)

    def key(self) -> str:
        """Short stable hash of space, host and cells (not metadata)."""
        payload = json.dumps({"space": self.space.to_dict(), "host": self.host,
                              "cells": {k: [list(map(list, kept)) for kept in g] for k, g in self.cells.items()}},
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"format": ARCHITECTURE_FORMAT.name, "version": ARCHITECTURE_FORMAT.version,
                "space": self.space.to_dict(), "host": self.host,
                "cells": {name: [[list(edge) for edge in kept] for kept in genotype]
                          for name, genotype in self.cells.items()},
                "metadata": self.metadata}

    def save(self, path: str | Path) -> Path:
        return ARCHITECTURE_FORMAT.write_json(path, self.to_dict(), default=json_default)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> "CellArchitecture":
        """Parse and validate an (already format-checked) document of the ``cells`` kind."""
        missing = [key for key in ("space", "host", "cells") if key not in data]
        if missing:
            raise SegnasInputError(f"cell architecture lacks the field(s) {missing}", source)
        space = CellSpace.from_dict(dict(data["space"]), source)
        if not isinstance(data["cells"], dict):
            raise SegnasInputError("'cells' must map cell names to genotypes", source)
        problems = [f"cell {name!r}: {p}" for name, g in data["cells"].items() for p in genotype_problems(space, g)]
        if problems:
            raise SegnasInputError("invalid cell architecture:\n  - " + "\n  - ".join(problems), source)
        cells = {str(name): as_genotype(g) for name, g in data["cells"].items()}
        return cls(space, dict(data["host"]), cells, dict(data.get("metadata") or {})).validate(source)


def uniform_genotype(space: CellSpace, op: str) -> Genotype:
    """The cell whose nodes keep their first ``keep`` candidate edges, all running ``op`` (the reference and
    extreme cells cost tables are measured on)."""
    return tuple(tuple((source, op) for source in range(min(space.keep, space.inputs + node)))
                 for node in range(space.nodes))


def random_genotype(space: CellSpace, rng: np.random.Generator) -> Genotype:
    """A genotype drawn uniformly: per node ``keep`` distinct sources, each with a non-``zero`` operation
    (the random-operation control of the IAC benchmark)."""
    ops = [op for op in space.ops if op != "zero"]
    genotype = []
    for node in range(space.nodes):
        allowed = space.inputs + node
        sources = sorted(rng.choice(allowed, size=min(space.keep, allowed), replace=False).tolist())
        genotype.append(tuple((int(s), ops[int(rng.integers(len(ops)))]) for s in sources))
    return tuple(genotype)


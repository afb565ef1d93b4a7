"""One architecture of the topology space as a versioned, validated JSON document.

Every strategy emits this format and every command reads it::

    {
      "format": "segnas.architecture", "version": 1,
      "space": {"type": "topology", "num_blocks": 12, "num_depths": 4, ...},
      "edges": [[1, 0, 1, ...], ...],      # L x E, 1 = edge active
      "ops":   [[1, -1, 0, ...], ...],     # L x E, index into space.ops; -1 on inactive edges
      "metadata": {"strategy": "...", "cost": {...}, ...}   # free-form
    }

An architecture is *feasible* when every block has at least one active edge and, from the second block
on, the scales that a block's edges leave are exactly the scales the previous block activated: no edge
leaves an inactive node and no active node is a dead end. These are the rules MONAI's DiNTS decoder
enforces through its ``transfer_mtx``; together they guarantee a path from the input to the output.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segnas.errors import SegnasInputError
from segnas.spaces.document import ARCHITECTURE_FORMAT, json_default
from segnas.spaces.topology import DINTS_OPS, TopologySpace

#: Version 2 added the ``cells`` space kind (:mod:`segnas.spaces.cells`); topology documents are unchanged.
if TYPE_CHECKING:
    from segnas.spaces.cells import CellArchitecture, CellSpace



@dataclass
class Architecture:
    """A point of a :class:`TopologySpace`.

    Attributes:
        space: the space the architecture belongs to.
        edges: ``(L, E)`` bool, which edges are active.
        ops: ``(L, E)`` int, the operation index of each active edge (``-1`` where inactive).
        metadata: free-form facts (strategy, measured cost, scores); kept verbatim in the JSON.
    """

    space: TopologySpace
    edges: np.ndarray
    ops: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.edges = np.asarray(self.edges).astype(bool)
        self.ops = np.asarray(self.ops).astype(np.int64)

    # ----- feasibility -------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Every reason the architecture is infeasible in its space, in words; empty when it is feasible."""
        space, expected = self.space, (self.space.num_blocks, self.space.num_edges)
        shape_problems = [
            f"'{name}' has shape {tuple(array.shape)} but the space needs {expected} "
            f"(num_blocks={space.num_blocks} x {space.num_edges} edges)"
            for name, array in (("edges", self.edges), ("ops", self.ops))
            if array.shape != expected
        ]
        if shape_problems:
            return shape_problems
        found = []
        for block in range(space.num_blocks):
            for edge in range(space.num_edges):
                op = int(self.ops[block, edge])
                if self.edges[block, edge] and not 0 <= op < space.num_ops:
                    found.append(
                        f"block {block}, edge {space.edge_name(edge)}: operation index {op} is outside "
                        f"0..{space.num_ops - 1} ({list(space.ops)})"
                    )
                if not self.edges[block, edge] and op != -1:
                    found.append(f"block {block}, edge {space.edge_name(edge)}: inactive edge has operation {op}")
        for block in range(space.num_blocks):
            if not self.edges[block].any():
                found.append(f"block {block} has no active edge (every block needs at least one)")
        for block in range(1, space.num_blocks):
            if not self.edges[block - 1].any() or not self.edges[block].any():
                continue
            active = self.active_nodes(block)
            for edge in np.flatnonzero(self.edges[block]):
                if space.edge_source(edge) not in active:
                    found.append(
                        f"block {block}, edge {space.edge_name(edge)} leaves scale {space.edge_source(edge)}, "
                        f"which block {block - 1} does not activate (active scales: {sorted(active)})"
                    )
            leaving = {space.edge_source(e) for e in np.flatnonzero(self.edges[block])}
            for node in sorted(active - leaving):
                found.append(
                    f"block {block - 1} activates scale {node} but no edge of block {block} leaves it "
                    "(a dead end: its features would never reach the output)"
                )
        return found

    def validate(self, source: str | Path | None = None) -> "Architecture":
        """Raise :class:`SegnasInputError` listing every problem; return ``self`` when feasible."""
        found = self.problems()
        if found:
            raise SegnasInputError("infeasible architecture:\n  - " + "\n  - ".join(found), source)
        return self

    def active_nodes(self, column: int) -> set[int]:
        """Scales alive at grid column ``column`` (0 = stem inputs, b + 1 = output of block b)."""
        if column == 0:
            return {self.space.edge_source(e) for e in np.flatnonzero(self.edges[0])}
        return {self.space.edge_target(e) for e in np.flatnonzero(self.edges[column - 1])}

    # ----- encodings ---------------------------------------------------------------------------------
    def one_hot(self) -> np.ndarray:
        """``(L, E, O)`` float32: 1 where an edge is active with that operation (the paper's a in N^{LxExO})."""
        code = np.zeros((self.space.num_blocks, self.space.num_edges, self.space.num_ops), dtype=np.float32)
        blocks, edges = np.nonzero(self.edges)
        code[blocks, edges, self.ops[blocks, edges]] = 1.0
        return code

    def node_activation(self) -> np.ndarray:
        """``(L + 1, D)`` int: MONAI's ``node_a``; row 0 is the stem inputs, row b + 1 the output of block b."""
        node_a = np.zeros((self.space.num_blocks + 1, self.space.num_depths), dtype=np.int64)
        for column in range(self.space.num_blocks + 1):
            node_a[column, sorted(self.active_nodes(column))] = 1
        return node_a

    def to_monai_codes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(node_a, arch_code_a, arch_code_c)`` for ``monai.networks.nets.DiNTS`` / ``TopologyInstance``.

        ``arch_code_c`` holds integer indices into MONAI's five-operation ``Cell.OPS3D`` (0 on inactive edges).
        """
        monai_index = np.array([DINTS_OPS.index(op) for op in self.space.ops])
        arch_code_c = np.where(self.edges, monai_index[np.clip(self.ops, 0, None)], 0)
        return self.node_activation(), self.edges.astype(np.float64), arch_code_c.astype(np.int64)

    @classmethod
    def from_monai_codes(
        cls, space: TopologySpace, arch_code_a: np.ndarray, arch_code_c: np.ndarray, **metadata: Any
    ) -> "Architecture":
        """Inverse of :meth:`to_monai_codes`. ``arch_code_c`` may be integer ``(L, E)`` or one-hot ``(L, E, 5)``."""
        arch_code_a = np.asarray(arch_code_a)
        arch_code_c = np.asarray(arch_code_c)
        if arch_code_c.ndim == 3:
            arch_code_c = arch_code_c.argmax(-1)
        edges = arch_code_a > 0
        ops = np.full(edges.shape, -1, dtype=np.int64)
        for block, edge in zip(*np.nonzero(edges)):
            op_name = DINTS_OPS[int(arch_code_c[block, edge])]
            if op_name not in space.ops:
                raise SegnasInputError(
                    f"MONAI code uses operation {op_name!r} at block {block}, edge {space.edge_name(edge)}, "
                    f"which is not in this space's operations {list(space.ops)}"
                )
            ops[block, edge] = space.ops.index(op_name)
        return cls(space, edges, ops, dict(metadata))

    def key(self) -> str:
        """Short stable hash of space and topology (not metadata): the architecture's identity for caches."""
        payload = json.dumps({"space": self.space.to_dict(), "edges": self.edges.astype(int).tolist(),
                              "ops": self.ops.tolist()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    # ----- JSON --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ARCHITECTURE_FORMAT.name,
            "version": ARCHITECTURE_FORMAT.version,
            "space": {"type": "topology", **self.space.to_dict()},
            "edges": self.edges.astype(int).tolist(),
            "ops": self.ops.tolist(),
            "metadata": self.metadata,
        }

    def save(self, path: str | Path) -> Path:
        """Write the JSON document atomically (a reader never sees half a file), with the versions that wrote it."""
        return ARCHITECTURE_FORMAT.write_json(path, self.to_dict(), default=json_default)

    @classmethod
    def from_dict(cls, data: Any, source: str | Path | None = None) -> "Architecture":
        """Parse and validate a document; every problem names ``source``."""
        data = ARCHITECTURE_FORMAT.load(data, source)
        if not isinstance(data.get("space"), dict) or data["space"].get("type", "topology") != "topology":
            raise SegnasInputError("not an architecture of the topology space (space type "
                                   f"{data.get('space', {}).get('type')!r})", source)
        missing = [key for key in ("space", "edges", "ops") if key not in data]
        if missing:
            raise SegnasInputError(f"architecture lacks the field(s) {missing}", source)
        space_data = dict(data["space"])
        space_data.pop("type", None)
        space = TopologySpace.from_dict(space_data, source=str(source) if source else None)
        try:
            edges = np.asarray(data["edges"], dtype=np.int64)
            ops = np.asarray(data["ops"], dtype=np.int64)
        except (TypeError, ValueError) as err:
            raise SegnasInputError(f"'edges' and 'ops' must be rectangular integer matrices ({err})", source) from err
        if not np.isin(edges, (0, 1)).all():
            raise SegnasInputError("'edges' may only hold 0 and 1", source)
        arch = cls(space, edges, ops, dict(data.get("metadata") or {}))
        return arch.validate(source)

    @classmethod
    def load(cls, path: str | Path) -> "Architecture":
        return cls.from_dict(ARCHITECTURE_FORMAT.read_json(path), source=path)

    def same_space(self, space: TopologySpace, source: str | Path | None = None) -> None:
        """Refuse an architecture from another space, naming the differing settings."""
        if self.space != space:
            mine, theirs = self.space.to_dict(), space.to_dict()
            diff = {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}
            raise SegnasInputError(f"architecture belongs to another search space (architecture vs expected: {diff})",
                                   source)


def architecture_from_dict(data: Any, source: str | Path | None = None) -> "Architecture | CellArchitecture":
    """An architecture document of any space kind (``topology`` or ``cells``), validated."""
    from segnas.spaces.cells import CellArchitecture

    data = ARCHITECTURE_FORMAT.load(data, source)
    kind = data.get("space", {}).get("type", "topology") if isinstance(data.get("space"), dict) else None
    if kind == "topology":
        return Architecture.from_dict(data, source)
    if kind == "cells":
        return CellArchitecture.from_dict(data, source)
    raise SegnasInputError(f"unknown space type {kind!r} (this segnas reads 'topology' and 'cells')", source)


def space_from_dict(data: dict[str, Any], source: str | Path | None = None) -> "TopologySpace | CellSpace":
    """A search space of either kind from its ``to_dict()`` (a ``type`` of ``cells``, else topology)."""
    from segnas.spaces.cells import CellSpace

    if data.get("type") == "cells":
        return CellSpace.from_dict(data, source)
    return TopologySpace.from_dict({k: v for k, v in data.items() if k != "type"},
                                   source=str(source) if source else None)


def load_architecture(path: str | Path) -> "Architecture | CellArchitecture":
    """Read and validate an architecture file of any space kind; every problem names the file."""
    return architecture_from_dict(ARCHITECTURE_FORMAT.read_json(path), source=path)

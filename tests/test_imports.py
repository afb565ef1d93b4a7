"""The package's floors: no import loop anywhere in ``segnas/``, and the lower floors (data, spaces, cost,
networks) import nothing from the upper ones (strategies, api, cli). Read from the source with ``ast``: every
import counts, at module level or inside a function, except those under ``if TYPE_CHECKING:`` (never run)."""

from __future__ import annotations

import ast
from pathlib import Path

import segnas

PACKAGE = Path(segnas.__file__).parent
LOWER = ("segnas.data", "segnas.spaces", "segnas.cost", "segnas.networks")
UPPER = ("segnas.strategies", "segnas.api", "segnas.cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, except the bodies of ``if TYPE_CHECKING:``."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)
    return found


def import_graph() -> dict[str, set[str]]:
    """segnas module -> the segnas modules it imports (``from a.b import c`` counts ``a.b.c`` when that is a
    module, else ``a.b``)."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in files else node.module
                            for alias in node.names}
        graph[name] = {target for target in targets if target in files and target != name}
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A shortest import path from ``start`` back to itself, or None."""
    frontier, seen = [[start]], {start}
    while frontier:
        path = frontier.pop(0)
        for target in sorted(graph[path[-1]]):
            if target == start:
                return path + [start]
            if target not in seen:
                seen.add(target)
                frontier.append(path + [target])
    return None


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    loops = {" -> ".join(cycle) for name in graph if (cycle := _cycle_through(graph, name))}
    assert not loops, "import loops:\n" + "\n".join(sorted(loops))


def test_lower_floors_import_nothing_from_the_upper_ones() -> None:
    graph = import_graph()
    upward = sorted(f"{name} -> {target}" for name, targets in graph.items() if name.startswith(LOWER)
                    for target in targets if target.startswith(UPPER))
    assert not upward, "lower floors importing upper ones:\n" + "\n".join(upward)


def test_the_graph_sees_imports_inside_functions() -> None:
    """The walk is not blind: a known function-level import is in the graph."""
    assert "segnas.engine.inference" in import_graph()["segnas.engine.trainer"]

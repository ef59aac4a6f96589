"""The shape of the code: no import circles, and the metrics import nothing of the sign path.

The graph is read from the source (``ast``), so it covers every module, including those a
test run never imports: top-level imports, imports inside functions (a lazy import that
closes a circle is still a circle), imports under ``if TYPE_CHECKING:`` (a circle of types
is a tangle too, even if it never runs), ``from package import module``, relative imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

ROOTS = ("kms", "providers")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            relative = path.relative_to(REPO).with_suffix("")
            parts = list(relative.parts)
            if "gen" in parts and parts[:2] == ["kms", "proto"]:
                continue  # generated protobuf classes
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of ``known`` that ``module`` imports, wherever the import statement is."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {target for target in targets if target in known and target != module}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {module: _imports(module, path, known) for module, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_the_graph_reader_sees_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_reader_resolves_the_real_imports() -> None:
    graph = _graph()
    assert "kms.chain.durable" in graph["kms.chain.tracker"]
    assert "kms.errors" in graph["providers"]
    assert "providers.yubihsm" in graph["kms.keyring"]  # a lazy import, counted
    assert "kms.ops.stats" not in graph["kms.chain.tracker"]


def test_no_import_circles_in_kms_and_providers() -> None:
    assert _cycles(_graph()) == []


def test_the_old_circles_would_be_seen() -> None:
    """The two circles this test was written against, re-created in the graph."""
    graph = _graph()
    graph["kms.ops.stats"] = graph["kms.ops.stats"] | {"kms.chain.tracker"}
    graph["kms.chain.tracker"] = graph["kms.chain.tracker"] | {"kms.ops.stats"}
    assert ["kms.chain.tracker", "kms.ops.stats"] in _cycles(graph)

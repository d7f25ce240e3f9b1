"""The package's layers, read from the source: every import of every module of ``helpers``, the
function-local ones included (a deferred import hides a cycle from Python, not from this test).

- the stages (fetch, filter, relax, analysis, lattice) and what lies below them never import
  :mod:`helpers.run`, which only orchestrates;
- :mod:`helpers.process` (guards, pools, atomic writes) imports nothing else of ``helpers``;
- no import cycle between modules of ``helpers``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "helpers"
#: may import helpers.run: the orchestrator itself and the command line on top of it
ORCHESTRATION = ("helpers.run", "helpers.cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``helpers`` that ``name`` imports anywhere in its file (module level, functions,
    ``if`` branches); ``from package import submodule`` counts as importing the submodule."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package upwards
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import helpers.a.b` of a name inside a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as one concrete cycle
    ``a -> b -> ... -> a`` through it, for the failure message."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [one_cycle(graph, group) for group in groups]


def one_cycle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group (breadth first)."""
    start = min(group)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {group}")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_deferred_imports_and_submodules(graph):
    """The reader finds what it must: a function-local import, a `from package import module`."""
    assert "helpers.run.lattice" in graph["helpers.run.campaign"]  # imported inside run_campaign's stages
    assert "helpers.analysis.report_figures" in graph["helpers.analysis.report_sections"]
    assert "helpers.process.guard" in graph["helpers.fetch.raw"]
    assert "helpers.process.atomic" in graph["helpers.fetch.cod_verify"]
    assert len(graph) > 60 and sum(map(len, graph.values())) > 150


def test_cycle_finder_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_stages_never_import_run(graph):
    """fetch, filter, relax, analysis, lattice, store, process: nothing below the orchestrator runs back up."""
    upward = {f"{name} -> {target}" for name, targets in graph.items() if not name.startswith(ORCHESTRATION)
              for target in targets if target.startswith("helpers.run")}
    assert not upward, f"modules below helpers.run import it: {sorted(upward)}"


def test_process_tools_import_nothing_of_helpers(graph):
    inside = {f"{name} -> {target}" for name, targets in graph.items() if name.startswith("helpers.process")
              for target in targets if not target.startswith("helpers.process")}
    assert not inside, f"helpers.process must stay the lowest layer: {sorted(inside)}"


def test_no_import_cycle(graph):
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)

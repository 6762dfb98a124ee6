"""The code's shape, checked from its sources with the standard library's `ast`: no import circle
among the project's modules, the driver and construction made of short functions, and the
readers of an index independent of the code that builds it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "cluster", "pipelines")
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    return {f"{p}.{f.stem}": f for p in PACKAGES for f in sorted((REPO / p).glob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, at module level or inside a function (a
    deferred import is still a dependency)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_the_projects_modules():
    graph = import_graph()
    assert len(graph) > 30  # the walk saw the packages
    assert "pipelines.config" in graph["pipelines.construct"]
    assert circles(graph) == []


def test_driver_and_construction_are_made_of_short_functions():
    for name in ("pipelines/policylong.py", "pipelines/construct.py", "pipelines/fleet.py"):
        tree = ast.parse((REPO / name).read_text())
        long = {
            node.name: node.end_lineno - node.lineno + 1
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
        }
        assert not long, f"{name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_index_readers_do_not_depend_on_the_index_builder():
    graph = import_graph()
    for reader in ("actors.retrieval_shard", "pipelines.retrieve"):
        assert "pipelines.index_format" in graph[reader] | graph["pipelines.retrieve"]
        assert "pipelines.build_index" not in graph[reader], reader


def test_no_method_is_tested_by_name_outside_its_declaration():
    """Methods are declared once (pipelines/methods.py); the driver and construction ask the
    spec, so a new baseline is one new entry there."""
    for name in ("pipelines/policylong.py", "pipelines/construct.py", "pipelines/fleet.py"):
        strings = {
            node.value
            for node in ast.walk(ast.parse((REPO / name).read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        named = strings & {"policylong", "entropylong", "nextlong", "concat"}
        assert not named, f"{name} tests a method by name: {named}"

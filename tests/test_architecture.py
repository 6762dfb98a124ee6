"""The code's shape, checked from its sources with the standard library's `ast`: layers that only
import downward (docs/architecture.md), no import circle among the project's modules, the driver
and construction made of short functions, and the readers of an index independent of the code
that builds it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "cluster", "pipelines")
MAX_FUNCTION_LINES = 60


# The floors, bottom first (docs/architecture.md): a module imports only from its own floor or
# those below. steps/ and eval/ share a floor and never import each other.
FLOORS = (
    ("pipelines.core",),
    ("cluster",),
    ("actors",),
    ("pipelines.world",),
    ("pipelines.steps", "pipelines.eval"),
    ("pipelines.driver",),
    ("pipelines.cli",),
)


def _modules() -> dict[str, Path]:
    """Every module of the packages, sub-packages included: dotted name -> file."""
    found = {}
    for package in PACKAGES:
        for f in sorted((REPO / package).rglob("*.py")):
            parts = f.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return found


def layer_of(module: str) -> tuple[int, str]:
    """(floor, layer) of a module: the longest layer name it starts with."""
    best = None
    for floor, layers in enumerate(FLOORS):
        for layer in layers:
            if module == layer or module.startswith(layer + "."):
                if best is None or len(layer) > len(best[1]):
                    best = (floor, layer)
    return best if best is not None else (-1, "")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that climbs a floor or crosses to a sibling layer, as 'a -> b'."""
    wrong = []
    for module, targets in graph.items():
        floor, layer = layer_of(module)
        for target in sorted(targets):
            t_floor, t_layer = layer_of(target)
            if t_floor > floor or (t_floor == floor and t_layer != layer):
                wrong.append(f"{module} -> {target}")
    return wrong


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


def test_the_layer_check_finds_an_upward_and_a_sideways_import():
    graph = {
        "pipelines.core.config": {"pipelines.eval.eval_tasks"},  # up
        "pipelines.steps.screen": {"pipelines.eval.probe", "pipelines.world.world"},  # sideways
        "pipelines.driver.fleet": {"actors.scorer", "pipelines.steps.screen"},  # down: fine
    }
    assert upward_imports(graph) == [
        "pipelines.core.config -> pipelines.eval.eval_tasks",
        "pipelines.steps.screen -> pipelines.eval.probe",
    ]


def test_every_module_belongs_to_a_layer():
    stray = [m for m in _modules() if layer_of(m)[0] < 0 and m not in PACKAGES]
    assert stray == [], f"modules outside every layer of FLOORS: {stray}"


def test_layers_only_import_downward():
    graph = import_graph()
    assert "pipelines.core.config" in graph["pipelines.world.world"]  # the walk saw sub-packages
    assert upward_imports(graph) == []


def test_cluster_never_imports_a_step_or_a_method():
    graph = import_graph()
    for module in (m for m in graph if m.startswith("cluster.")):
        bad = {t for t in graph[module] if t.startswith("pipelines.steps") or "methods" in t}
        assert not bad, f"{module} imports {bad}"


def test_eval_task_names_in_the_config_schema_are_the_builders():
    from pipelines.core.config_schema import EVAL_TASKS
    from pipelines.eval.eval_tasks import BUILDERS

    assert tuple(BUILDERS) == EVAL_TASKS


def test_no_import_circle_among_the_projects_modules():
    graph = import_graph()
    assert len(graph) > 30  # the walk saw the packages
    assert "pipelines.core.config" in graph["pipelines.driver.construct"]
    assert circles(graph) == []


def test_driver_and_construction_are_made_of_short_functions():
    for name in (
        "pipelines/driver/stage_driver.py",
        "pipelines/driver/construct.py",
        "pipelines/driver/fleet.py",
    ):
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
    for reader in ("actors.retrieval_shard", "pipelines.steps.retrieve"):
        assert "pipelines.core.index_format" in graph[reader] | graph["pipelines.steps.retrieve"]
        assert "pipelines.world.build_index" not in graph[reader], reader


def test_no_method_is_tested_by_name_outside_its_declaration():
    """Methods are declared once (pipelines/core/methods.py); the driver and construction ask the
    spec, so a new baseline is one new entry there."""
    for name in (
        "pipelines/driver/stage_driver.py",
        "pipelines/driver/construct.py",
        "pipelines/driver/fleet.py",
    ):
        strings = {
            node.value
            for node in ast.walk(ast.parse((REPO / name).read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        named = strings & {"policylong", "entropylong", "nextlong", "concat"}
        assert not named, f"{name} tests a method by name: {named}"

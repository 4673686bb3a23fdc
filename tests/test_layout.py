"""The package's shape, checked: every import (module-level or deferred inside a function) points
down the layers README's layout table describes, no import cycle, no oversized module, and the
command line holds no library logic of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "yarnconv"
# Lower layers never import higher ones. Rooms of one layer (hf, gguf) may import each other only
# if that makes no cycle.
LAYERS = [
    {"errors", "options", "recipes"},
    {"rope", "families"},
    {"config"},
    {"plan", "runtimes", "jobs", "routes"},
    {"storage"},
    {"hf", "gguf"},
    {"verify"},
    {"publish"},
    {"evaluation"},
    {"pipeline"},
    {"api"},
    {"cli", "__main__"},
]
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("yarnconv"):
            base = node.module
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from yarnconv import rope` names a module
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("yarnconv"))
    return out


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "yarnconv"


def _layer(module: str) -> int:
    return next(i for i, rooms in enumerate(LAYERS) if _room(module) in rooms)


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {i for i in _imports(p) if i in mods and i != m} for m, p in mods.items()}


def test_every_room_has_a_layer_and_imports_point_down() -> None:
    graph = _graph()
    upward = []
    for mod, deps in graph.items():
        if mod == "yarnconv":  # the package's lazy __getattr__ re-exports the API entries
            continue
        for dep in deps:
            if dep != "yarnconv" and _layer(dep) > _layer(mod):
                upward.append(f"{mod} -> {dep}")
    assert not upward, upward


def test_no_import_cycles() -> None:
    graph = {m: {d for d in deps if d != "yarnconv"} for m, deps in _graph().items() if m != "yarnconv"}
    # packages import their own submodules in __init__; a submodule importing its package is the cycle to catch
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep.startswith(node + "."):
                continue  # a package's __init__ re-exporting its own submodules
            if state.get(dep) == 1 and not node.startswith(dep + "."):
                cycle.extend([*stack, node, dep])
                return
            if dep not in state:
                visit(dep, [*stack, node])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycle, " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_module_is_oversized(module: str) -> None:
    lines = len(_modules()[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by concern"


def test_cli_only_parses_calls_and_prints() -> None:
    """Command modules call yarnconv.api (and the requests it defines); no route or library logic."""
    for mod, deps in _graph().items():
        if _room(mod) != "cli":
            continue
        library = {d for d in deps if _room(d) not in ("cli", "yarnconv")}
        assert library <= {"yarnconv.api", "yarnconv.options", "yarnconv.errors"}, (mod, library)


MAX_FUNCTION_LINES = 60


def test_no_function_is_longer_than_a_screen() -> None:
    """Each function reads in one screen: a longer one is split into named steps."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:  # type: ignore[operator]
                long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")  # type: ignore[operator]
    assert not long, long


def test_one_driver_runs_every_multi_step_command() -> None:
    """run, demo and the --verify flags build step lists (yarnconv.pipeline.build) that one driver runs;
    api.py chains no steps itself."""
    api = (PACKAGE / "api.py").read_text()
    assert api.count("run_steps(") == 1 and "for_recipe(" in api and "for_demo(" in api and "for_extend(" in api and "for_export(" in api
    for chained in ("export_gguf(", "write_card(", "verify_model(", "evaluate_model(", "extending("):
        assert chained not in api, chained

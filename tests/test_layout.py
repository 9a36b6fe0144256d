"""The shape of the `relay` and `relay_sim` packages: no import circles, no module over
400 lines, and a simulator that shares no code with the relay it is meant to check.

Imports inside `if TYPE_CHECKING:` count too: a circle only the type checker sees is
still two modules that cannot be understood one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [ROOT / "relay", ROOT / "relay_sim"]
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` that `path` imports (a package import counts as its
    __init__, `from package import module` as that module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.add(name if name in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module `path` names in an import statement."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def graph(package: Path) -> dict[str, set[str]]:
    paths = {module_name(p): p for p in package.rglob("*.py")}
    modules = set(paths)
    return {name: package_imports(path, modules) - {name} for name, path in paths.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_no_import_circles(package: Path) -> None:
    cycle = find_cycle(graph(package))
    assert cycle is None, " -> ".join(cycle or ())


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_the_simulators_own_imports() -> None:
    # A circle check that found no edges would pass vacuously.
    edges = graph(ROOT / "relay_sim")
    assert "relay_sim.script" in edges["relay_sim.sim"]
    assert "relay_sim.state" in edges["relay_sim.h2"]


def test_the_simulator_imports_nothing_of_the_relay() -> None:
    """The sim is the upstream the relay is tested against: code shared between them
    would be checked against itself (a bug in it would agree with itself)."""
    shared = {
        str(path.relative_to(ROOT)): sorted(relay)
        for path in (ROOT / "relay_sim").rglob("*.py")
        if (relay := {n for n in imported_modules(path) if n.split(".")[0] == "relay"})
    }
    assert not shared, shared


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_no_module_is_over_400_lines(package: Path) -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in package.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long

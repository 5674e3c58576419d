"""Layering: imports flow one way. Parsed with ``ast`` (function-level imports included), so a
lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "mnv1_coreml"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = module_files()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST):
    """Every node, except the bodies of ``if TYPE_CHECKING:`` (never executed)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            yield from (n for orelse in child.orelse for n in [orelse, *_walk(orelse)])
            continue
        yield child
        yield from _walk(child)


def imports_of(module: str) -> set[str]:
    """The package modules ``module`` imports (an imported name that is a submodule counts
    as that submodule; any other name as the module it comes from)."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    targets: set[str] = set()
    for node in _walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                source = ".".join(anchor + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.add(sub if sub in MODULES else source)
    return {t for t in targets if t in MODULES} - {module}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_the_parser_sees_function_level_and_relative_imports() -> None:
    # guards the test itself: if these are missed, the rules below check nothing
    assert "mnv1_coreml.pipeline" in GRAPH["mnv1_coreml.cli"]  # imported inside a command
    assert "mnv1_coreml.coreml" in GRAPH["mnv1_coreml.compress.api"]  # from ..coreml
    assert "mnv1_coreml.errors" in GRAPH["mnv1_coreml.mil.errors"]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a path that starts and ends at the same module, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_nothing_imports_the_cli() -> None:
    importers = sorted(m for m, deps in GRAPH.items() if "mnv1_coreml.cli" in deps)
    assert importers == ["mnv1_coreml.__main__"], importers


def test_nothing_imports_the_package_root() -> None:
    # the root lazily imports the public API; importing it back would close a cycle
    importers = sorted(m for m, deps in GRAPH.items() if PACKAGE in deps)
    assert importers == [], importers


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(f"{PACKAGE}.mil")))
def test_mil_imports_only_itself_and_errors(module: str) -> None:
    allowed = {f"{PACKAGE}.mil", f"{PACKAGE}.errors"}
    outside = sorted(
        d for d in GRAPH[module] if d not in allowed and not d.startswith(f"{PACKAGE}.mil.")
    )
    assert outside == [], f"{module} imports {outside}"

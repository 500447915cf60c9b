"""The package's shape (docs/design.md, "Layout"): layered modules, no import cycle, no module
reaching into another's private names, no module over 400 lines and no class over 250."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "stepsync"
#: The wandb adapter: the one module allowed to touch wandb's private names.
ADAPTER = "stepsync._wandb"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` (relative imports included)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if MODULES[module].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str) -> dict[str, set[str]]:
    """Every stepsync module ``module`` imports (at the top, in functions or under
    TYPE_CHECKING), with the names it takes from each."""
    found: dict[str, set[str]] = {}
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in MODULES:  # `from stepsync import _wandb`
                    found.setdefault(submodule, set())
                elif source in MODULES:
                    found.setdefault(source, set()).add(alias.name)
    found.pop(module, None)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def find_cycle() -> list[str] | None:
    """One import cycle among stepsync's modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def own_names(tree: ast.Module) -> set[str]:
    """The private names a module defines itself: functions, classes, globals, attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)  # an attribute of its own objects (another's, written, is a reach)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return {name for name in names if name.startswith("_")}


def private_reaches(module: str) -> list[str]:
    """``x._name`` where ``_name`` is not this module's own, and ``from m import _name``."""
    tree = TREES[module]
    own = own_names(tree)
    found = [
        f"from {source} import {name}"
        for source, names in GRAPH[module].items()
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in own
        ):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_import_cycle():
    """Lazy and TYPE_CHECKING imports count: the layers only ever import downwards."""
    assert find_cycle() is None, " -> ".join(find_cycle() or [])


@pytest.mark.parametrize("module", sorted(set(MODULES) - {ADAPTER}))
def test_no_module_reaches_private_names(module):
    """Only the wandb adapter touches another module's (wandb's) private names."""
    assert private_reaches(module) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_classes_stay_small(module):
    """A module a newcomer reads in one sitting: at most 400 lines, classes at most 250."""
    source = MODULES[module].read_text()
    assert source.count("\n") <= MAX_MODULE_LINES
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            assert node.end_lineno - node.lineno + 1 <= MAX_CLASS_LINES, node.name


def test_the_checks_see_what_they_look_for():
    """The checks above are not vacuous: they find the imports, cycles and names they test."""
    assert "stepsync._wandb" in GRAPH["stepsync._manager"]
    assert "stepsync._manager" in GRAPH["stepsync._producers"]  # a lazy import counts
    tree = ast.parse("import stepsync._live as live\nlive._members\n")
    assert any(isinstance(n, ast.Attribute) and n.attr == "_members" for n in ast.walk(tree))
    assert "_members" not in own_names(tree)
    written = ast.parse("def f(manager):\n    manager._frontier = 1\n")
    assert "_frontier" not in own_names(written)  # writing another object's field is a reach

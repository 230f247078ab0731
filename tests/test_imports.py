"""No import loop in stablesweep: between its files, and between its packages (a subpackage or a
top-level module), counting the imports inside functions (a loop hidden in a function is still a
loop) and those only for type checking (a loop a type checker follows is still a loop)."""
from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import stablesweep

ROOT = Path(stablesweep.__file__).parent


def _modules() -> dict[str, bool]:
    """Dotted module name -> whether it is a package's __init__."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = is_pkg
    return out


def _source(name: str, is_pkg: bool) -> Path:
    rel = Path(*name.split("."))
    return ROOT.parent / (rel / "__init__.py" if is_pkg else rel.with_suffix(".py"))


def import_graph() -> dict[str, set[str]]:
    """Module -> the stablesweep modules it imports anywhere (top level, in a function, or for type checking)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, is_pkg in mods.items():
        tree = ast.parse(_source(name, is_pkg).read_text())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for a in node.names:
                    if f"{target}.{a.name}" in mods:
                        deps.add(f"{target}.{a.name}")
                    elif target in mods:
                        deps.add(target)
        # a module's own package, and a package's re-exports of its modules, are not loops
        graph[name] = {d for d in deps - {name} if not (mods[d] and name.startswith(d + "."))}
    return graph


def _loop(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        TopologicalSorter(graph).prepare()
        return None
    except CycleError as e:
        return e.args[1]


def _package(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2])


def test_no_import_loop_between_files():
    graph = import_graph()
    assert "stablesweep.vocab" in graph and graph["stablesweep.vocab"] == set()  # the ground floor
    assert _loop(graph) is None, f"import loop: {' -> '.join(_loop(graph))}"


def test_no_import_loop_between_packages():
    graph: dict[str, set[str]] = {}
    for name, deps in import_graph().items():
        graph.setdefault(_package(name), set()).update(_package(d) for d in deps if _package(d) != _package(name))
    assert _loop(graph) is None, f"import loop: {' -> '.join(_loop(graph))}"


def test_no_command_imports_another():
    """A command module imports the library and stablesweep.commands.args (the options several
    commands share), never another command."""
    shared = "stablesweep.commands.args"
    for name, deps in import_graph().items():
        if name.startswith("stablesweep.commands.") and name != shared:
            others = sorted(d for d in deps if d.startswith("stablesweep.commands.") and d != shared)
            assert not others, f"{name} imports {', '.join(others)}"

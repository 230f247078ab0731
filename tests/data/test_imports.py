"""The data package's modules import each other in one direction, function-level imports included."""
from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import stablesweep.data


def data_imports() -> dict[str, set[str]]:
    """module -> the data modules it imports anywhere in its source (top level or in a function)."""
    root = Path(stablesweep.data.__file__).parent
    modules = {f.stem for f in root.glob("*.py")} - {"__init__"}
    graph = {}
    for name in modules:
        deps = set()
        for node in ast.walk(ast.parse((root / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                target = parts[0] if node.level == 1 else (parts[2] if parts[:2] == ["stablesweep", "data"]
                                                             and len(parts) > 2 else None)
                if target in modules:
                    deps.add(target)
        graph[name] = deps
    return graph


def test_no_import_loop_in_the_data_package():
    graph = data_imports()
    assert graph["synthetic"] == {"images"} and "synthetic" in graph["manifests"]
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise AssertionError(f"import loop in stablesweep.data: {e.args[1]}") from None
    assert order.index("images") < order.index("synthetic") < order.index("manifests") < order.index("mixing")

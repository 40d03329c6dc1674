"""The package's imports go one way: data model and errors <- client and providers <- kernel
runtime <- UI. Every import is counted, at module level or inside a function (an import
moved into a function to dodge a cycle is still a cycle). No module imports a private (`_name`)
name from another module of the package."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import jupyter_imagegen

PACKAGE = Path(jupyter_imagegen.__file__).resolve().parent

#: the layers, lowest first; a module may import modules of its own layer or of lower ones
LAYERS: List[Tuple[str, Set[str]]] = [
    ("model", {"errors", "secret", "config", "events", "memory", "model", "render", "retry", "sse", "theme"}),
    ("client", {"cache", "client", "loop_thread", "netguard", "providers"}),
    ("runtime", {"runtime", "history", "saving", "loading"}),
    ("ui", {"display", "compare", "magic_options", "magic", "form_fields", "form_cards", "widget", "cli",
            "__main__"}),
]
#: the emulator is a separate tool: it may use the data model, nothing above it
EMULATOR_MAY_IMPORT = {"model", "emulator"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> List[str]:
    """The package modules an ImportFrom brings in (relative to `importer`)."""
    if node.level == 0:
        if not (node.module or "").startswith("jupyter_imagegen"):
            return []
        base = node.module.split(".")[1:]
    else:
        parts = importer.split(".") if importer else []
        here = parts if is_package else parts[:-1]
        up = node.level - 1
        base = (here[:len(here) - up] if up else here) + (node.module.split(".") if node.module else [])
    if node.module:
        return [".".join(base)]
    return [".".join(base + [a.name]) for a in node.names]      # from . import history


def collect() -> Dict[str, List[Tuple[str, List[str], int]]]:
    """module -> [(imported module, imported names, line)] for every import in the package."""
    graph: Dict[str, List[Tuple[str, List[str], int]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        tree = ast.parse(path.read_text("utf-8"), str(path))
        edges = graph.setdefault(name, [])
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for target in resolve(name, path.name == "__init__.py", node):
                    edges.append((target, [a.name for a in node.names], node.lineno))
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("jupyter_imagegen."):
                        edges.append((a.name.split(".", 1)[1], [], node.lineno))
    return graph


def top(name: str) -> str:
    return name.split(".")[0] if name else ""


def layer_of(name: str) -> int:
    for i, (_, members) in enumerate(LAYERS):
        if top(name) in members:
            return i
    raise AssertionError(f"module {name!r} is in no layer: add it to LAYERS in tests/test_layers.py")


GRAPH = collect()
# `from . import __version__` names an attribute of the package, not a module: it is the package
for _edges in GRAPH.values():
    _edges[:] = [(t if t in GRAPH else ".".join(t.split(".")[:-1]), names, line) for t, names, line in _edges]
MODULES = [m for m in GRAPH if m and top(m) != "emulator"]


def test_every_module_has_a_layer():
    for m in MODULES:
        layer_of(m)


def test_imports_go_one_way():
    wrong = []
    for m in MODULES:
        for target, _, line in GRAPH[m]:
            if not target or target == m:        # the package facade (`from . import events`)
                continue
            if top(target) == "emulator":
                if top(m) != "cli":
                    wrong.append(f"{m}:{line} imports the emulator")
                continue
            if layer_of(target) > layer_of(m):
                wrong.append(f"{m}:{line} ({LAYERS[layer_of(m)][0]}) imports {target} "
                             f"({LAYERS[layer_of(target)][0]})")
    assert not wrong, "imports that go up a layer:\n" + "\n".join(wrong)


def test_the_emulator_uses_only_the_data_model():
    wrong = [f"{m}:{line} imports {t}" for m in GRAPH if top(m) == "emulator"
             for t, _, line in GRAPH[m] if t and top(t) not in EMULATOR_MAY_IMPORT]
    assert not wrong, wrong


def test_no_import_cycle():
    edges = {m: {t for t, _, _ in GRAPH[m] if t and t in GRAPH and t != m} for m in GRAPH if m}
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_no_private_names_across_modules():
    wrong = [f"{m}:{line} imports {n} from {t}" for m in GRAPH for t, names, line in GRAPH[m]
             if t != m for n in names if n.startswith("_") and n != "__version__"]
    assert not wrong, wrong


def test_the_walk_sees_what_it_must():
    """Controls: the walk finds function-local imports and resolves relative ones."""
    runtime_targets = {t for t, _, _ in GRAPH["runtime"]}
    assert {"history", "client", "loop_thread", "saving"} <= runtime_targets
    assert "model" in {t for t, _, _ in GRAPH["providers.base"]}          # from ..model import ...
    cli_targets = {t for t, _, _ in GRAPH["cli"]}
    assert "client" in cli_targets                                          # imported inside a function

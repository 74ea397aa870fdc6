"""The import contract (docs/architecture.md): layers import only downwards, and no cycles.

The graph is read from the source with ``ast``: every ``import`` of an xvec module, at module
level or inside a function, is an edge (a deferred import still couples the modules). A
module may import its own layer and the layers below it. Known debts of the redesign
(issue 26) are listed in ``ALLOWED`` with the reason; the list may only shrink.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import ROOT

SOURCE = ROOT / "src"

# Lowest first. A module not listed is in the layer of its package (models.*, losses.* ...).
LAYERS: list[tuple[str, set[str]]] = [
    (
        "foundation",
        {
            "errors",
            "files",
            "outputs",
            "compat",
            "devices",
            "registry",
            "schedules",
            "config",
            "runlog",
        },
    ),
    (
        "kernels",
        {
            "plugin",
            "audio",
            "features",
            "metrics",
            "calibration",
            "plda",
            "scoring",
            "protocol",
            "data",
            "augment",
            "models",
            "losses",
            "checkpoint",
            "cpu_threads",
            "inference",
            "plots",
        },
    ),
    (
        "services",
        {
            "embed",
            "evaluate",
            "synth",
            "prepare",
            "interop",
            "export",
            "training",
            "api",
        },
    ),
    ("front", {"workflows", "report", "report_training", "cli", "__main__", "xvec"}),
]

# (importer, imported): why it is still there.
ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Each xvec module's imports of other xvec modules (all of them, deferred ones too)."""
    files = {module_name(path): path for path in (SOURCE / "xvec").rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([node.module] if node.module else [])])
                submodules = [f"{base}.{alias.name}" for alias in node.names]
                targets = [m for m in submodules if m in files] or [base]
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def layer_of(module: str) -> int:
    short = module.removeprefix("xvec.").split(".")[0] if module != "xvec" else "xvec"
    for index, (_, members) in enumerate(LAYERS):
        if short in members:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_layers_import_only_downwards() -> None:
    graph = import_graph()
    upward = sorted(
        (module, target)
        for module, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(module) and (module, target) not in ALLOWED
    )
    assert upward == [], "\n".join(f"{a} imports {b}" for a, b in upward)


def test_allowed_debts_still_exist() -> None:
    """An exception that is no longer needed must leave the list."""
    graph = import_graph()
    assert [pair for pair in ALLOWED if pair[1] not in graph.get(pair[0], set())] == []


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch) -> None:
    package = tmp_path / "xvec"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "metrics.py").write_text("def f():\n    from xvec import cli\n")
    (package / "cli.py").write_text("from xvec.metrics import f\n")
    monkeypatch.setattr(f"{__name__}.SOURCE", tmp_path)
    graph = import_graph()
    assert cycles(graph) == [["xvec.cli", "xvec.metrics"]]
    with pytest.raises(AssertionError, match=r"xvec\.metrics imports xvec\.cli"):
        test_layers_import_only_downwards()


def test_every_module_has_maintainability_index_a() -> None:
    """radon's maintainability index of every source file is grade A (above 19)."""
    from radon.metrics import mi_rank, mi_visit

    graded = {
        module_name(path): mi_visit(path.read_text(), multi=True)
        for path in (SOURCE / "xvec").rglob("*.py")
    }
    below = {name: round(mi, 1) for name, mi in graded.items() if mi_rank(mi) != "A"}
    assert below == {}

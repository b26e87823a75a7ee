"""The package layers of ARCHITECTURE.md: no import cycle between failmode's subpackages and top-level modules.

Every import counts, top-level or inside a function, `TYPE_CHECKING` ones included: a cycle that only deferred
imports keep from failing still ties two layers together.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import failmode

ROOT = Path(failmode.__file__).parent
#: the `evaluate/` folder at the top of the repository is the `failmode.evaluate` package
EVALUATE = ROOT.parent / "evaluate"


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "failmode" and len(parts) > 1 else None


def import_graph() -> dict[str, dict[str, set[str]]]:
    """unit -> unit it imports -> the files that do (a unit: a subpackage or a top-level module of failmode)."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    files = [(f, f.relative_to(ROOT).parts[0].removesuffix(".py")) for f in ROOT.rglob("*.py")
             if f.relative_to(ROOT).parts[0] != "evaluate"]
    files += [(f, "evaluate") for f in EVALUATE.rglob("*.py")]
    for path, unit in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                target = _unit(name)
                if target and target != unit:
                    graph[unit][target].add(path.name)
    return graph


def cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Strongly connected components of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_subpackages():
    graph = import_graph()
    found = cycles(graph)
    detail = [f"{a} -> {b} ({', '.join(sorted(graph[a][b]))})" for comp in found for a in comp for b in comp
              if b in graph.get(a, {})]
    assert not found, f"import cycles: {found}; edges: {detail}"


def test_the_lowest_layers_import_no_failmode_layer_above_them():
    graph = import_graph()
    for low in ("errors", "registry", "io", "typed", "hub", "progress", "prompts"):
        assert set(graph.get(low, {})) <= {"errors"}, (low, dict(graph.get(low, {})))
    # the cycles this test was written against stay broken: vocab needs neither mining (a cache path) nor world
    # (class names), the dataset package no test helper; features is given its transform and loads no model, so the
    # models package (the classifier setup, failmode.models.setup) builds on it, never the other way round
    assert not {"mining", "world"} & set(graph["vocab"]) and "testing" not in graph["dataset"]
    assert "models" not in graph["features"]
    assert {u for u in graph if "world" in graph[u]} <= {"commands", "discovery", "testing"}


def test_the_graph_sees_known_edges():
    graph = import_graph()
    assert "mining" in graph["evaluate"] and "dataset" in graph["generation"]  # the analysis finds real imports


def test_architecture_lists_every_module_file_by_file():
    """ARCHITECTURE.md's "Files" section names each module under its folder, and nothing that is not there."""
    import re

    text = (ROOT.parent / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text[text.index("## Files"):]
    listed: set[str] = set()
    folder = None
    for line in section.splitlines():
        if m := re.match(r"\*\*`([^`]+)/`\*\*", line):
            folder = m[1]
        elif (m := re.match(r"\| `([^`]+\.py)` \|", line)) and folder:
            listed.add(f"{folder}/{m[1]}")
    tree = {p.relative_to(ROOT.parent).as_posix() for p in ROOT.rglob("*.py")
            if p.name != "__init__.py" and p.relative_to(ROOT).parts[0] != "evaluate"}
    tree |= {p.relative_to(ROOT.parent).as_posix() for p in EVALUATE.glob("*.py") if p.name != "__init__.py"}
    assert sorted(tree - listed) == [] and sorted(listed - tree) == []

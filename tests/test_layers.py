"""The structure ARCHITECTURE.md draws: the layer order of its "Layers" table, no import cycle, commands that import
no other command, its file tables, and at most ten parameters per function.

Every import counts, top-level or inside a function, `TYPE_CHECKING` ones included, absolute or relative: a deferred
import that runs up a layer still ties the lower layer to the higher one. A name in a string (a registry's lazy
"module:attribute", the command modules `failmode.cli` loads by name) is not an import.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import failmode
from failmode.cli import COMMANDS

ROOT = Path(failmode.__file__).parent
REPO = ROOT.parent
#: folders at the top of the repository that import as `failmode.<name>` (symlinked into failmode/)
TOP_FOLDERS = ("evaluate", "builders", "cards")
MAX_PARAMETERS = 10


# -- the tree ---------------------------------------------------------------------------------------------------------

def read_tree(repo: Path = REPO) -> dict[str, tuple[str, str]]:
    """Module name -> (its file relative to the repository, its source), for failmode/ and evaluate/."""
    files = [p for p in (repo / "failmode").rglob("*.py") if p.relative_to(repo / "failmode").parts[0] not in TOP_FOLDERS]
    files += [p for folder in TOP_FOLDERS for p in (repo / folder).rglob("*.py")]
    out = {}
    for path in sorted(files):
        rel = path.relative_to(repo)
        parts = list(rel.with_suffix("").parts)
        if parts[0] in TOP_FOLDERS:
            parts.insert(0, "failmode")
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = (rel.as_posix(), path.read_text(encoding="utf-8"))
    return out


def tree_units(repo: Path = REPO) -> set[str]:
    """The units of the tree: failmode's top-level modules and subpackages (data-only folders included)."""
    root = repo / "failmode"
    return ({p.stem for p in root.glob("*.py") if p.name != "__init__.py"}
            | {p.name for p in root.iterdir() if p.is_dir() and p.name != "__pycache__"})


# -- the table --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Place:
    """Where a unit stands: its layer (row of the table), its level in that row, and its rank over all levels."""

    layer: str
    level: int
    levels: int
    rank: int

    def __str__(self) -> str:
        return self.layer if self.levels == 1 else f"{self.layer}, level {self.level + 1} of {self.levels}"


def parse_layers(text: str) -> dict[str, Place]:
    """ARCHITECTURE.md's "## Layers" table: rows are layers, the first at the bottom; in a row, `;` separates levels
    (the lower first) and the units of one level (in backticks; text in parentheses is commentary) are side by side.
    A dotted unit (`models.setup`) is a module that has its own place apart from its package."""
    section = text[text.index("## Layers"):]
    section = section[:section.index("\n## ", 1)]
    places: dict[str, Place] = {}
    rank = 0
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("layer", "") or set(cells[0]) <= {"-"}:
            continue
        units = cells[1]
        while re.search(r"\([^()]*\)", units):
            units = re.sub(r"\([^()]*\)", "", units)
        levels = [re.findall(r"`([^`]+)`", part) for part in units.split(";")]
        for level, names in enumerate(levels):
            for name in names:
                assert name not in places, f"ARCHITECTURE.md's layer table lists {name!r} twice"
                places[name] = Place(cells[0], level, len(levels), rank)
            rank += 1
    return places


def unit_of(module: str, places: Mapping[str, object]) -> str | None:
    """The unit a module belongs to: the longest dotted name the table lists that starts it, else its top-level name
    under failmode; None for the package `failmode` itself (its `__init__` holds only the version)."""
    parts = module.split(".")
    if parts[0] != "failmode" or len(parts) == 1:
        return None
    for end in range(len(parts), 2, -1):
        if ".".join(parts[1:end]) in places:
            return ".".join(parts[1:end])
    return parts[1]


# -- imports ----------------------------------------------------------------------------------------------------------

def imports(module: str, path: str, source: str, known: Mapping[str, object]) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import statement of a module, deferred and relative ones included;
    `from package import name` imports the module `package.name` where that is a module of `known`."""
    package = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                    if node.level else node.module or "")
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base


@dataclass(frozen=True)
class Edge:
    """One import of one unit by another, where it is written."""

    where: str
    source: str
    target: str
    source_module: str
    target_module: str


def edges(modules: Mapping[str, tuple[str, str]], places: Mapping[str, object]) -> list[Edge]:
    """Every import from one module of failmode to another, with both modules' units."""
    out = []
    for module, (path, source) in modules.items():
        for line, target in imports(module, path, source, modules):
            a, b = unit_of(module, places), unit_of(target, places)
            if a and b:
                out.append(Edge(f"{path}:{line}", a, b, module, target))
    return out


def layer_violations(modules: Mapping[str, tuple[str, str]], places: Mapping[str, Place],
                     subcommands: tuple[str, ...]) -> list[str]:
    """Each import of a unit of a higher place, of a unit the table does not list, and each command module importing
    another command (the shared `_common` / `_discovery` helpers are not commands), as one line naming file:line."""
    out = []
    for e in edges(modules, places):
        if e.source == e.target:
            if (e.source == "commands" and e.target_module.split(".")[-1] in subcommands
                    and e.target_module != e.source_module):
                out.append(f"{e.where}: command module {e.source_module} imports command module {e.target_module} "
                           "(commands share code through commands/_common.py or the library)")
            continue
        missing = [u for u in (e.source, e.target) if u not in places]
        if missing:
            out.append(f"{e.where}: {e.source} imports {e.target}, but {' and '.join(missing)} stands in no layer of "
                       "ARCHITECTURE.md")
        elif places[e.target].rank > places[e.source].rank:
            higher = "a higher level of its layer" if places[e.target].layer == places[e.source].layer else "a higher layer"
            out.append(f"{e.where}: {e.source} ({places[e.source]}) imports {e.target} ({places[e.target]}), {higher}")
    return sorted(set(out))


def import_graph(modules: Mapping[str, tuple[str, str]], places: Mapping[str, object]) -> dict[str, dict[str, set[str]]]:
    """unit -> unit it imports -> the files and lines that do."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for e in edges(modules, places):
        if e.source != e.target:
            graph[e.source][e.target].add(e.where)
    return graph


def cycles(graph: Mapping[str, Mapping[str, object]]) -> list[list[str]]:
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


def _architecture() -> str:
    return (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")


# -- tests ------------------------------------------------------------------------------------------------------------

def test_the_layer_table_lists_every_unit_of_the_tree_and_no_other():
    places = parse_layers(_architecture())
    listed = {u.split(".")[0] for u in places}
    assert sorted(tree_units() - listed) == [], "units in no layer of ARCHITECTURE.md"
    assert sorted(listed - tree_units()) == [], "units ARCHITECTURE.md's layer table lists that the tree lacks"
    modules = read_tree()
    assert sorted(u for u in places if "." in u and f"failmode.{u}" not in modules) == []


def test_the_table_reads_as_written():
    places = parse_layers(_architecture())
    assert places["errors"].rank == 0 and places["errors"].layer == "foundations"
    assert places["mining"].layer == places["generation"].layer == places["evaluate"].layer == "stages"
    assert places["mining"].rank < places["generation"].rank == places["evaluate"].rank  # "(both above mining)"
    assert places["features"].rank < places["models"].rank and places["world"].rank < places["discovery"].rank
    assert places["dataset"].rank < places["commands"].rank < places["cli"].rank  # cli loads the commands


def test_no_unit_imports_a_higher_layer():
    found = layer_violations(read_tree(), parse_layers(_architecture()), COMMANDS)
    assert not found, "imports against ARCHITECTURE.md's layers:\n" + "\n".join(found)


def test_a_planted_import_from_a_higher_layer_is_reported():
    """A copy of the tree's module map with modules added that run up the layers, in every form an import takes."""
    places = parse_layers(_architecture())
    modules = dict(read_tree())
    modules["failmode.data.x"] = ("failmode/data/x.py", "import numpy\nfrom failmode.generation import plan\n")
    modules["failmode.mining.y"] = ("failmode/mining/y.py", (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from failmode.evaluate.pipeline import EvalSpec\n"
        "def f():\n"
        "    from ..generation import run\n"
        "    from . import mine\n"))
    modules["failmode.io2"] = ("failmode/io2.py", "import failmode.world.demo as demo\n")
    modules["failmode.commands.z"] = ("failmode/commands/z.py", (
        "from failmode.commands import mine\nfrom failmode.commands._common import add_mode_argument\n"))
    found = set(layer_violations(modules, places, (*COMMANDS, "z"))) - set(layer_violations(read_tree(), places, COMMANDS))
    assert sorted(found) == [
        "failmode/commands/z.py:1: command module failmode.commands.z imports command module failmode.commands.mine "
        "(commands share code through commands/_common.py or the library)",
        "failmode/data/x.py:2: data (data and files) imports generation (stages, level 2 of 2), a higher layer",
        "failmode/io2.py:1: io2 imports world, but io2 stands in no layer of ARCHITECTURE.md",
        "failmode/mining/y.py:3: mining (stages, level 1 of 2) imports evaluate (stages, level 2 of 2), "
        "a higher level of its layer",
        "failmode/mining/y.py:5: mining (stages, level 1 of 2) imports generation (stages, level 2 of 2), "
        "a higher level of its layer",
    ]


def test_a_module_listed_apart_from_its_package_has_its_own_place():
    """`models.setup` above `features` while the rest of `models` stays below it: no cycle, no violation."""
    table = ("## Layers\n\n| layer | units |\n|---|---|\n| low | `models`; `features`; `models.setup` |\n"
             "| high | `mining` |\n\n## Next\n")
    places = parse_layers(table)
    modules = {
        "failmode.models.classifier": ("failmode/models/classifier.py", ""),
        "failmode.models.setup": ("failmode/models/setup.py", "from failmode.features import FeatureExtractor\n"),
        "failmode.features": ("failmode/features.py", "from failmode.models.classifier import create_classifier\n"),
        "failmode.mining.mine": ("failmode/mining/mine.py", "from failmode.models.setup import setup\n"),
    }
    assert layer_violations(modules, places, ()) == []
    assert cycles(import_graph(modules, places)) == []
    modules["failmode.models.classifier"] = ("failmode/models/classifier.py", "from failmode import features\n")
    assert layer_violations(modules, places, ()) == [
        "failmode/models/classifier.py:1: models (low, level 1 of 3) imports features (low, level 2 of 3), "
        "a higher level of its layer"]


def test_no_import_cycle_between_units():
    places = parse_layers(_architecture())
    graph = import_graph(read_tree(), places)
    found = cycles(graph)
    detail = [f"{a} -> {b} ({', '.join(sorted(graph[a][b]))})" for comp in found for a in comp for b in comp
              if b in graph.get(a, {})]
    assert not found, f"import cycles: {found}; edges: {detail}"


def test_the_graph_sees_known_edges():
    graph = import_graph(read_tree(), parse_layers(_architecture()))
    assert "mining" in graph["evaluate"] and "dataset" in graph["generation"]  # the analysis finds real imports
    assert "discovery" in graph["commands"] and "errors" in graph["dataset"]  # deferred ones and from-imports


def test_no_function_takes_more_than_ten_parameters():
    """Self / cls are not counted; *args and **kwargs count one each. Longer lists become an options object."""
    found = []
    for _module, (path, source) in read_tree().items():
        for node in ast.walk(ast.parse(source, path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if p]
                if names[:1] in (["self"], ["cls"]):
                    names = names[1:]
                if len(names) > MAX_PARAMETERS:
                    found.append(f"{path}:{node.lineno}: {node.name} takes {len(names)} parameters")
    assert not found, f"functions over {MAX_PARAMETERS} parameters:\n" + "\n".join(sorted(found))


def test_architecture_lists_every_module_file_by_file():
    """ARCHITECTURE.md's "Files" section names each module under its folder, and nothing that is not there."""
    text = _architecture()
    section = text[text.index("## Files"):]
    listed: set[str] = set()
    folder = None
    for line in section.splitlines():
        if m := re.match(r"\*\*`([^`]+)/`\*\*", line):
            folder = m[1]
        elif (m := re.match(r"\| `([^`]+\.py)` \|", line)) and folder:
            listed.add(f"{folder}/{m[1]}")
    tree = {path for path, _ in read_tree().values() if not path.endswith("__init__.py")}
    assert sorted(tree - listed) == [] and sorted(listed - tree) == []

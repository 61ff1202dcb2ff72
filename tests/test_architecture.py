"""The package's architecture, checked from the source: an import graph with no cycles whose layers only point down.

Why a test: the redesign cut ``lbw_env`` into layers (base < plant < control < env < evaluation | learning |
integrations < policies < the CLIs) so that each layer can be read, tested and replaced knowing only the layers
below it. Nothing but a test keeps that true as code moves: a convenient upward import, or a function-local
import that quietly dodges a cycle, works at runtime and is invisible in review.

The graph is read with :mod:`ast`, not by importing anything, so the test is fast, needs no data and sees every
import, including the function-local ones (which run later, but still couple the modules) and those under
``if TYPE_CHECKING:`` (which never run; they are kept apart and only required not to hide a runtime cycle, and
to respect the layers like any other import). ``importlib.import_module("...")`` with a string is not an import
statement and is not seen; the package root's lazy public names use it on purpose (see the base layer below).

Run ``python tests/test_architecture.py`` to print the first-party import graph, layer by layer, and every
violation at once.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Literal

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lbw_env", "policies")
"""Folders whose modules are parsed (every ``*.py`` below them)."""
CLIS = ("evaluate", "train_policy")
"""Top-level scripts, parsed too: they sit above everything, so nothing may import them."""
FIRST_PARTY = frozenset({*PACKAGES, *CLIS, "tests"})

MAX_MODULE_LINES = 450
"""One job per module: past this a module is doing two (measured: the biggest single-job modules are ~330)."""
MAX_CLI_LINES = 150
"""The CLIs only parse arguments and wire ``policies`` into the engine; anything longer is engine code."""

Kind = Literal["top", "local", "type_checking"]


@dataclasses.dataclass(frozen=True)
class Layer:
    """A named set of modules. ``rank`` orders layers: a module may import modules of its own or lower rank."""

    name: str
    rank: int
    modules: tuple[str, ...]
    """Exact module names, or ``pkg.*`` for a package and everything below it."""
    why: str

    def holds(self, module: str) -> bool:
        return any(
            module == p.removesuffix(".*") or (p.endswith(".*") and module.startswith(p[:-1])) for p in self.modules
        )


LAYERS: tuple[Layer, ...] = (
    Layer(
        "base",
        0,
        ("lbw_env", "lbw_env.errors", "lbw_env.config", "lbw_env.cache"),
        "bad-input errors, config machinery and atomic cache files; the package root is here too: it registers the "
        "gym ids and resolves its public names lazily by string (PEP 562), so that `import lbw_env` stays free of "
        "torch",
    ),
    Layer("plant", 1, ("lbw_env.plant.*",), "the trained model: data, model, governed optimizer, Plant"),
    Layer("control", 2, ("lbw_env.control.*",), "observations, envelope, reward, governance, Governor protocol"),
    Layer("env", 3, ("lbw_env.env", "lbw_env.render", "lbw_env.scenarios"), "the Gymnasium env, its frames, scenarios"),
    Layer("evaluation", 4, ("lbw_env.evaluation.*",), "suites, executors, records, reports"),
    Layer("learning", 4, ("lbw_env.learning.*",), "SB3 training of learned governors"),
    Layer("integrations", 4, ("lbw_env.integrations.*",), "governance inside real torch / HF training loops"),
    Layer("policies", 5, ("policies.*",), "rule and learned governors, built on lbw_env.control"),
    Layer("cli", 6, CLIS, "evaluate.py, train_policy.py: wire policies into the engine"),
)

ALLOWED_SIBLING_EDGES: dict[tuple[str, str], str] = {}
"""(importer layer, imported layer) pairs of equal rank that may import each other, each with its reason.
Empty: evaluation, learning and integrations are independent consumers of the env and the control layer."""


@dataclasses.dataclass(frozen=True)
class Import:
    """One first-party import statement (one name of it), resolved to the module it loads."""

    source: str
    target: str
    path: str
    line: int
    kind: Kind

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" + ("" if self.kind == "top" else f", {self.kind.replace('_', '-')}")
        return f"{self.source} -> {self.target}  ({where})"


# ----------------------------------------------------------------------------------------------------------
# Reading the graph
# ----------------------------------------------------------------------------------------------------------


@cache
def modules() -> dict[str, Path]:
    """Module name -> file, for every parsed module (``pkg/__init__.py`` is the module ``pkg``)."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for cli in CLIS:
        if (REPO / f"{cli}.py").is_file():
            out[cli] = REPO / f"{cli}.py"
    return out


def layer_of(module: str) -> Layer | None:
    return next((layer for layer in LAYERS if layer.holds(module)), None)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, Kind]]:
    """Every import statement with where it runs: at import time, inside a function, or never (TYPE_CHECKING)."""

    def visit(node: ast.AST, kind: Kind) -> Iterator[tuple[ast.Import | ast.ImportFrom, Kind]]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, kind
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, "type_checking")
            for child in node.orelse:
                yield from visit(child, kind)
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and kind == "top":
            kind = "local"  # a class body runs at import time; a function body only when called
        for child in ast.iter_child_nodes(node):
            yield from visit(child, kind)

    yield from visit(tree, "top")


def _resolve(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The modules a statement loads: ``from pkg import name`` loads ``pkg.name`` when that is a module."""
    known = modules()
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield submodule if submodule in known else base


@cache
def imports() -> tuple[Import, ...]:
    """Every first-party import of every parsed module, in file order."""
    out: dict[Import, None] = {}  # ordered set: ``from x import a, b`` is one import of x
    for module, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = str(path.relative_to(REPO))
        for node, kind in _statements(tree):
            for target in _resolve(module, path, node):
                if target.partition(".")[0] in FIRST_PARTY and target != module:
                    out[Import(module, target, rel, node.lineno, kind)] = None
    return tuple(out)


def runtime_graph() -> dict[str, list[Import]]:
    """source -> its imports that can run (top-level and function-local), between parsed modules only."""
    graph: dict[str, list[Import]] = {m: [] for m in modules()}
    for imp in imports():
        if imp.kind != "type_checking" and imp.target in graph:
            graph[imp.source].append(imp)
    return graph


def find_path(graph: dict[str, list[Import]], start: str, goal: str) -> list[Import] | None:
    """A shortest chain of imports from ``start`` to ``goal`` (breadth first), or None."""
    parents: dict[str, Import | None] = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for imp in graph.get(node, []):
                if imp.target in parents:
                    continue
                parents[imp.target] = imp
                if imp.target == goal:
                    chain = [imp]
                    while chain[0].source != start:
                        chain.insert(0, parents[chain[0].source])  # type: ignore[arg-type]
                    return chain
                nxt.append(imp.target)
        frontier = nxt
    return None


def find_cycles(graph: dict[str, list[Import]]) -> list[list[Import]]:
    """One shortest cycle through each strongly connected component that has one (Tarjan, then BFS)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for imp in graph[v]:
            w = imp.target
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(component)

    for v in graph:
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        if len(component) > 1:
            start = min(component)
            sub = {m: [i for i in graph[m] if i.target in component] for m in component}
            cycles.append(_close(sub, start))
    return cycles


def _close(graph: dict[str, list[Import]], start: str) -> list[Import]:
    """A shortest cycle from ``start`` back to itself."""
    best: list[Import] | None = None
    for first in graph[start]:
        rest = find_path(graph, first.target, start)
        if rest is not None and (best is None or len(rest) + 1 < len(best)):
            best = [first, *rest]
    assert best is not None, f"{start} is in a cycle, but no path closes it"
    return best


def format_chain(chain: Iterable[Import]) -> str:
    return "\n    ".join(str(imp) for imp in chain)


# ----------------------------------------------------------------------------------------------------------
# The rules, each as a list of violations (empty: the rule holds)
# ----------------------------------------------------------------------------------------------------------


def unplaced_modules() -> list[str]:
    return [f"{m} ({p.relative_to(REPO)})" for m, p in modules().items() if layer_of(m) is None]


def unresolved_imports() -> list[str]:
    """Imports of first-party modules that do not exist: broken at runtime, and invisible to the cycle search."""
    known = modules()
    return [str(imp) for imp in imports() if imp.target not in known and imp.target.partition(".")[0] != "tests"]


def cycles() -> list[str]:
    return ["cycle:\n    " + format_chain(chain) for chain in find_cycles(runtime_graph())]


def type_checking_cycles() -> list[str]:
    """TYPE_CHECKING imports whose target imports the importer back at runtime: a cycle hidden from the runtime."""
    graph = runtime_graph()
    out = []
    for imp in imports():
        if imp.kind == "type_checking" and (back := find_path(graph, imp.target, imp.source)):
            out.append(f"{imp}\n    closes a runtime cycle:\n    {format_chain(back)}")
    return out


def policies_from_lbw_env() -> list[str]:
    return [
        str(imp)
        for imp in imports()
        if imp.source.partition(".")[0] == "lbw_env" and imp.target.partition(".")[0] != "lbw_env"
    ]


def layer_violations() -> list[str]:
    out = []
    for imp in imports():
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src is None or dst is None or src.name == dst.name:
            continue  # unplaced modules are reported by their own test
        if dst.rank > src.rank:
            out.append(f"{src.name} -> {dst.name} (upward): {imp}")
        elif dst.rank == src.rank and (src.name, dst.name) not in ALLOWED_SIBLING_EDGES:
            out.append(f"{src.name} -> {dst.name} (sibling layers): {imp}")
    return out


def oversized_modules() -> list[str]:
    out = []
    for module, path in modules().items():
        limit = MAX_CLI_LINES if module in CLIS else MAX_MODULE_LINES
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            out.append(f"{path.relative_to(REPO)}: {lines} lines (limit {limit})")
    return out


def _report(title: str, violations: list[str]) -> str:
    return f"{title} ({len(violations)}):\n  " + "\n  ".join(violations)


def _check(title: str, violations: list[str]) -> None:
    """Fail with the violations only, one per line (pytest's assertion rewriting would print them twice)."""
    if violations:
        pytest.fail(_report(title, violations), pytrace=False)


# ----------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------


def test_graph_is_read() -> None:
    """Guard the guard: a parser that silently found nothing would pass every rule below."""
    names = modules()
    assert {"lbw_env", "lbw_env.plant.trainer", "lbw_env.env", "policies"} <= set(names)
    edges = {(i.source, i.target) for i in imports()}
    assert ("lbw_env.env", "lbw_env.plant.trainer") in edges  # from .plant.trainer import Plant
    assert ("lbw_env.plant.trainer", "lbw_env.plant.runtime") in edges  # from . import runtime
    assert any(i.kind == "type_checking" for i in imports())
    assert find_cycles({"a": [Import("a", "b", "a.py", 1, "top")], "b": [Import("b", "a", "b.py", 1, "local")]})


def test_every_module_is_in_a_layer() -> None:
    _check("modules outside every layer; move them or add a layer", unplaced_modules())


def test_first_party_imports_exist() -> None:
    _check("imports of first-party modules that do not exist", unresolved_imports())


def test_no_import_cycles() -> None:
    """Function-local imports count: importing lazily to dodge a cycle leaves the modules just as entangled."""
    _check("import cycles (module -> module)", cycles())


def test_type_checking_imports_hide_no_cycle() -> None:
    _check("TYPE_CHECKING imports that dodge a cycle", type_checking_cycles())


def test_lbw_env_never_imports_policies() -> None:
    """The engine holds governors only through lbw_env.control.protocol; the CLIs pass policies in."""
    _check("lbw_env importing policies or a CLI", policies_from_lbw_env())


def test_layers_import_only_downward() -> None:
    _check("imports against the layer order (module -> module)", layer_violations())


def heavy_imports(module: str, heavy: tuple[str, ...]) -> list[str]:
    """The modules of the ``heavy`` packages that importing ``module`` loads, in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    # stderr lines: "import time: <self us> | <cumulative us> | <indented module name>"
    loaded = {m.group(1) for m in re.finditer(r"^import time:[^|]*\|[^|]*\|\s*([\w.]+)", proc.stderr, re.M)}
    assert module in loaded, proc.stderr[-2000:]
    return sorted(m for m in loaded if m.partition(".")[0] in heavy)


def test_import_lbw_env_loads_neither_torch_nor_transformers() -> None:
    """``import lbw_env`` registers the gym ids; a process that only wants those (gym.make's lookup, a CLI's
    --help, a Ray driver) must not pay seconds for torch and transformers."""
    heavy = heavy_imports("lbw_env", ("torch", "transformers"))
    assert not heavy, f"import lbw_env loaded {', '.join(heavy[:10])}{' ...' if len(heavy) > 10 else ''}"


def test_reading_a_training_config_loads_neither_sb3_nor_scipy() -> None:
    """``train_policy.py --help-config`` and a bad config's one-line error read the config only: the seconds of
    stable_baselines3 and scipy belong to training (measured: 0.3 s instead of 4 s to import the config)."""
    heavy = heavy_imports("lbw_env.learning.config", ("stable_baselines3", "scipy"))
    assert not heavy, f"import lbw_env.learning.config loaded {', '.join(heavy[:10])}"


def test_module_sizes() -> None:
    _check("modules over their size limit", oversized_modules())


def main() -> None:
    """Print the first-party graph by layer, the TYPE_CHECKING imports, and all violations."""
    by_layer: dict[str, list[Import]] = {}
    for imp in imports():
        layer = layer_of(imp.source)
        by_layer.setdefault(layer.name if layer else "(no layer)", []).append(imp)
    for layer in [*LAYERS, None]:
        name = layer.name if layer else "(no layer)"
        if name in by_layer:
            print(f"[{name}]" + (f" rank {layer.rank}: {layer.why}" if layer else ""))
            for imp in by_layer[name]:
                if imp.kind != "type_checking":
                    print(f"  {imp}")
    print("[TYPE_CHECKING imports]")
    for imp in imports():
        if imp.kind == "type_checking":
            print(f"  {imp}")
    checks = {
        "modules outside every layer": unplaced_modules(),
        "imports of first-party modules that do not exist": unresolved_imports(),
        "import cycles": cycles(),
        "TYPE_CHECKING imports that dodge a cycle": type_checking_cycles(),
        "lbw_env importing policies or a CLI": policies_from_lbw_env(),
        "imports against the layer order": layer_violations(),
        "modules over their size limit": oversized_modules(),
    }
    for title, bad in checks.items():
        print(_report(title, bad) if bad else f"{title}: none")


if __name__ == "__main__":
    main()

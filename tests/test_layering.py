"""The packages import one way (../shared/design/layout.md): no two subpackages of partialseg import
each other, directly or round a longer loop, counting imports inside functions too (a cycle there
is one a reader must untangle, even where Python tolerates it). ``if TYPE_CHECKING`` imports are
annotations only and do not count."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import partialseg

ROOT = Path(partialseg.__file__).parent


def package_imports() -> dict[str, dict[str, list[str]]]:
    """unit → imported unit → ["file:line", ...]; a unit is a subpackage or a top-level module."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT).parts
        unit = rel[0] if len(rel) > 1 else rel[0][:-3]
        tree = ast.parse(f.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("partialseg."):
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.module == "partialseg":
                names = [f"partialseg.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("partialseg.")]
            else:
                continue
            for name in names:
                target = name.split(".")[1]
                if target != unit:
                    out[unit][target].append(f"{f.relative_to(ROOT)}:{node.lineno}")
    return out


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_loop():
    graph = {"a": {"b": ["x"]}, "b": {"c": ["y"]}, "c": {"a": ["z"]}, "d": {"a": ["w"]}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_between_packages():
    graph = package_imports()
    assert graph["inference"] and graph["training"]  # the scan sees imports at all
    found = cycles(graph)
    detail = {tuple(c): {f"{a} -> {b}": graph[a][b][:3] for a in c for b in c if b in graph[a]} for c in found}
    assert not found, detail


def test_low_layers_import_nothing_above_them():
    graph = package_imports()
    low = {"config", "registry", "labels", "errors", "io", "runtime", "checkpoint", "progress", "locking"}
    for unit in low:
        assert set(graph.get(unit, {})) <= low, (unit, dict(graph.get(unit, {})))

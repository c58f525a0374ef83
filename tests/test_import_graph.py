"""The import graph inside ``autoglm_compress/targets`` has no circles (lazy imports inside
functions count: they are circles deferred, not removed), and the ncnn and TFLite emitters do not
reach into each other — what they share lives in ``targets/ir_reads.py`` and ``targets/rules.py``."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "autoglm_compress"


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph(prefix: str) -> dict[str, set[str]]:
    mods = {_module(p): p for p in (PKG / prefix.split(".", 1)[1].replace(".", "/")).rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                if n in mods and n != mod:
                    edges[mod].add(n)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_inside_targets():
    assert _cycles(_graph("autoglm_compress.targets")) == []


def test_ncnn_and_tflite_emitters_do_not_import_each_other():
    edges = _graph("autoglm_compress.targets")
    for a, b in (("ncnn", "tflite"), ("tflite", "ncnn")):
        crossing = sorted((m, n) for m, ns in edges.items() if m.startswith(f"autoglm_compress.targets.{a}.")
                          for n in ns if n.startswith(f"autoglm_compress.targets.{b}."))
        assert crossing == [], crossing


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_config_imports_no_target():
    """The config tree is data: it names targets, it does not load them (no config → targets)."""
    tree = ast.parse((PKG / "config.py").read_text())
    mods = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in mods if m.startswith("autoglm_compress.targets")]


def test_tests_import_no_private_names():
    """Tests use the package as its users and its modules' public surface do: no ``_private``
    names imported or reached through a module (test seams are public names)."""
    found = []
    for p in sorted((PKG.parent / "tests").rglob("*.py")):
        tree = ast.parse(p.read_text())
        mods = set()
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("autoglm_compress"):
                found += [f"{p.name}: {n.module}.{a.name}" for a in n.names if a.name.startswith("_")]
                mods |= {a.asname or a.name for a in n.names}
            elif isinstance(n, ast.Import):
                mods |= {(a.asname or a.name).split(".")[-1] for a in n.names
                         if a.name.startswith("autoglm_compress")}
        found += [f"{p.name}: {n.value.id}.{n.attr}" for n in ast.walk(tree)
                  if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                  and n.value.id in mods and n.attr.startswith("_")
                  and not n.attr.startswith("__")]
    assert found == []

"""The package's shape: no import cycle among its modules (lazy and type-only imports included),
and no arm-type string test outside the arms package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "lorafair"


def modules(root: Path = SRC) -> dict[str, Path]:
    out = {}
    for p in sorted((root / "lorafair").rglob("*.py")):
        name = ".".join(p.relative_to(root).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its text (top level, inside functions,
    under TYPE_CHECKING). ``from pkg import name`` is an edge to ``pkg.name`` when that is a module,
    else to ``pkg``; relative imports are resolved against the module's package."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in mods else base)
            graph[m] |= {t for t in targets if t in mods and t != m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_the_cycle_finder_finds_cycles_lazy_imports_included(tmp_path):
    pkg = tmp_path / "lorafair"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from lorafair.a import y\n")
    (pkg / "a" / "y.py").write_text("def f():\n    from lorafair.a.x import g\n")
    (pkg / "a" / "z.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import w\n")
    (pkg / "a" / "w.py").write_text("from .z import q\n")
    (pkg / "b.py").write_text("from lorafair.a import x\n")  # into the cycle, not part of it
    found = cycles(import_graph(modules(tmp_path)))
    assert sorted(found) == [["lorafair.a.w", "lorafair.a.z"], ["lorafair.a.x", "lorafair.a.y"]]


def test_no_import_cycles():
    found = cycles(import_graph(modules()))
    assert found == [], f"import cycles (lazy and type-only imports count): {found}"


ARM_TYPE_TEST = re.compile(r"\.type\s*(==|!=|\bnot in\b|\bin\b)\s*[(\[\"'A-Z]")


def test_the_arm_type_pattern_catches_every_form():
    for s in ('arm.type == "base"', "a.type != 'full'", "spec.type in REFERENCES", 'x.type not in ("lora",)',
              "arm.type in [\"full\"]"):
        assert ARM_TYPE_TEST.search(s), s
    assert not ARM_TYPE_TEST.search('probs.device.type != "cpu"'.replace(".type", ".kind"))


def test_no_arm_type_string_tests_outside_the_arms_package():
    hits = []
    for p in sorted(PKG.rglob("*.py")):
        if (PKG / "arms") in p.parents:
            continue
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if ARM_TYPE_TEST.search(line) and not re.search(r"\bdev(ice)?\.type\b", line):
                hits.append(f"{p.relative_to(PKG)}:{i}: {line.strip()}")
    assert hits == [], "ask the arm's kind (lorafair.arms.kinds) instead of testing its type string:\n" + "\n".join(hits)


def test_one_home_for_percentile_intervals():
    from lorafair.stats import intervals, metrics

    assert metrics.percentile is intervals.percentile_counted
    hard = re.compile(r"percentile\([^)]*2\.5|quantile\([^)]*0\.025|97\.5")
    hits = [f"{p.relative_to(PKG)}:{i}" for p in sorted(PKG.rglob("*.py")) if p.name != "intervals.py"
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if hard.search(line)]
    assert hits == [], f"hard-coded interval levels (use lorafair.stats.intervals.percentile): {hits}"


def test_no_stage_imports_the_runner():
    graph = import_graph(modules())
    importers = sorted(m for m, targets in graph.items() if "lorafair.study.runner" in targets)
    assert importers == ["lorafair.api", "lorafair.cli"], importers  # the two front ends, nothing else


def test_the_package_root_holds_few_modules():
    root = sorted(p.name for p in PKG.glob("*.py"))
    assert len(root) <= 6, root

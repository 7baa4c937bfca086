"""The benchmark scripts share one harness, import each other without cycles, and `make bench` runs every one.

The scripts are read with ast (no benchmark runs, nothing heavy is imported); the harness's writer and figure
helper run into a tmp folder.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
TREES = {p.stem: ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in sorted(BENCH.glob("*.py"))}
RUNNER = "run_all"


def _imports(tree: ast.Module) -> set[str]:
    """The top-level modules ``tree`` imports anywhere, at its top or inside a function."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _is_script(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)


def _calls(tree: ast.Module, name: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and (getattr(node.func, "id", None) == name or getattr(node.func, "attr", None) == name)]


SCRIPTS = sorted(name for name, tree in TREES.items() if _is_script(tree) and name != RUNNER)


def test_benchmark_imports_have_no_cycle():
    graph = {name: (_imports(tree) & set(TREES)) - {name} for name, tree in TREES.items()}
    state: dict[str, str] = {}  # "open" while on the path being walked, "done" after

    def walk(name: str, path: list[str]) -> list[str] | None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":  # on the path: the path from it back to it is a cycle
                return [*path[path.index(dep):], dep]
            if dep not in state and (cycle := walk(dep, [*path, dep])):
                return cycle
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state and (cycle := walk(name, [name])):
            pytest.fail("import cycle among benchmarks/: " + " -> ".join(cycle))


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_writes_and_plots_through_the_harness(name):
    tree = TREES[name]
    from_harness = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.module == "harness" for alias in node.names}
    writes = _calls(tree, "write_results")
    assert "write_results" in from_harness and writes, f"{name}.py must write its results with harness.write_results"
    for call in writes:
        assert any(k.arg == "summary" for k in call.keywords), f"{name}.py line {call.lineno}: no summary="
    assert "matplotlib" not in _imports(tree), f"{name}.py sets up matplotlib itself; use harness.figure"
    assert not _calls(tree, "savefig"), f"{name}.py saves a figure itself; use harness.save_figure"


def test_make_bench_runs_every_script(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import run_all

    listed = {b.script.removesuffix(".py") for b in run_all.BENCHMARKS}
    assert listed == set(SCRIPTS), f"benchmarks/run_all.py lists {sorted(listed)}, the scripts are {SCRIPTS}"
    assert len({b.name for b in run_all.BENCHMARKS}) == len(run_all.BENCHMARKS)
    make = (ROOT / "Makefile").read_text()
    recipe = make.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    assert "benchmarks/run_all.py" in recipe and "$(BENCH)" in recipe


def test_harness_writes_the_shared_schema(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import harness

    stale = {"benchmark": "old", "summary": {"old": 1}, "machine": {"cpu": "old"}, "records": [{"ndcg@10": 0.5}]}
    path = harness.write_results("demo", stale, summary={"ratio": np.float32(1.5), "n": np.int64(3)},
                                 path=tmp_path / "demo.json")
    written = json.loads(path.read_text())
    assert tuple(written)[:5] == harness.SCHEMA_KEYS
    assert written["benchmark"] == "demo" and written["summary"] == {"ratio": 1.5, "n": 3}
    assert written["records"] == [{"ndcg@10": 0.5}] and written["machine"]["cpu"] != "old"
    assert {"cores", "commit", "date", "load_average_1m_at_start"} <= set(written["machine"])
    assert written["command"].startswith("python ") and written["seconds"] >= 0


def test_harness_saves_figures(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(BENCH))
    import harness

    fig, ax = harness.figure(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    assert harness.save_figure(fig, tmp_path / "demo.png").stat().st_size > 0

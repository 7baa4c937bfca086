"""The package's imports point only downward: a module may import its own layer or the ones below it.

Layers, bottom up (``docs/concepts.md``, "Layers"): foundations any module may use; data; models; evaluation and
artifacts; strategies and experiments; config (the job specs, assembled from the components' own spec classes);
training and serving (side by side: neither imports the other); tuning and pipelines (they drive training, and
serving); the entry points (cli,
demo, config.shipped, which loads every kind of spec). Every ``import`` and ``from ... import`` is read with
``ast``, those inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path


PKG = Path(__file__).resolve().parents[2] / "platform" / "lmrec"

FOUNDATIONS = ("lmrec", "lmrec.config.base", "lmrec.storage", "lmrec.plotting")
LAYERS = [
    ("lmrec.data",),
    ("lmrec.models",),
    ("lmrec.evaluation", "lmrec.artifacts"),
    ("lmrec.strategies", "lmrec.experiments"),
    ("lmrec.config",),
    ("lmrec.training", "lmrec.serving"),
    ("lmrec.tuning", "lmrec.pipelines"),
    ("lmrec.cli", "lmrec.demo", "lmrec.demo_stages", "lmrec.config.shipped"),
]
SIDE_BY_SIDE_APART = [("lmrec.training", "lmrec.serving")]  # same layer, no imports between them


def _owner(module: str, groups) -> str | None:
    """The longest prefix of ``module`` among ``groups`` (so lmrec.config.shipped wins over lmrec.config)."""
    hits = [g for g in groups if module == g or module.startswith(g + ".")]
    return max(hits, key=len) if hits else None


ALL_GROUPS = [g for layer in LAYERS for g in layer]
LAYER_OF = {g: i for i, layer in enumerate(LAYERS) for g in layer}


def _module_name(path: Path, pkg: Path) -> str:
    rel = path.relative_to(pkg.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only: no import at run time)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.module, node.lineno)]
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]  # `from lmrec.config import shipped`
    return [(name, line) for name, line in out if name == "lmrec" or name.startswith("lmrec.")]


def _target(name: str, pkg: Path) -> str | None:
    """The module an imported name refers to (a submodule if that file exists, else its package)."""
    parts = name.split(".")
    while parts:
        candidate = pkg.parent.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return None


def _violations(pkg: Path = PKG) -> list[str]:
    bad = []
    for path in sorted(pkg.rglob("*.py")):
        source = _module_name(path, pkg)
        if source in FOUNDATIONS:
            continue
        src_group = _owner(source, ALL_GROUPS)
        assert src_group is not None, f"{source} belongs to no layer: place it in LAYERS"
        for name, line in _imports(path):
            target = _target(name, pkg)
            if target is None or target in FOUNDATIONS or _owner(target, ALL_GROUPS) == src_group:
                continue
            dst_group = _owner(target, ALL_GROUPS)
            where = f"{path.relative_to(pkg.parent)}:{line} {source} -> {target}"
            if LAYER_OF[dst_group] > LAYER_OF[src_group]:
                bad.append(f"upward: {where}")
            elif {src_group, dst_group} in [set(p) for p in SIDE_BY_SIDE_APART]:
                bad.append(f"sideways: {where}")
    return list(dict.fromkeys(bad))  # `from a.b import c` names a.b and a.b.c: one finding


def test_every_module_belongs_to_a_layer_and_imports_point_down():
    assert _violations() == []


def test_the_walk_sees_a_lazy_upward_import_and_skips_type_checking(tmp_path):
    """The checker itself, on a copy of the package: a low layer importing a high one inside a function is caught,
    the same import under ``if TYPE_CHECKING:`` is not."""
    pkg = tmp_path / "lmrec"
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("specs", "__pycache__"))
    (pkg / "data" / "probe.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lmrec.tuning.study import Study\n"
        "def f():\n    from lmrec.serving.app import build_app\n    return build_app\n")
    (pkg / "training" / "probe.py").write_text("import lmrec.serving.app\n")
    found = [v for v in _violations(pkg) if "probe" in v]
    assert found == ["upward: lmrec/data/probe.py:5 lmrec.data.probe -> lmrec.serving.app",
                     "sideways: lmrec/training/probe.py:1 lmrec.training.probe -> lmrec.serving.app"], found

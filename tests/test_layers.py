"""The layer rule: imports only go down the pipeline, and no module-level import cycle exists.

Layers, lowest first (a package may import its own modules and any lower layer, never a higher one):

    datasets (the format: schema, manifest, preprocessing)  <- carla_client (simulator client, collector)
    <- training <- perception <- control <- launch

The data flows collect -> datasets -> training -> ...; the dataset *format* sits below the
collector because the collector writes it. ``carla_embedded`` is a simulator, outside the layers:
anyone may import it and it imports nothing of ours. Lazy imports inside functions count too: an
upward import is a wrong dependency wherever it is written.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("datasets", "carla_client", "training", "perception", "control", "launch")
ISOLATED = "carla_embedded"


def _imports(path: Path, module: str):
    """(imported module, line, module-level?) for every import of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    top = {id(n) for n in tree.body}
    pkg = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
                names = [prefix] if node.module else [f"{prefix}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            yield name, node.lineno, id(node) in top


def _modules(root: Path):
    for pkg in (*LAYERS, ISOLATED):
        for path in sorted((root / pkg).rglob("*.py")) if (root / pkg).is_dir() else []:
            rel = path.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield ".".join(parts), path


def layer_violations(root: Path) -> list[str]:
    """Every import that goes up a layer or out of the isolated simulator, named ``file:line: a -> b``."""
    ours = set(LAYERS) | {ISOLATED}
    bad = []
    for module, path in _modules(root):
        src = module.split(".")[0]
        for target, line, _ in _imports(path, module):
            dst = target.split(".")[0]
            if dst not in ours or dst == src:
                continue
            where = f"{path.relative_to(root)}:{line}: {module} imports {target}"
            if src == ISOLATED:
                bad.append(f"{where} (the embedded simulator imports nothing of ours)")
            elif dst != ISOLATED and LAYERS.index(dst) > LAYERS.index(src):
                bad.append(f"{where} (upward: {src} is below {dst})")
    return bad


def import_cycles(root: Path) -> list[str]:
    """Module-level import cycles among our modules, each as ``a -> b -> a``."""
    mods = dict(_modules(root))
    graph = {m: set() for m in mods}
    for module, path in mods.items():
        for target, _, top_level in _imports(path, module):
            if not top_level:
                continue
            while target and target not in mods:  # `from pkg.mod import name` -> pkg.mod
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return cycles


def test_imports_only_go_down_the_layers():
    assert layer_violations(REPO) == []


def test_no_module_level_import_cycle():
    assert import_cycles(REPO) == []


def test_a_planted_upward_import_is_named(tmp_path):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "launch").mkdir()
    (tmp_path / "datasets" / "__init__.py").write_text("")
    (tmp_path / "datasets" / "bad.py").write_text("import os\n\ndef f():\n    from launch.loop import run_drive\n")
    (tmp_path / "launch" / "__init__.py").write_text("")
    (tmp_path / "launch" / "loop.py").write_text("from datasets.schema import CLASSES\n")
    (tmp_path / "carla_embedded").mkdir()
    (tmp_path / "carla_embedded" / "world.py").write_text("from .actors import Actor\nfrom control.gates import x\n")
    bad = layer_violations(tmp_path)
    assert len(bad) == 2
    assert "datasets/bad.py:4: datasets.bad imports launch.loop (upward: datasets is below launch)" in bad
    assert any("carla_embedded/world.py:2" in b and "imports nothing of ours" in b for b in bad)


def test_a_planted_cycle_is_named(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "a.py").write_text("from control.b import g\n")
    (tmp_path / "control" / "b.py").write_text("from . import a\n")
    assert import_cycles(tmp_path) == ["control.a -> control.b -> control.a"]

"""CI guard: no library code deserialises untrusted input unsafely or runs a shell.

A checkpoint, a YAML config or a dataset file is input a user may have downloaded; ``torch.load``
without ``weights_only=True``, ``yaml.load``, ``pickle`` and ``np.load(allow_pickle=True)`` run code
from such a file, ``eval``/``exec`` run code from strings, ``shell=True`` lets a path with a ``;``
run a command. The check parses every module (so comments, strings and ``model.eval()`` do
not count) and names each offence as ``file:line: what``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("carla_client", "carla_embedded", "control", "datasets", "launch", "perception", "training", "scripts")
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "shelve", "marshal"}


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "<expr>")  # f().eval() is not eval()
    return ".".join(reversed(parts))


def offences(source: str, filename: str = "<string>") -> list[str]:
    """``"file:line: what"`` for every unsafe call or import in ``source``."""
    tree = ast.parse(source, filename)
    found = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
                found.append(f"{where}: {name}()")
            elif name == "torch.load" or name.endswith(".torch.load"):
                if not _is_true(kw.get("weights_only")):
                    found.append(f"{where}: torch.load without weights_only=True")
            elif name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
                found.append(f"{where}: {name} (use yaml.safe_load)")
            elif name.endswith(("np.load", "numpy.load")) and _is_true(kw.get("allow_pickle")):
                found.append(f"{where}: {name}(allow_pickle=True)")
            if _is_true(kw.get("shell")):
                found.append(f"{where}: {name}(shell=True)")
    return found


def _library_files() -> list[Path]:
    files = []
    for pkg in PACKAGES:
        files += sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else []
    return files


def test_library_code_has_no_unsafe_deserialisation_or_shell():
    files = _library_files()
    assert len(files) > 20, "the package list is stale"
    found = [o for f in files for o in offences(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert not found, "unsafe calls in library code:\n" + "\n".join(found)


@pytest.mark.parametrize("planted", [
    "import torch\nstate = torch.load(path)\n",
    "import torch\nstate = torch.load(path, weights_only=False)\n",
    "import yaml\ncfg = yaml.load(open(p))\n",
    "import pickle\n",
    "from pickle import loads\n",
    "x = eval(text)\n",
    "exec(code)\n",
    "import subprocess\nsubprocess.run(cmd, shell=True)\n",
    "import numpy as np\na = np.load(p, allow_pickle=True)\n",
])
def test_checker_catches_planted_offences(planted):
    assert offences(planted), planted


@pytest.mark.parametrize("clean", [
    "import torch\nstate = torch.load(path, map_location='cpu', weights_only=True)\n",
    "import yaml\ncfg = yaml.safe_load(open(p))\n",
    "model.eval()\n",
    "net = build(x).eval()\n",
    "text = 'eval(x) and shell=True'  # eval(\n",
    "import subprocess\nsubprocess.run([exe, arg], check=True)\n",
])
def test_checker_passes_safe_code(clean):
    assert offences(clean) == []

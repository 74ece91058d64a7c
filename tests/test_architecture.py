"""The architecture's static promises (docs/ARCHITECTURE.md): no import cycles among the installed modules, no layer
importing a higher one, and no module outside the families table branching on a family name."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from mgen.families import FAMILIES

SOURCES = {"mgen": "mgen", "samplers": "mgen.samplers", "tokenizers": "mgen.tokenizers", "eval": "mgen.eval"}
#: layer of each package (docs/ARCHITECTURE.md, "Layers"); a module may import only its own layer or below
LAYERS = {"mgen.nn": 1, "mgen.models": 2, "mgen.tokenizers": 2, "mgen.samplers": 2, "mgen.eval": 2, "mgen.train": 3,
          "mgen.pipelines": 3, "mgen.bench": 4, "mgen.commands": 5, "mgen.cli": 5}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for folder, name in SOURCES.items():
        base = REPO_ROOT / folder
        for path in base.rglob("*.py"):
            rel = path.relative_to(base)
            if folder == "mgen" and rel.parts[0] in ("samplers", "tokenizers", "eval"):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([name, *parts])] = path
    return out


def _layer(module: str) -> int:
    best = 0
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            best = layer
    return best


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return [n for n in names if n.startswith("mgen")]


def test_no_import_cycles():
    tool = REPO_ROOT.parent / "shared" / "tools" / "import_cycles.py"
    if not tool.is_file():
        pytest.skip("the shared import-cycle tool is not beside this checkout")
    out = subprocess.run([sys.executable, str(tool), str(REPO_ROOT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cycle of" not in out.stdout, out.stdout
    assert " 0 cycles" in out.stdout, out.stdout


def test_no_layer_imports_a_higher_one():
    bad = []
    for module, path in _modules().items():
        if module == "mgen.__main__":  # `python -m mgen`: the entry point runs the CLI
            continue
        mine = _layer(module)
        for target in _imports(path):
            if _layer(target) > mine:
                bad.append(f"{module} (layer {mine}) imports {target} (layer {_layer(target)})")
    assert not bad, "\n".join(bad)


def test_no_module_branches_on_a_family_name():
    names = "|".join(re.escape(n) for n in FAMILIES)
    pattern = re.compile(rf"""family\s*(==|!=)\s*["']({names})["']|["']({names})["']\s*(==|!=)\s*\w*family"""
                         rf"""|family\s+(not\s+)?in\s+\(\s*["']({names})["']""")
    bad = []
    for module, path in _modules().items():
        if module == "mgen.families":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                bad.append(f"{path.relative_to(REPO_ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)

"""Imports flow one way: datacheck <- generative <- reports."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"datacheck": {"generative", "reports"}, "generative": {"reports"}, "reports": set()}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_no_source_file_imports_upward(pkg: str) -> None:
    files = sorted((ROOT / pkg).rglob("*.py"))
    assert files, f"no python files under {pkg}/"
    bad = [
        f"{f.relative_to(ROOT)} imports {name}"
        for f in files
        for name in sorted(_imported_top_levels(f) & FORBIDDEN[pkg])
    ]
    assert not bad, "imports must flow datacheck <- generative <- reports:\n" + "\n".join(bad)


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_importing_a_package_loads_nothing_above_it(pkg: str) -> None:
    # Import every submodule, then look at what ended up in sys.modules.
    code = (
        "import importlib, pkgutil, sys\n"
        f"import {pkg}\n"
        f"for m in pkgutil.walk_packages({pkg}.__path__, '{pkg}.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        f"print(' '.join(sorted(n for n in {sorted(FORBIDDEN[pkg])!r} if n in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"importing {pkg} loaded {out.stdout.strip()}"


def test_the_check_catches_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("import os\nfrom reports.metrics import fid\nimport generative.models as gm\n")
    assert _imported_top_levels(bad) & FORBIDDEN["datacheck"] == {"reports", "generative"}

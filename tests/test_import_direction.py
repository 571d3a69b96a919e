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


def _module_graph(pkg: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any depth (function-level imports count: a lazy
    import is still a dependency)."""
    mods: dict[str, Path] = {}
    for f in (ROOT / pkg).rglob("*.py"):
        parts = f.with_suffix("").relative_to(ROOT).parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        base = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                prefix = base[: len(base) - node.level + 1] if node.level else []
                target = ".".join(prefix + ([node.module] if node.module else []))
                for cand in [target] + [f"{target}.{a.name}" for a in node.names]:
                    if cand in mods and cand != m:
                        graph[m].add(cand)
            elif isinstance(node, ast.Import):
                graph[m].update(a.name for a in node.names if a.name in mods and a.name != m)
    return graph


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_no_import_cycles_between_modules(pkg: str) -> None:
    """Modules import each other one way only (the package's own __init__ aside, which gathers its API)."""
    graph = _module_graph(pkg)
    cycles = set()

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in graph[node]:
            if nxt == pkg:
                continue
            if nxt == start and len(path) > 1:
                cycles.add(" -> ".join(path + [start]))
            elif nxt not in path and len(path) < 6:
                walk(start, nxt, path + [nxt])

    for m in graph:
        if m != pkg:
            walk(m, m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def test_no_package_attribute_shadows_one_of_its_modules() -> None:
    """`import reports.evaluation as m` must give the module: a package attribute named like one of its
    submodules (a function `evaluate` beside `evaluate.py`) would make `import pkg.name as m` return it."""
    import importlib
    import pkgutil

    for name in ("datacheck", "generative", "reports"):
        pkg = importlib.import_module(name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name == "__main__":  # `python -m pkg`: importing it runs the CLI
                continue
            mod = importlib.import_module(f"{name}.{info.name}")
            attr = getattr(pkg, info.name)
            assert attr is mod, f"{name}.{info.name} is {type(attr).__name__}, not the module"

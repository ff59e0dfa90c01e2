"""Check the package's structure: every module in a layer of the layers contract, the contract, no import
cycle, module and function sizes, no private name imported from another module, and no guidance mode told
apart outside the objective registry.

    python scripts/check_layout.py            # exit 0 when clean; one line per problem otherwise

``zoo/`` and ``cli/`` are installed as ``pairgraph.zoo`` and ``pairgraph.cli`` (setuptools
``package-dir``), which import-linter cannot see in the source tree, so the package is first staged
as it installs (a copy under a temporary folder) and checked there. Function-local imports count in both
the contract and the cycle check; imports under ``if TYPE_CHECKING:`` count in the contract (import-linter
reads them) but not in the cycle check. Limits: modules ≤ 450 lines, functions ≤ 80 lines.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def stage(dest: Path) -> Path:
    """Copy the package into ``dest`` laid out as installed: pairgraph/{…, zoo/, cli/}."""
    pkg = dest / "pairgraph"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "pairgraph", pkg, ignore=ignore)
    shutil.copytree(ROOT / "zoo", pkg / "zoo", ignore=ignore)
    shutil.copytree(ROOT / "cli", pkg / "cli", ignore=ignore)
    return pkg


def size_problems(pkg: Path) -> list[str]:
    problems = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg.parent)
        text = path.read_text()
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            problems.append(f"{rel}: {n} lines (limit {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    problems.append(f"{rel}:{node.lineno}: {node.name}() is {length} lines (limit {MAX_FUNCTION_LINES})")
    return problems


def private_import_problems(pkg: Path) -> list[str]:
    """``from pairgraph.x import _name`` in another module: a private helper with a second user."""
    problems = []
    for path in sorted(pkg.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pairgraph"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    problems.append(f"{path.relative_to(pkg.parent)}:{node.lineno}: imports private "
                                    f"{', '.join(private)} from {node.module} (make it public or keep it there)")
    return problems


def layer_modules() -> set[str]:
    """The modules and packages the layers contract of pyproject.toml names."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return {m.strip() for c in config if c["type"] == "layers" for layer in c["layers"] for m in layer.split("|")}


def unlayered_problems(pkg: Path) -> list[str]:
    """A module or package right under ``pairgraph`` that no layer names: it could import anything."""
    layered = layer_modules()
    children = [p for p in sorted(pkg.iterdir())
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()]
    return [f"{c.relative_to(pkg.parent)}: pairgraph.{c.stem} belongs to no layer (add it to the layers of "
            "[tool.importlinter] in pyproject.toml)" for c in children if f"pairgraph.{c.stem}" not in layered]


#: where the guidance modes are told apart: the objective registry's module
OBJECTIVES_MODULE = Path("pairgraph/core/objectives.py")
MODES = {"guidance", "baseline", "distill", "fitnets", "repa"}


def _names_a_mode(node: ast.expr) -> bool:
    """A string constant naming a guidance mode, or a tuple / list / set of them."""
    if isinstance(node, ast.Constant):
        return node.value in MODES
    return isinstance(node, ast.Tuple | ast.List | ast.Set) and any(_names_a_mode(e) for e in node.elts)


def mode_problems(pkg: Path) -> list[str]:
    """``mode == "distill"`` and the like outside the objective registry: a mode's behaviour belongs to its
    objective class (:mod:`pairgraph.core.objectives`), asked through its attributes."""
    problems = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg.parent)
        if rel == OBJECTIVES_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            if any(_names_a_mode(s) for s in sides) and any("mode" in ast.unparse(s) for s in sides):
                problems.append(f"{rel}:{node.lineno}: compares a guidance mode ({ast.unparse(node)}); ask the "
                                "objective (pairgraph.core.objectives.objective_class(mode).calls_guide, …) instead")
    return problems


def cycle_problems(staged: Path) -> list[str]:
    """Import cycles between modules (all imports, function-local ones too; TYPE_CHECKING aside)."""
    import grimp
    import networkx as nx

    sys.path.insert(0, str(staged))
    try:
        graph = grimp.build_graph("pairgraph", exclude_type_checking_imports=True, cache_dir=None)
    finally:
        sys.path.remove(str(staged))
    g = nx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if not _is_ancestor(imported, module):  # a module's own package __init__ runs first anyway
                g.add_edge(module, imported)
    return [f"import cycle: {' -> '.join([*c, c[0]])}" for c in nx.simple_cycles(g)][:20]


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def contract_problems(staged: Path) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(staged)}
    lint = Path(sys.executable).with_name("lint-imports")
    cmd = [str(lint)] if lint.exists() else [sys.executable, "-m", "importlinter.cli"]
    proc = subprocess.run([*cmd, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=staged, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return []
    return ["import-linter: " + line.strip() for line in proc.stdout.splitlines() if "->" in line][-40:] or [
        "import-linter failed: " + (proc.stderr.strip().splitlines() or ["(no output)"])[-1]]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        pkg = stage(staged)
        problems = (unlayered_problems(pkg) + size_problems(pkg) + private_import_problems(pkg) + mode_problems(pkg)
                    + cycle_problems(staged) + contract_problems(staged))
    for p in problems:
        print(p)
    print(f"layout: {len(problems)} problem(s)" if problems else "layout: layers kept, no import cycle, sizes within limits")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

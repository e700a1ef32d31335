"""Import rules: algorithms/ imports only torch, numpy, gymnasium, the standard library and itself; the
modules of tuner/ import each other without cycles."""

import ast
import sys
from pathlib import Path

ALLOWED_ROOTS = {"torch", "numpy", "gymnasium", "algorithms", "__future__"} | set(sys.stdlib_module_names)
PACKAGE = Path(__file__).resolve().parents[1] / "algorithms"


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_algorithms_package_imports_only_allowed_modules() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 5, "the scan found too few files to be meaningful"
    offenders = {str(f.relative_to(PACKAGE)): sorted(imported_roots(f) - ALLOWED_ROOTS) for f in files}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"forbidden imports in algorithms/: {offenders}"


def test_scanner_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import mlflow\nfrom optuna.trial import Trial\nimport numpy as np\n")
    assert imported_roots(bad) - ALLOWED_ROOTS == {"mlflow", "optuna"}


# --- no import cycles among tuner/ modules -------------------------------------------------------------
def tuner_imports(package: Path, name: str) -> dict[str, set[str]]:
    """Module → the package's modules it imports anywhere in its file: at the top, inside functions and
    under ``TYPE_CHECKING`` alike, so that a late import cannot hide a cycle."""
    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        module = name if path.stem == "__init__" else f"{name}.{path.stem}"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets.add(node.module)
                targets |= {f"{node.module}.{alias.name}" for alias in node.names}  # from pkg import mod
        graph[module] = {t for t in targets if t.startswith(f"{name}.") and t != module}
    return {module: targets & set(graph) for module, targets in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order, the first repeated at the end), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            cycle = visit(target, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_tuner_modules_import_each_other_without_cycles() -> None:
    graph = tuner_imports(PACKAGE.parent / "tuner", "tuner")
    assert len(graph) >= 20 and sum(map(len, graph.values())) >= 40, "the scan found too few imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_scanner_finds_a_cycle_closed_by_a_late_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("from pkg.b import thing\n")
    (package / "b.py").write_text("import os\n\ndef thing():\n    from pkg import c\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    assert find_cycle(tuner_imports(package, "pkg")) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (package / "c.py").write_text("import pkg.b_other\n")
    assert find_cycle(tuner_imports(package, "pkg")) is None

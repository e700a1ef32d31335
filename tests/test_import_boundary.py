"""algorithms/ imports only torch, numpy, gymnasium, the standard library and itself."""

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

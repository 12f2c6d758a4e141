"""Imports flow router -> serving and router -> analysis, never back (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "serving": {"router", "analysis"},
    "analysis": {"router", "serving", "fastapi", "httpx", "redis", "aiohttp", "uvicorn"},
    "router": set(),
}
LEAVES = ("serving/types.py", "analysis/types.py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependency_direction(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    bad = {
        str(f.relative_to(ROOT)): sorted(_imports(f) & FORBIDDEN[package])
        for f in files
        if _imports(f) & FORBIDDEN[package]
    }
    assert bad == {}


def test_leaf_type_modules_import_nothing_of_the_project() -> None:
    for leaf in LEAVES:
        path = ROOT / leaf
        if path.exists():
            assert not _imports(path) & {"router", "serving", "analysis"}, leaf


def test_environment_is_read_only_in_settings() -> None:
    allowed = {
        "router/settings.py",
        "serving/emulator/settings.py",
        "router/demo/run.py",  # hands the environment on to the processes it starts
    }
    offenders = [
        str(f.relative_to(ROOT))
        for pkg in FORBIDDEN
        for f in (ROOT / pkg).rglob("*.py")
        if ("os.environ" in f.read_text() or "os.getenv" in f.read_text())
        and str(f.relative_to(ROOT)) not in allowed
    ]
    assert offenders == []

"""The import rules of the house (docs/architecture.md), checked on every module's imports.

Between top-level packages, imports flow router -> offline, router -> serving, router ->
analysis and offline -> serving/analysis, never back. Inside router/, the request path and the
signals never reach up into the control plane, the admin API, the process wiring or the CLI; the
control plane never reaches into the request path, the admin API or the process wiring. Imports
under `TYPE_CHECKING` count: a type-only import still ties the two places together.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_LIBRARIES = ("fastapi", "httpx", "redis", "aiohttp", "uvicorn", "starlette", "prometheus_client")

# folder (or module) -> module prefixes it must never import
RULES: dict[str, tuple[str, ...]] = {
    "serving": ("router", "analysis", "offline"),
    "analysis": ("router", "serving", "offline", *IO_LIBRARIES),
    "offline": ("router",),
    "router/dataplane": (
        "router.control", "router.admin", "router.runtime", "router.cli", "router.demo",
    ),
    "router/signals": (
        "router.dataplane", "router.control", "router.admin", "router.runtime", "router.cli",
        "router.demo",
    ),
    "router/control": (
        "router.dataplane", "router.admin", "router.runtime", "router.cli", "router.demo",
    ),
    "router/runtime": ("router.admin", "router.cli", "router.demo"),
    "router/admin": ("router.cli", "router.demo"),
    # the shared vocabulary of every plane: only other shared modules (and the pure redaction
    # rules, which the experiment document validates) may be imported
    "router/experiments.py": (
        "router.dataplane", "router.control", "router.admin", "router.runtime", "router.cli",
        "router.demo", "router.signals.events", "router.signals.feedback",
        "router.signals.capture", "router.signals.readmodel", "router.signals.lua",
    ),
    "router/keys.py": ("router", "serving", "analysis", "offline"),
    "router/settings.py": ("router", "serving", "analysis", "offline"),
    "router/errors.py": ("router", "serving", "analysis", "offline"),
    "router/signals/redact.py": ("router", "serving", "analysis", "offline"),
}  # fmt: skip
LEAVES = ("serving/types.py", "analysis/types.py")


def _imports(path: Path, root: Path = ROOT) -> set[str]:
    """Dotted names a module imports: `from a.b import c` gives `a.b` and `a.b.c`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _violations(place: str, forbidden: tuple[str, ...], root: Path = ROOT) -> dict[str, list[str]]:
    target = root / place
    files = [target] if target.is_file() else sorted(target.rglob("*.py"))
    assert files, place
    bad: dict[str, list[str]] = {}
    for f in files:
        hits = sorted(
            name
            for name in _imports(f, root)
            if any(name == p or name.startswith(p + ".") for p in forbidden)
        )
        if hits:
            bad[str(f.relative_to(root))] = hits
    return bad


@pytest.mark.parametrize("place", sorted(RULES))
def test_import_rules(place: str) -> None:
    assert _violations(place, RULES[place]) == {}


def test_the_rules_catch_a_crossing(tmp_path: Path) -> None:
    """The checker itself: a data-plane module importing the control plane is caught, also
    under TYPE_CHECKING and as a relative import."""
    probe = tmp_path / "router/dataplane/_layering_probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from router.control.store import ConfigStore\n"
        "from ..runtime import gateway\n"
    )
    bad = _violations("router/dataplane", RULES["router/dataplane"], tmp_path)
    assert bad == {
        "router/dataplane/_layering_probe.py": [
            "router.control.store",
            "router.control.store.ConfigStore",
            "router.runtime",
            "router.runtime.gateway",
        ]
    }


def test_leaf_type_modules_import_nothing_of_the_project() -> None:
    for leaf in LEAVES:
        path = ROOT / leaf
        if path.exists():
            assert not {n.split(".")[0] for n in _imports(path)} & {
                "router", "serving", "analysis", "offline",
            }, leaf  # fmt: skip


def test_environment_is_read_only_in_settings() -> None:
    allowed = {
        "router/settings.py",
        "serving/emulator/settings.py",
        "router/demo/run.py",  # hands the environment on to the processes it starts
    }
    offenders = [
        str(f.relative_to(ROOT))
        for pkg in ("router", "serving", "analysis", "offline")
        for f in (ROOT / pkg).rglob("*.py")
        if ("os.environ" in f.read_text() or "os.getenv" in f.read_text())
        and str(f.relative_to(ROOT)) not in allowed
    ]
    assert offenders == []


_MD_NAME = re.compile(r"[\w./-]*\w\.md\b")


def test_no_code_cites_notes_outside_the_repository() -> None:
    """Design facts the code relies on are written in docs/, in the project's own words: every
    Markdown file that code, docs or deploy files name is one of the repository's own."""
    ours = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts and ".git" not in p.parts}
    ours.add("report.md")  # what `abgate eval` writes, not a note
    offenders = [
        f"{f.relative_to(ROOT)}:{n}: {name}"
        for pkg in ("router", "serving", "analysis", "offline", "bench", "tests", "docs", "deploy")
        for f in sorted((ROOT / pkg).rglob("*"))
        if f.is_file() and f.suffix in {".py", ".md", ".yaml", ".yml", ".json", ".toml"}
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1)
        for name in _MD_NAME.findall(line)
        if Path(name).name not in ours and not (f.parent / name).exists()
    ]
    assert offenders == []


def _long_functions(path: Path, limit: int) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > limit
    ]


def test_modules_stay_readable() -> None:
    """No module in router/ over 400 lines; no function on the request path over 60."""
    long_modules = [
        f"{f.relative_to(ROOT)} ({n})"
        for f in sorted((ROOT / "router").rglob("*.py"))
        if (n := len(f.read_text().splitlines())) > 400
    ]
    assert long_modules == []
    long_functions = [
        hit
        for f in sorted((ROOT / "router/dataplane").rglob("*.py"))
        for hit in _long_functions(f, 60)
    ]
    assert long_functions == []

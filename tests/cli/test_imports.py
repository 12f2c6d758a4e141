"""The `abgate` command starts fast: declaring the commands imports none of the heavy stacks,
and a rollback imports only what a rollback uses (checked in fresh interpreters, whose
`sys.modules` is what a user's `abgate` process would hold)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.procs import ROOT, base_env

# what `import router.cli.main` must not load: each costs tens to hundreds of milliseconds
HEAVY = ("scipy", "numpy", "fastapi", "starlette", "uvicorn", "openai", "analysis.report",
         "httpx", "redis", "aiohttp", "prometheus_client", "yaml", "router.app")  # fmt: skip


def _loaded(code: str) -> list[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=base_env(), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    loaded: list[str] = json.loads(out.stdout.splitlines()[-1])
    return loaded


def _heavy(modules: list[str]) -> list[str]:
    return sorted(m for m in modules for h in HEAVY if m == h or m.startswith(h + "."))


def test_importing_the_cli_imports_no_heavy_module() -> None:
    assert _heavy(_loaded("import router.cli.main")) == []


def test_a_rollback_imports_no_heavy_module() -> None:
    """The whole command, up to the failed connection (exit 3): nothing heavy on the way."""
    code = (
        "import router.cli.main as m\n"
        "sys.argv = ['abgate', 'rollback', 'x', '--url', 'http://127.0.0.1:9', '--token', 't']\n"
        "try:\n"
        "    m.main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 3, exc.code\n"
    )
    loaded = _loaded(code)
    assert "router.cli.client" in loaded  # it did run the command
    assert _heavy(loaded) == []


def test_every_command_is_still_declared() -> None:
    from typer.main import get_command

    from router.cli.main import app

    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    assert {
        "serve", "controller", "emulate", "demo", "status", "create", "set-share", "start",
        "pause", "resume", "advance", "promote", "rollback", "audit", "report", "adapters",
        "eval", "flywheel", "capture", "policy",
    } <= commands  # fmt: skip

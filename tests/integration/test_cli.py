"""The operator CLI end to end: real `abgate` subprocesses against a running gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.runtime.embedded_redis import EmbeddedRedis
from tests.procs import ROOT, Proc, base_env, experiment, gateway

pytestmark = pytest.mark.integration

TOKEN = "cli-token"


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, emu: Proc, stack_redis: EmbeddedRedis
) -> Iterator[Proc]:
    with gateway(tmp_path_factory.mktemp("cli"), {}, stack_redis.url, admin_token=TOKEN) as proc:
        yield proc


def abgate(
    *args: str, url: str | None = None, token: str | None = TOKEN, **env: str
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "router", *args]
    if url is not None:
        argv += ["--url", url]
    if token is not None:
        argv += ["--token", token]
    return subprocess.run(
        argv,
        env=base_env(COLUMNS="200", **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_operator_commands_end_to_end(gw: Proc, emu: Proc, tmp_path: Path) -> None:
    spec = tmp_path / "exp.yaml"
    spec.write_text(json.dumps({"experiments": [experiment("cli-exp", "cli-route", emu.url, 5)]}))
    out = abgate("create", "-f", str(spec), url=gw.url)
    assert out.returncode == 0, out.stderr
    assert "created cli-exp: route cli-route, running, treatment 5%" in out.stdout

    out = abgate("set-share", "cli-exp", "25", "--reason", "looks fine", url=gw.url)
    assert out.returncode == 0, out.stderr
    assert "cli-exp: treatment 5% -> 25%" in out.stdout

    assert "running -> paused" in abgate("pause", "cli-exp", url=gw.url).stdout
    assert "paused -> running" in abgate("resume", "cli-exp", url=gw.url).stdout
    assert "treatment 25% -> 50%" in abgate("advance", "cli-exp", url=gw.url).stdout

    # ABGATE_URL / ABGATE_ADMIN_TOKEN work in place of the flags
    status = abgate("status", token=None, ABGATE_URL=gw.url, ABGATE_ADMIN_TOKEN=TOKEN)
    assert status.returncode == 0, status.stderr
    assert "cli-exp" in status.stdout and "cli-route" in status.stdout and "50%" in status.stdout

    out = abgate("rollback", "cli-exp", "--reason", "error spike", url=gw.url)
    assert out.returncode == 0
    assert "running -> rolled_back, treatment 50% -> 0% (error spike)" in out.stdout

    audit = abgate("audit", "cli-exp", url=gw.url)
    assert audit.returncode == 0
    for needle in ("rollback", "error spike", "looks fine", "treatment_percent: 5.0 -> 25.0"):
        assert needle in audit.stdout, audit.stdout


def test_promote_from_the_cli(gw: Proc, emu: Proc, tmp_path: Path) -> None:
    spec = tmp_path / "p.json"
    spec.write_text(json.dumps(experiment("cli-promo", "promo-route", emu.url, 50)))
    assert abgate("create", "-f", str(spec), url=gw.url).returncode == 0
    out = abgate("promote", "cli-promo", url=gw.url)
    assert out.returncode == 0 and "running -> promoted, treatment 50% -> 100%" in out.stdout


@pytest.mark.parametrize(
    ("args", "kw", "code", "needle"),
    [
        (("status",), {"url": "http://127.0.0.1:9"}, 3, "cannot reach the gateway"),
        (("rollback", "anything"), {"token": "wrong"}, 1, "401"),
        (("rollback", "no-such"), {}, 1, "404"),
        (("resume", "cli-exp-final"), {}, 1, "409"),
        (("set-share", "cli-exp-final", "150"), {}, 2, "between 0 and 100"),
        (("create", "-f", "/nonexistent.yaml"), {}, 2, "cannot read"),
    ],
)
def test_failures_exit_non_zero_with_one_line(
    gw: Proc,
    emu: Proc,
    tmp_path: Path,
    args: tuple[str, ...],
    kw: dict[str, str],
    code: int,
    needle: str,
) -> None:
    spec = tmp_path / "f.json"
    spec.write_text(json.dumps(experiment("cli-exp-final", "final-route", emu.url, 5)))
    abgate("create", "-f", str(spec), url=gw.url)
    abgate("rollback", "cli-exp-final", url=gw.url)
    out = abgate(*args, url=kw.get("url", gw.url), token=kw.get("token", TOKEN))
    assert out.returncode == code, (out.stdout, out.stderr)
    assert needle in out.stderr
    assert out.stderr.strip().count("\n") == 0  # one line

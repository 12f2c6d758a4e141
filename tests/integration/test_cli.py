"""The operator CLI end to end: real `abgate` subprocesses against a running gateway."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.runtime.embedded_redis import EmbeddedRedis
from tests.procs import ROOT, Proc, adapter_dir, base_env, experiment, gateway

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
        env=base_env(**{"COLUMNS": "200", **env}),
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
    # each change is recorded under the name of the command that made it
    entries = json.loads(abgate("audit", "cli-exp", "--json", url=gw.url).stdout)["entries"]
    actions = [e["action"] for e in reversed(entries)]
    assert actions == ["create", "set-share", "pause", "resume", "advance", "rollback"], actions
    assert "set-share" in audit.stdout


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
        (("rollback", "anything"), {"token": "wrong"}, 1, "refused the admin token (wrong token?)"),
        (("status",), {"token": None}, 1, "no admin token: pass --token or set ABGATE_ADMIN_TOKEN"),
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
    assert "Traceback" not in out.stderr
    assert out.returncode == code, (out.stdout, out.stderr)
    assert needle in out.stderr
    assert out.stderr.strip().count("\n") == 0  # one line


def test_a_wrong_token_is_told_apart_from_a_missing_one(gw: Proc) -> None:
    wrong = abgate("status", url=gw.url, token="not-the-token")
    missing = abgate("status", url=gw.url, token=None)
    assert wrong.returncode == missing.returncode == 1
    assert "wrong token?" in wrong.stderr and "--token" in wrong.stderr
    assert "no admin token" in missing.stderr and "ABGATE_ADMIN_TOKEN" in missing.stderr
    assert "wrong token?" not in missing.stderr and "no admin token" not in wrong.stderr
    # the variable counts as a token sent
    env_wrong = abgate("status", url=gw.url, token=None, ABGATE_ADMIN_TOKEN="nope")
    assert env_wrong.returncode == 1 and "wrong token?" in env_wrong.stderr


def _api(gw: Proc, path: str, **params: str) -> Any:
    r = httpx.get(gw.url + path, params=params, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_read_commands_print_the_api_json(gw: Proc, emu: Proc, tmp_path: Path) -> None:
    spec = tmp_path / "j.json"
    spec.write_text(json.dumps(experiment("cli-json", "json-route", emu.url, 10)))
    assert abgate("create", "-f", str(spec), url=gw.url).returncode == 0

    def read(*args: str) -> Any:
        out = abgate(*args, "--json", url=gw.url)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)  # stdout is the JSON alone

    assert read("status") == _api(gw, "/admin/experiments")
    one = read("status", "cli-json")
    assert [s["experiment"]["name"] for s in one["experiments"]] == ["cli-json"]
    assert read("audit", "cli-json") == _api(gw, "/admin/audit", experiment="cli-json", limit="50")
    assert read("adapters", "list") == _api(gw, "/admin/adapters")
    assert read("eval", "reports") == _api(gw, "/admin/eval-reports")
    assert read("flywheel", "captures", "cli-json") == _api(
        gw, "/admin/experiments/cli-json/captures", limit="50"
    )
    report = read("report", "cli-json")
    direct = _api(gw, "/admin/experiments/cli-json/report")
    assert report.keys() == direct.keys() and report["experiment"] == "cli-json"
    assert report["metrics"] == direct["metrics"]
    # with --json-file the JSON goes to the file too, and stdout stays JSON
    target = tmp_path / "out" / "report.json"
    both = abgate("report", "cli-json", "--json", "--json-file", str(target), url=gw.url)
    assert both.returncode == 0, both.stderr
    assert json.loads(both.stdout)["experiment"] == "cli-json"
    assert json.loads(target.read_text())["experiment"] == "cli-json"
    assert f"wrote {target}" in both.stderr


def test_tables_keep_whole_names_at_80_columns(gw: Proc, emu: Proc, tmp_path: Path) -> None:
    name, route = "support-lora-v3-ramp", "support-bot-eu"
    adapter = "support-lora-v3-2024"
    spec = tmp_path / "n.json"
    spec.write_text(json.dumps(experiment(name, route, emu.url, 5)))
    assert abgate("create", "-f", str(spec), url=gw.url).returncode == 0
    assert abgate("set-share", name, "10", "--reason", "ok", url=gw.url).returncode == 0
    path = adapter_dir(tmp_path, adapter)
    load = abgate(
        "adapters", "load", adapter, "--path", str(path), "--base-url", emu.url + "/v1",
        url=gw.url,
    )  # fmt: skip
    assert load.returncode == 0, load.stderr

    def narrow(*args: str) -> str:
        out = abgate(*args, url=gw.url, COLUMNS="80")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80, out.stdout
        assert "…" not in out.stdout, out.stdout
        return out.stdout

    status = narrow("status")
    for word in (name, route, "running", "10%"):
        assert re.search(rf"(^|\s){re.escape(word)}(\s|$)", status, re.M), (word, status)
    assert "--json" in status  # the caption says how to see the columns left out
    audit = narrow("audit", name)
    assert re.search(rf"\bset-share\s+{re.escape(name)}\b", audit), audit
    assert "create" in audit
    listed = narrow("adapters", "list")
    assert re.search(rf"(^|\s){re.escape(adapter)}\s+ready\b", listed, re.M), listed
    report = narrow("report", name)
    assert "thumbs_up_rate" in report or "error_rate" in report, report
    # a wide terminal shows every column
    wide = abgate("status", url=gw.url).stdout
    for header in ("errors c/t", "feedback c/t", "control model", "treatment model"):
        assert header in wide, wide

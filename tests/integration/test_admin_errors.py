"""How the admin API answers when Redis is away: a 503 in the OpenAI error shape whose message
says nothing about Redis's address or the client library; the detail goes to the log."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from router.runtime.embedded_redis import EmbeddedRedis
from tests.procs import gateway

pytestmark = pytest.mark.integration

TOKEN = "admin-secret"
GENERIC = "the configuration store (Redis) is unavailable; retry later"


def test_a_redis_error_is_a_generic_503(tmp_path: Path) -> None:
    server = EmbeddedRedis(appendonly=True, data_dir=tmp_path / "redis")
    server.start()
    try:
        with gateway(tmp_path, {}, server.url, admin_token=TOKEN) as gw:
            server.stop()
            for path in ("/experiments", "/audit", "/eval-reports", "/adapters"):
                resp = httpx.get(
                    gw.url + "/admin" + path,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=30,
                )
                assert resp.status_code == 503, (path, resp.text)
                error = resp.json()["error"]
                assert error["message"] == GENERIC
                assert (error["type"], error["code"]) == ("unavailable_error", "unavailable")
                assert error["request_id"] == resp.headers["x-request-id"]
                assert str(server.port) not in resp.text
                assert "onnect" not in resp.text  # no "Connection refused", "connecting to"
            log = gw.log.read_text()
            assert "GET /admin/experiments: Redis error" in log
            assert str(server.port) in log  # the detail is kept, server-side
    finally:
        server.cleanup()

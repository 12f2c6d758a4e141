"""Who an admin call is: the name of its token (`ABGATE_ADMIN_TOKENS`), never a header; and
where it may come from: with `ABGATE_ADMIN_PORT`, only that port (each request's local port)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.inprocess.conftest import AUTH, GatewayFactory
from tests.procs import experiment

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALICE, BOB = "alice-token-0123456789abcdef", "bob-token-fedcba9876543210"
DATA, ADMIN = "http://gateway:8080", "http://gateway:9181"


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


async def test_the_actor_is_the_tokens_name(emu: str, start_gateway: GatewayFactory) -> None:
    tokens = f"alice:{ALICE},bob:{BOB}"
    async with start_gateway({}, admin_tokens=tokens) as gw:  # with ABGATE_ADMIN_TOKEN too
        c = gw.client
        body = experiment("tok", "tok-route", emu, 5)
        created = await c.post("/admin/experiments", json=body, headers=bearer(ALICE))
        assert created.status_code == 201, created.text
        # a header claiming someone else changes nothing: the token decides
        for token, claimed in ((BOB, "alice"), (ALICE, "controller"), (BOB, "")):
            share = {"treatment_percent": 7}
            resp = await c.post("/admin/experiments/tok/share", json=share,
                                headers=bearer(token, **{"X-ABGate-Actor": claimed}))  # fmt: skip
            assert resp.status_code == 200, resp.text
        await c.post("/admin/experiments/tok/pause", headers=AUTH)  # ABGATE_ADMIN_TOKEN
        wrong = await c.post("/admin/experiments/tok/resume", headers=bearer(ALICE[:-1]))
        assert wrong.status_code == 401
        assert wrong.json()["error"]["message"] == "the admin token is not valid"
        audit = await c.get("/admin/audit", headers=bearer(BOB))
    actors = [(e["action"], e["actor"]) for e in reversed(audit.json()["entries"])]
    assert actors == [("create", "alice"), ("set-share", "bob"), ("set-share", "alice"),
                      ("set-share", "bob"), ("pause", "admin")]  # fmt: skip


async def test_without_a_named_token_the_api_needs_one_of_them(
    emu: str, start_gateway: GatewayFactory
) -> None:
    async with start_gateway({}, admin_token=None, admin_tokens=f"alice:{ALICE}") as gw:
        assert (await gw.client.get("/admin/audit", headers=bearer(ALICE))).status_code == 200
        assert (await gw.client.get("/admin/audit", headers=AUTH)).status_code == 401
        assert (await gw.client.get("/admin/audit")).status_code == 401


# path, method, body: what each port serves
ADMIN_SIDE = [
    ("/admin/experiments", "GET"),
    ("/admin/audit", "GET"),
    ("/admin/experiments/ap/pause", "POST"),
    ("/metrics", "GET"),
    ("/openapi.json", "GET"),
]
DATA_SIDE = [
    ("/v1/chat/completions", "POST"),
    ("/v1/completions", "POST"),
    ("/v1/models", "GET"),
    ("/v1/feedback", "POST"),
]


async def test_with_an_admin_port_each_path_answers_on_its_own_port_only(
    emu: str, start_gateway: GatewayFactory
) -> None:
    config = {"experiments": [experiment("ap", "ap-route", emu, 10)]}
    body: dict[str, Any] = {"model": "ap-route", "prompt": "hi", "max_tokens": 1}
    async with start_gateway(config, port=8080, admin_port=9181) as gw:
        c = gw.client

        async def ask(base: str, path: str, method: str) -> Any:
            if path.startswith("/v1/") and method == "POST":
                payload = body
                if "chat" in path:
                    payload = {"model": "ap-route", "messages": [{"role": "user", "content": "x"}]}
                if "feedback" in path:
                    payload = {"request_id": "req_" + "0" * 32, "signal": "thumbs_up"}
                return await c.request(method, base + path, json=payload, headers=AUTH)
            return await c.request(method, base + path, headers=AUTH)

        for path, method in ADMIN_SIDE:
            refused = await ask(DATA, path, method)
            assert refused.status_code == 404, (path, refused.text)
            assert refused.json()["error"]["message"] == "Not Found"
            assert refused.json()["error"]["request_id"] == refused.headers["x-request-id"]
            served = await ask(ADMIN, path, method)
            assert served.status_code == 200, (path, served.text)
        for path, method in DATA_SIDE:
            refused = await ask(ADMIN, path, method)
            assert refused.status_code == 404, (path, refused.text)
            served = await ask(DATA, path, method)  # answered by its route (feedback on an
            assert served.status_code < 500, (path, served.text)  # unknown request: its 404)
            assert "Not Found" not in served.text, (path, served.text)
        assert (await ask(DATA, "/v1/chat/completions", "POST")).status_code == 200
        for unknown in ("/docs", "/redoc", "/admin", "/admin/", "/nope"):
            for base in (DATA, ADMIN):
                assert (await ask(base, unknown, "GET")).status_code == 404, (base, unknown)
        assert (await ask(DATA, "/metrics/", "GET")).status_code == 404
        assert (await ask(DATA, "/admin/experiments/", "GET")).status_code == 404
        for base in (DATA, ADMIN):
            assert (await ask(base, "/healthz", "GET")).status_code == 200
        ready_data = (await ask(DATA, "/readyz", "GET")).json()
        ready_admin = (await ask(ADMIN, "/readyz", "GET")).json()
    assert ready_data["ready"] and "replicas" not in ready_data  # no replica URLs on the data side
    assert emu in str(ready_admin["replicas"])


async def test_without_an_admin_port_everything_is_on_the_one_port(
    emu: str, start_gateway: GatewayFactory
) -> None:
    async with start_gateway({}) as gw:
        for path in ("/admin/audit", "/metrics", "/openapi.json"):
            assert (await gw.client.get(path, headers=AUTH)).status_code == 200, path
        assert "replicas" in (await gw.client.get("/readyz")).json()

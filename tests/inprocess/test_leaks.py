"""Nothing internal reaches a client that should not see it: the model list has route aliases
and the default upstream's models with the OpenAI card fields only; the OpenAPI document needs
an admin token; no admin response, report or audit entry carries an `api_key` (shown as "set"),
while the stored document keeps the keys and requests still carry them upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from router import keys
from tests.inprocess.conftest import AUTH, Gate, GatewayFactory, serve_emulator
from tests.procs import experiment

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "sk-arm-key-0123456789abcdef"  # the keyed emulator's key: the arms need it
KEY2 = "sk-rotated-key-fedcba9876543210"
DEFAULT_KEY = "sk-default-upstream-key-55555"
SECRETS = (KEY, KEY2, DEFAULT_KEY)
USERS = [f"leak-user-{i}" for i in range(20)]


def keyed(emu: str, name: str, route: str, percent: float, key: str | None = KEY) -> Any:
    exp = experiment(name, route, emu, percent)
    for arm in ("control", "treatment"):
        exp[arm]["api_key"] = key
    return exp


class Recorder:
    """Every admin answer of a test, to search for the keys afterwards."""

    def __init__(self, gw: Gate) -> None:
        self.gw = gw
        self.seen: list[str] = []

    async def __call__(
        self, method: str, path: str, status: int = 200, **kw: Any
    ) -> dict[str, Any]:
        resp = await self.gw.admin(method, path, **kw)
        self.seen.append(f"{method} {path} {resp.status_code} {resp.headers} {resp.text}")
        assert resp.status_code == status, (method, path, resp.text)
        return resp.json()  # type: ignore[no-any-return]


async def _all_served(gw: Gate, route: str) -> set[str]:
    """Ask as each user; every request must succeed (the upstream refuses a wrong key)."""
    arms = set()
    for user in USERS:
        resp = await gw.chat(route, user, max_tokens=1)
        assert resp.status_code == 200, resp.text
        arms.add(resp.headers["x-abgate-arm"])
    return arms


async def test_no_admin_answer_or_audit_entry_carries_a_key(
    tmp_path: Path, emu: str, start_gateway: GatewayFactory, rds: redis.Redis
) -> None:
    config = {"default_upstream": {"base_url": emu + "/v1", "api_key": DEFAULT_KEY}}
    async with (
        serve_emulator(tmp_path, api_key=KEY) as locked,
        start_gateway(config) as gw,
    ):
        call = Recorder(gw)
        created = await call("POST", "/experiments", 201, json=keyed(locked, "lk", "lk-route", 50))
        assert created["control"]["api_key"] == created["treatment"]["api_key"] == "set"
        assert await _all_served(gw, "lk-route") == {"control", "treatment"}

        # a GET sent back whole (with "set") keeps the stored keys
        got = await call("GET", "/experiments/lk")
        assert got["treatment"]["api_key"] == "set"
        body = {"control": got["control"], "treatment": got["treatment"], "treatment_percent": 30}
        patched = await call("PATCH", "/experiments/lk", json=body)
        assert patched["treatment_percent"] == 30 and patched["control"]["api_key"] == "set"
        stored = json.loads(rds.get(keys.CONFIG) or "{}")["experiments"]["lk"]
        assert stored["control"]["api_key"] == stored["treatment"]["api_key"] == KEY
        assert await _all_served(gw, "lk-route") == {"control", "treatment"}  # keys still sent

        await call("GET", "/experiments")
        await call("POST", "/experiments/lk/share", json={"treatment_percent": 40})
        for action in ("pause", "resume", "advance"):
            await call("POST", f"/experiments/lk/{action}", json={"reason": action})
        await call("GET", "/experiments/lk/snapshot")
        report = await call("GET", "/experiments/lk/report")
        assert report["audit"], report
        await call("GET", "/adapters")
        await call("GET", "/eval-reports")

        # a rotation shows in the audit without either key
        rotated = {**got["treatment"], "api_key": KEY2}
        await call("PATCH", "/experiments/lk", json={"treatment": rotated})
        # refused writes answer without echoing what they were sent
        await call("POST", "/experiments", 422, json=keyed(locked, "lk2", "lk2-route", 5, "set"))
        bad = keyed(locked, "lk3", "lk3-route", 5, KEY2 + "\r\nX-Injected: 1")
        await call("POST", "/experiments", 422, json=bad)
        await call("PATCH", "/experiments/lk", 422,
                   json={"control": {**got["control"], "api_key": KEY2 + "\n"}})  # fmt: skip
        for action in ("promote", "rollback"):
            await call("POST", f"/experiments/lk/{action}")
        entries = (await call("GET", "/audit", params={"limit": 1000}))["entries"]
        await call("DELETE", "/experiments/lk")
        await call("GET", "/audit")

        models = await gw.client.get("/v1/models")
        call.seen.append(models.text)

    actions = [e["action"] for e in reversed(entries) if e["experiment"] == "lk"]
    assert actions == ["create", "patch", "set-share", "pause", "resume", "advance", "patch",
                       "promote", "rollback"]  # fmt: skip
    rotation = entries[2]
    assert rotation["before"]["treatment"]["api_key"] == "set"
    assert rotation["after"]["treatment"]["api_key"] == "set (changed)"
    assert rotation["after"]["control"]["api_key"] == "set"
    raw_audit: list[Any] = rds.xrange(keys.AUDIT)  # type: ignore[assignment]
    everything = "\n".join([*call.seen, repr(raw_audit)])
    for secret in SECRETS:
        assert secret not in everything
    assert "X-Injected" not in everything


async def test_set_keeps_only_a_key_that_exists(
    tmp_path: Path, emu: str, start_gateway: GatewayFactory, rds: redis.Redis
) -> None:
    async with start_gateway({}) as gw:
        call = Recorder(gw)
        await call("POST", "/experiments", 201, json=keyed(emu, "nk", "nk-route", 5, None))
        version = await config_version(rds)
        got = await call("GET", "/experiments/nk")
        assert got["control"]["api_key"] is None
        refused = await call(
            "PATCH", "/experiments/nk", 422, json={"control": {**got["control"], "api_key": "set"}}
        )
        assert refused["error"]["param"] == "control.api_key"
        assert "keeps the stored key" in refused["error"]["message"]
        assert await config_version(rds) == version  # nothing written
        # a key given, then removed with null
        await call("PATCH", "/experiments/nk", json={"control": {**got["control"], "api_key": KEY}})
        stored = json.loads(rds.get(keys.CONFIG) or "{}")["experiments"]["nk"]
        assert stored["control"]["api_key"] == KEY
        await call(
            "PATCH", "/experiments/nk", json={"control": {**got["control"], "api_key": None}}
        )
        stored = json.loads(rds.get(keys.CONFIG) or "{}")["experiments"]["nk"]
        assert stored["control"]["api_key"] is None
    assert KEY not in "\n".join(call.seen)


async def config_version(rds: redis.Redis) -> int:
    return int(rds.get(keys.CONFIG_VERSION) or 0)


async def test_the_model_list_names_routes_and_the_default_upstreams_models_only(
    emu: str, start_gateway: GatewayFactory
) -> None:
    config = {
        "default_upstream": {"base_url": emu + "/v1", "api_key": DEFAULT_KEY},
        "experiments": [experiment("ml-secret-name", "ml-route", emu, 10)],
    }
    async with start_gateway(config) as gw:
        resp = await gw.client.get("/v1/models")
    assert resp.status_code == 200
    cards = resp.json()["data"]
    assert [c["id"] for c in cards][:1] == ["ml-route"]
    ids = {c["id"] for c in cards}
    assert "base" in ids  # what the default upstream serves, less the treatment's model, which
    assert "lora-a" not in ids  # it refuses to forward (`direct_arm_models`'s default)
    assert all(set(c) == {"id", "object", "created", "owned_by"} for c in cards), cards
    for internal in ("ml-secret-name", "running", emu, "127.0.0.1", "adapters", DEFAULT_KEY):
        assert internal not in resp.text


async def test_the_openapi_document_needs_an_admin_token(
    emu: str, start_gateway: GatewayFactory
) -> None:
    async with start_gateway({}) as gw:
        anonymous = await gw.client.get("/openapi.json")
        wrong = await gw.client.get("/openapi.json", headers={"Authorization": "Bearer nope"})
        admin = await gw.client.get("/openapi.json", headers=AUTH)
        pages = [await gw.client.get(p, headers=AUTH) for p in ("/docs", "/redoc")]
    for refused in (anonymous, wrong):
        assert refused.status_code == 401, refused.text
        assert set(refused.json()["error"]) >= {"message", "type", "code", "request_id"}
        assert "paths" not in refused.text
    assert admin.status_code == 200
    paths = admin.json()["paths"]
    assert "/admin/experiments" in paths and "/openapi.json" not in paths
    assert all(p.status_code == 404 and "error" in p.json() for p in pages)


async def test_insecure_admin_serves_the_document_without_a_token(
    emu: str, start_gateway: GatewayFactory
) -> None:
    async with start_gateway({}, admin_token=None, insecure_admin=True) as gw:
        assert (await gw.client.get("/openapi.json")).status_code == 200
    async with start_gateway({}, admin_token=None) as gw:  # admin API off: so is the document
        assert (await gw.client.get("/openapi.json")).status_code == 503

"""The admin API in process: the token, CRUD of experiments, lifecycle actions, the audit log."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from router import keys
from tests.inprocess.conftest import Gate, GatewayFactory
from tests.procs import experiment

pytestmark = pytest.mark.asyncio(loop_scope="module")

USERS = [f"adm-user-{i}" for i in range(30)]


def seeded(emu: str) -> dict[str, Any]:
    """A config file with one experiment, so the gateway starts with a replica to check."""
    return {"experiments": [experiment("adm-seed", "adm-seed-route", emu, 10)]}


async def arms(gw: Gate, route: str) -> dict[str, str]:
    """The arm each of `USERS` is served from right now."""
    out: dict[str, str] = {}
    for user in USERS:
        resp = await gw.chat(route, user, max_tokens=1)
        assert resp.status_code == 200, resp.text
        out[user] = resp.headers["x-abgate-arm"]
    return out


async def config_version(gw: Gate) -> int:
    return int((await gw.client.get("/readyz")).json()["config_version"])


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "Basic YWRtaW46c2VjcmV0", "inprocess-admin-token"]
)
async def test_admin_routes_need_the_bearer_token(
    emu: str, start_gateway: GatewayFactory, authorization: str | None
) -> None:
    seeded = experiment("adm-auth", "adm-auth-route", emu, 10)
    async with start_gateway({"experiments": [seeded]}) as gw:
        before = await config_version(gw)
        headers = {} if authorization is None else {"Authorization": authorization}
        for method, path, body in [
            ("GET", "/experiments", None),
            ("POST", "/experiments", experiment("adm-new", "adm-new-route", emu, 5)),
            ("GET", "/experiments/adm-auth", None),
            ("PATCH", "/experiments/adm-auth", {"treatment_percent": 50}),
            ("DELETE", "/experiments/adm-auth", None),
            ("POST", "/experiments/adm-auth/rollback", None),
            ("GET", "/audit", None),
        ]:
            resp = await gw.client.request(method, "/admin" + path, headers=headers, json=body)
            assert resp.status_code == 401, (method, path, resp.text)
            assert resp.headers["www-authenticate"] == "Bearer"
            err = resp.json()["error"]
            assert err["request_id"] == resp.headers["x-request-id"]
            if authorization == "Bearer wrong":
                assert err["message"] == "the admin token is not valid"
            else:  # no bearer token sent: the message says how to send one
                assert err["message"].startswith("missing admin token: send Authorization: Bearer")
        assert await config_version(gw) == before


async def test_admin_api_is_off_without_a_token_unless_insecure(
    emu: str, start_gateway: GatewayFactory
) -> None:
    async with start_gateway(seeded(emu), admin_token=None) as gw:
        resp = await gw.client.get("/admin/experiments")
        assert resp.status_code == 503
        assert "ABGATE_ADMIN_TOKEN" in resp.json()["error"]["message"]
    async with start_gateway(seeded(emu), admin_token=None, insecure_admin=True) as gw:
        assert (await gw.client.get("/admin/experiments")).status_code == 200


async def test_create_get_patch_list(emu: str, start_gateway: GatewayFactory) -> None:
    async with start_gateway(seeded(emu)) as gw:
        created = await gw.admin(
            "POST", "/experiments", json=experiment("adm-crud", "adm-crud-route", emu, 5)
        )
        assert created.status_code == 201, created.text
        assert created.json()["state"] == "running" and created.json()["version"] == 1
        assert created.headers["etag"] == '"1"'
        clash = await gw.admin(
            "POST", "/experiments", json=experiment("adm-crud", "adm-other-route", emu, 5)
        )
        assert clash.status_code == 409 and "already exists" in clash.json()["error"]["message"]
        invalid = await gw.admin(
            "POST", "/experiments", json=experiment("adm-bad", "adm-bad-route", emu, 150)
        )
        assert invalid.status_code == 422
        assert "treatment_percent" in invalid.json()["error"]["message"]

        got = await gw.admin("GET", "/experiments/adm-crud")
        assert got.status_code == 200 and got.json()["treatment_percent"] == 5
        assert got.headers["etag"] == '"1"'
        missing = await gw.admin("GET", "/experiments/adm-nope")
        assert missing.status_code == 404

        patched = await gw.admin(
            "PATCH", "/experiments/adm-crud", json={"treatment_percent": 20},
            headers={"If-Match": '"1"'},
        )  # fmt: skip
        assert patched.status_code == 200, patched.text
        assert patched.json()["treatment_percent"] == 20 and patched.json()["version"] == 2
        assert patched.headers["etag"] == '"2"'
        stale = await gw.admin(
            "PATCH", "/experiments/adm-crud", json={"treatment_percent": 30},
            headers={"If-Match": '"1"'},
        )  # fmt: skip
        assert stale.status_code == 412

        listed = await gw.admin("GET", "/experiments")
        assert listed.status_code == 200
        statuses = {s["experiment"]["name"]: s for s in listed.json()["experiments"]}
        assert set(statuses) == {"adm-seed", "adm-crud"}
        assert statuses["adm-crud"]["experiment"]["treatment_percent"] == 20
        assert set(statuses["adm-crud"]["arms"]) == {"control", "treatment"}
        assert listed.json()["version"] == await config_version(gw)


async def test_lifecycle_changes_assignment_at_once_and_is_audited(
    emu: str, start_gateway: GatewayFactory, rds: redis.Redis
) -> None:
    async with start_gateway(seeded(emu)) as gw:

        async def act(action: str, status: int = 200, **kw: Any) -> dict[str, Any]:
            resp = await gw.admin("POST", f"/experiments/adm-life/{action}", **kw)
            assert resp.status_code == status, (action, resp.text)
            return resp.json()  # type: ignore[no-any-return]

        draft = experiment("adm-life", "adm-life-route", emu, 50, state="draft")
        assert (await gw.admin("POST", "/experiments", json=draft)).status_code == 201
        assert set((await arms(gw, "adm-life-route")).values()) == {"control"}  # draft

        assert (await act("start"))["state"] == "running"
        running = await arms(gw, "adm-life-route")  # no wait: this gateway applied it
        assert set(running.values()) == {"control", "treatment"}
        await act("start", 409)

        rolled = await act("rollback", json={"reason": "complaints"})
        assert rolled["state"] == "rolled_back" and rolled["treatment_percent"] == 0
        assert set((await arms(gw, "adm-life-route")).values()) == {"control"}
        await act("rollback", 409)

        audit = await gw.admin("GET", "/audit", params={"experiment": "adm-life"})
        entries = audit.json()["entries"]
    assert [e["action"] for e in reversed(entries)] == ["create", "start", "rollback"]
    last = entries[0]
    assert last["reason"] == "complaints" and last["actor"] == "admin"
    assert last["before"]["state"] == "running" and last["after"]["state"] == "rolled_back"
    assert entries[-1]["before"] is None
    rows: list[tuple[str, dict[str, str]]] = rds.xrange(keys.AUDIT)  # type: ignore[assignment]
    stored = [f for _, f in rows if f["experiment"] == "adm-life"]
    assert [f["action"] for f in stored] == ["create", "start", "rollback"]
    assert stored[-1]["reason"] == "complaints"

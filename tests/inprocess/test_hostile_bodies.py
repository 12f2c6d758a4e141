"""Hostile clients against the gateway in process (real Redis, the emulator on a socket): bodies
written to make the gateway route one `model` and forward another cannot roll an experiment
back, and unit ids too long to store are refused before they reach Redis."""

from __future__ import annotations

import httpx
import pytest
import redis

from router import keys
from tests.inprocess.conftest import GatewayFactory, arm_totals
from tests.procs import experiment

pytestmark = pytest.mark.asyncio(loop_scope="module")

MSG = '"messages":[{"role":"user","content":"hi"}]'
# (raw body, accepted); every accepted one must be served by the treatment's model. The first
# made the model server read the route alias: a 404 counted as a treatment error.
HOSTILE: list[tuple[str, bool]] = [
    ('{"model":"hb-route","model":"hb-route",' + MSG + "}", False),
    ('{"mod\\u0065l":"hb-route","model":"hb-route",' + MSG + "}", False),
    ('{"model":"hb-route",' + MSG + ',"model":"lora-a"}', False),
    ('{"model":"hb-route","stream":1,' + MSG + "}", False),
    ('{"model":"hb-route","stream":true,"stream_options":"yes",' + MSG + "}", False),
    ('{"model":"hb\\u002droute",' + MSG + "}", True),
    ('{"m\\u006fdel":"hb-route",' + MSG + "}", True),
    ('{"messages":[{"role":"user","content":"hi","model":"hb-route"}],"model":"hb-route"}', True),
    ('{"messages":[{"role":"user","content":"\\"model\\":\\"hb-route\\""}],"model":"hb-route"}',
     True),
    ('{ "model" \n:\t"hb-route" ,' + MSG + ',"stream":true,"stream_options":{}}', True),
]  # fmt: skip


async def test_hostile_bodies_leave_the_experiment_running_without_errors(
    emu: str, start_gateway: GatewayFactory, rds: redis.Redis
) -> None:
    config = {"experiments": [experiment("hb", "hb-route", emu, 100)]}
    accepted = 0
    async with start_gateway(config) as gw:
        # the classic attack 20 times (enough to open the breaker if it were counted), then
        # one of each kind
        for body, ok in [HOSTILE[0]] * 20 + HOSTILE:
            resp = await gw.client.post(
                "/v1/chat/completions",
                content=body.encode(),
                headers={"Content-Type": "application/json", "X-User-Id": "hb-treated"},
            )
            if not ok:
                assert resp.status_code == 400, (body, resp.text)
                continue
            accepted += 1
            assert resp.status_code == 200, (body, resp.text)
            assert resp.headers["x-abgate-arm"] == "treatment"
            if "stream" not in body:
                assert resp.json()["model"] == "lora-a"  # the treatment answered
        await gw.drain()
        version = gw.app.gateway.table.experiments["hb"].version
        assert not gw.app.gateway.breakers.is_open("hb", version)
        state = (await gw.admin("GET", "/experiments/hb")).json()["state"]
    assert state == "running"
    totals = arm_totals(rds, "hb", "treatment")
    assert totals["requests"] == accepted == 5
    assert totals.get("errors", 0) == 0 and totals["completion_tokens"] > 0
    actors = {f.get("actor") for _, f in rds.xrange(keys.AUDIT)}  # type: ignore[union-attr]
    assert "circuit-breaker" not in actors


async def test_a_mebibyte_unit_id_is_refused_and_does_not_grow_redis(
    emu: str, start_gateway: GatewayFactory, rds: redis.Redis
) -> None:
    config = {"experiments": [experiment("big", "big-route", emu, 50)]}
    huge = "u" * (1024 * 1024)
    async with start_gateway(config) as gw:
        warm = await gw.chat("big-route", "warm-user")  # the gateway's own keys exist
        assert warm.status_code == 200
        await gw.drain()
        before = int(rds.info("memory")["used_memory"])
        answers: list[httpx.Response] = []
        for _ in range(5):
            body = {"model": "big-route", "messages": [], "user": huge}  # the body's `user`
            answers.append(await gw.client.post("/v1/chat/completions", json=body))
            answers.append(await gw.chat("big-route", huge))  # the X-User-Id header
        await gw.drain()
        after = int(rds.info("memory")["used_memory"])
    for resp in answers:
        assert resp.status_code == 400, resp.text[:200]
        error = resp.json()["error"]
        assert error["param"] in ("user", "x-user-id")
        assert "at most 256 bytes" in error["message"]
    assert after - before < 64 * 1024, f"Redis grew by {after - before} bytes"
    longest = max(len(k) for k in rds.scan_iter(count=1000))
    assert longest < 1024

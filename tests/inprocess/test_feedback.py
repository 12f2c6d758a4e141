"""Feedback in process: accepted once, duplicates, unknown ids and signals, the batch form."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import redis

from router import keys
from router.signals.readmodel import decode_unit_totals
from tests.inprocess.conftest import Gate, GatewayFactory, arm_totals
from tests.procs import experiment

pytestmark = pytest.mark.asyncio(loop_scope="module")

FORGED = "req_" + "0123456789abcdef" * 2


def config(emu: str, name: str) -> dict[str, Any]:
    return {"experiments": [experiment(name, name + "-route", emu, 50, signals=["csat"])]}


async def ask(gw: Gate, route: str, user: str) -> tuple[str, str]:
    """Proxy one request; (request id, arm)."""
    resp = await gw.chat(route, user, max_tokens=3)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-request-id"], resp.headers["x-abgate-arm"]


async def post(gw: Gate, body: Any) -> httpx.Response:
    return await gw.client.post("/v1/feedback", json=body)


async def test_accepted_then_duplicate_and_counted_once(
    emu: str, start_gateway: GatewayFactory, rds: redis.Redis
) -> None:
    async with start_gateway(config(emu, "fb-once")) as gw:
        # sent at once: the gateway waits for the request's event to reach Redis
        rid, arm = await ask(gw, "fb-once-route", "fb-user")
        first = await post(gw, {"request_id": rid, "signal": "thumbs_up"})
        assert first.status_code == 202, first.text
        assert first.json() == {"request_id": rid, "signal": "thumbs_up", "arm": arm,
                                "experiment": "fb-once", "result": "accepted"}  # fmt: skip
        again = await post(gw, {"request_id": rid, "signal": "thumbs_up"})
        assert again.status_code == 200
        assert again.json() == {**first.json(), "result": "duplicate"}
        racing = await asyncio.gather(
            *(post(gw, {"request_id": rid, "signal": "resolved"}) for _ in range(20))
        )
        assert sorted(r.status_code for r in racing) == [200] * 19 + [202]
        metrics = (await gw.client.get("/metrics")).text
    agg = arm_totals(rds, "fb-once", arm)
    assert agg["feedback"] == 2 and agg["fb:thumbs_up"] == 1 and agg["fb:resolved"] == 1
    assert agg["requests"] == 1
    assert not rds.exists(
        keys.arm_totals("fb-once", "treatment" if arm == "control" else "control")
    )
    unit = decode_unit_totals(rds.hget(keys.unit_totals("fb-once", arm), "fb-user") or "")
    assert unit["fb:thumbs_up"] == 1 and unit["requests"] == 1
    assert (
        f'abgate_feedback_total{{arm="{arm}",experiment="fb-once",route="fb-once-route",'
        'signal="thumbs_up"} 1.0' in metrics
    )


async def test_unknown_request_id_and_signal_are_refused(
    emu: str, start_gateway: GatewayFactory, rds: redis.Redis
) -> None:
    async with start_gateway(config(emu, "fb-refuse")) as gw:
        rid, arm = await ask(gw, "fb-refuse-route", "fb-refused")
        unknown = await post(gw, {"request_id": FORGED, "signal": "thumbs_up"})
        assert unknown.status_code == 404
        err = unknown.json()["error"]
        assert "unknown or expired" in err["message"] and err["param"] == "request_id"
        assert err["request_id"].startswith("req_")
        bad_signal = await post(gw, {"request_id": rid, "signal": "love"})
        assert bad_signal.status_code == 422
        err = bad_signal.json()["error"]
        assert "unknown signal 'love'" in err["message"] and err["param"] == "signal"
        assert "csat" in err["message"]  # the experiment's own signals are listed
        malformed = await post(gw, {"request_id": "abc", "signal": "thumbs_up"})
        assert malformed.status_code == 422 and "request_id" in malformed.json()["error"]["message"]
        text = await gw.client.post("/v1/feedback", content=b"x")
        assert text.status_code == 415
        broken = await gw.client.post(
            "/v1/feedback", content=b'{"request_id": ', headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
        await gw.drain()
    assert arm_totals(rds, "fb-refuse", arm).get("feedback", 0) == 0


async def test_batch_answers_per_item(
    emu: str, start_gateway: GatewayFactory, rds: redis.Redis
) -> None:
    async with start_gateway(config(emu, "fb-batch")) as gw:
        a, arm_a = await ask(gw, "fb-batch-route", "fb-batch-a")
        b, arm_b = await ask(gw, "fb-batch-route", "fb-batch-b")
        resp = await post(gw, [
            {"request_id": a, "signal": "csat", "value": 4.5},
            {"request_id": b, "signal": "csat", "value": 2},
            {"request_id": a, "signal": "csat", "value": 1},
            {"request_id": "req_" + "f" * 32, "signal": "resolved"},
            {"request_id": b, "signal": "nope"},
        ])  # fmt: skip
        assert resp.status_code == 200, resp.text
        results = resp.json()["results"]
        assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
        assert [r["status"] for r in results] == [202, 202, 200, 404, 422]
        assert [r.get("result") for r in results[:3]] == ["accepted", "accepted", "duplicate"]
        assert [r["arm"] for r in results[:2]] == [arm_a, arm_b]
        assert "unknown signal 'nope'" in results[4]["error"]["message"]
        empty = await post(gw, [])
        assert empty.status_code == 422 and "empty" in empty.json()["error"]["message"]
    arms = {arm_a, arm_b}
    count = sum(arm_totals(rds, "fb-batch", arm).get("fb:csat", 0) for arm in arms)
    value = sum(arm_totals(rds, "fb-batch", arm).get("fv:csat", 0) for arm in arms)
    assert count == 2 and value == 6.5  # the duplicate for `a` added neither count nor value

"""No key lives forever: after a traffic run (both arms, feedback, captures, regenerations, the
controller's evaluations) and the end of the experiments (one rolled back, one promoted, one
deleted), every key in Redis has a TTL except the configuration, the audit and the aggregates
the ended experiments' reports read. A new immortal key fails this test."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from router import keys
from router.control.changes import apply_change
from router.control.controller import Controller
from router.control.retention import Retention
from router.control.store import ConfigStore
from router.experiments import Experiment
from tests.inprocess.conftest import Gate, GatewayFactory, arm_totals
from tests.procs import experiment

pytestmark = pytest.mark.asyncio(loop_scope="module")

RETENTION = 3 * 86400
WINDOW = 86400
NAMES = {"rolled": "life-rb", "promoted": "life-pr", "deleted": "life-del"}
USERS = [f"life-user-{i}" for i in range(12)]


def _config(emu: str) -> dict[str, Any]:
    capture = {"rate": 1.0, "max_items": 50, "retention_days": 1}
    return {
        "experiments": [
            experiment(
                name,
                name + "-route",
                emu,
                50,
                capture=capture,
                signals=["csat"],
                detect_regenerations=True,
            )
            for name in NAMES.values()
        ]
    }


async def _traffic(gw: Gate, name: str) -> None:
    """Requests of both arms (each user twice with the same prompt: a regeneration), feedback
    of each kind, a stream."""
    rids: list[str] = []
    for user in USERS:
        for _ in range(2):
            resp = await gw.chat(name + "-route", user, max_tokens=3)
            assert resp.status_code == 200, resp.text
            rids.append(resp.headers["x-request-id"])
    stream = await gw.chat(name + "-route", USERS[0], max_tokens=3, stream=True)
    assert stream.status_code == 200
    for i, rid in enumerate(rids):
        signal = ("thumbs_up", "thumbs_down", "csat")[i % 3]
        fb = await gw.client.post("/v1/feedback", json={"request_id": rid, "signal": signal})
        assert fb.status_code == 202, fb.text


async def _until(check: Any, what: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        assert time.monotonic() < deadline, f"not reached within {limit} s: {what}"
        await asyncio.sleep(0.02)


async def test_every_key_expires_but_the_config_the_audit_and_the_reports(
    emu: str, start_gateway: GatewayFactory, rds: redis.Redis, redis_url: str
) -> None:
    settings = {"ended_retention_seconds": RETENTION, "feedback_window_seconds": WINDOW}
    async with start_gateway(_config(emu), **settings) as gw:
        for name in NAMES.values():
            await _traffic(gw, name)
        await gw.drain()

        async def captured() -> bool:
            return all(rds.llen(keys.captures(n)) >= len(USERS) for n in NAMES.values())

        await _until(captured, "captures stored")
        client = aioredis.from_url(redis_url)
        try:
            controller = Controller(client, retention=Retention(RETENTION, WINDOW))
            for exp in (await controller.store.load()).experiments.values():
                assert (await controller.evaluate(exp, time.time())) is not None
        finally:
            await client.aclose()
        assert rds.xlen(keys.decisions(NAMES["rolled"])) == 1
        assert rds.ttl(keys.controller_step(NAMES["rolled"])) > 0
        assert rds.ttl(keys.controller_looks(NAMES["rolled"])) > 0

        for action, name in (("rollback", NAMES["rolled"]), ("promote", NAMES["promoted"]),
                             ("rollback", NAMES["deleted"])):  # fmt: skip
            resp = await gw.admin("POST", f"/experiments/{name}/{action}", json={"reason": "t"})
            assert resp.status_code == 200, resp.text
        assert (await gw.admin("DELETE", f"/experiments/{NAMES['deleted']}")).is_success

        # after its end an experiment's route still serves, but records nothing more
        before = arm_totals(rds, NAMES["promoted"], "treatment")
        for user in USERS[:4]:
            resp = await gw.chat(NAMES["promoted"] + "-route", user, max_tokens=2)
            assert resp.status_code == 200 and resp.headers["x-abgate-arm"] == "treatment"
            late = await gw.client.post(
                "/v1/feedback",
                json={
                    "request_id": resp.headers["x-request-id"],
                    "signal": "thumbs_up",
                },
            )
            assert late.status_code == 200 and late.json()["result"] == "ignored", late.text
        await gw.drain()
        assert arm_totals(rds, NAMES["promoted"], "treatment") == before
        report = (await gw.admin("GET", f"/experiments/{NAMES['promoted']}/report")).json()
        assert report["requests"]["treatment"] == before["requests"]

    kept = {keys.CONFIG, keys.CONFIG_VERSION, keys.AUDIT}
    for name in (NAMES["rolled"], NAMES["promoted"]):  # what their reports read
        kept |= {keys.arm_totals(name, a) for a in ("control", "treatment")}
        kept |= {keys.unit_sums(name, a) for a in ("control", "treatment")}
        kept |= {keys.period_sums(name, a) for a in ("control", "treatment")}
        kept |= {keys.decisions(name), keys.ended(name), keys.periods(name)}
    # the adapter registry (here the emulator's start-time adapter, discovered) is kept like
    # the configuration: the model servers' lists bound it, no client writes it
    names = rds.hkeys(keys.ADAPTERS)
    registry = {keys.ADAPTERS, *(keys.adapter_state(n) for n in names)} if names else set()
    immortal = {k for k in rds.scan_iter(count=1000) if rds.ttl(k) == -1}
    assert immortal <= kept | registry, sorted(immortal - kept - registry)
    # the ended experiments' aggregates are there (the test is not vacuous)
    assert kept - immortal <= {keys.decisions(NAMES["promoted"])}, sorted(kept - immortal)
    for name in (NAMES["rolled"], NAMES["promoted"]):
        for key in (keys.unit_totals(name, "control"), keys.unit_totals(name, "treatment"),
                    keys.events(name)):  # fmt: skip
            assert WINDOW < rds.ttl(key) <= RETENTION, key  # the retention, not the window
    # the deleted experiment left only keys that expire by themselves
    deleted = [k for k in rds.scan_iter(keys.experiment_tag(NAMES["deleted"]) + "*")]
    assert keys.arm_totals(NAMES["deleted"], "control") not in deleted
    assert all(rds.ttl(k) > 0 for k in deleted)
    assert rds.hget(keys.ended(NAMES["deleted"]), "deleted") == "1"

    # a new experiment under the deleted one's name starts from nothing
    fresh = Experiment.model_validate(experiment(NAMES["deleted"], "again", "http://x", 10))
    client = aioredis.from_url(redis_url)
    try:
        await apply_change(
            ConfigStore(client), fresh.name, lambda *_: fresh, actor="t", action="create", reason=""
        )
    finally:
        await client.aclose()
    assert not rds.exists(keys.ended(NAMES["deleted"]))
    # nothing but the record of its first period (kept, as its report reads it)
    assert [k for k in rds.scan_iter(keys.experiment_tag(NAMES["deleted"]) + "*")
            if rds.ttl(k) == -1] == [keys.periods(NAMES["deleted"])]  # fmt: skip
    assert rds.hkeys(keys.periods(NAMES["deleted"])) == ["0"]

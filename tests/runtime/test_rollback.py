"""BreakerRollback: one audited rollback per tripped experiment, retried while Redis is away."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from router.control.store import ConfigDoc, ConfigStore, read_audit
from router.metrics import GatewayMetrics
from router.runtime.rollback import ATTEMPTS, BreakerRollback
from tests.runtime.conftest import experiment


async def test_two_trips_write_one_audited_rollback(
    aredis: aioredis.Redis, metrics: GatewayMetrics, registry: CollectorRegistry
) -> None:
    store = ConfigStore(aredis)
    await store.seed([experiment("exp", "route")], actor="test")
    applied: list[ConfigDoc] = []
    rollback = BreakerRollback(store, metrics, applied.append)

    reasons = ("circuit breaker: 20 of the last 40 failed", "circuit breaker: 21 of the last 40")
    for reason in reasons:  # tripped twice before the first rollback is written
        rollback.trip("exp", reason)
    await rollback.wait()

    doc = await store.load()
    exp = doc.experiments["exp"]
    assert (exp.state, exp.treatment_percent) == ("rolled_back", 0.0)
    assert exp.state_reason in reasons
    audit = await read_audit(aredis, "exp")
    assert [(a["actor"], a["action"]) for a in audit] == [
        ("circuit-breaker", "rollback"),
        ("test", "create"),
    ]
    assert audit[0]["reason"] == exp.state_reason
    assert [d.version for d in applied] == [doc.version]  # swapped in at once, once
    assert (
        registry.get_sample_value("abgate_circuit_breaker_trips_total", {"experiment": "exp"}) == 2
    )


async def test_nothing_to_roll_back(aredis: aioredis.Redis, metrics: GatewayMetrics) -> None:
    store = ConfigStore(aredis)
    applied: list[ConfigDoc] = []
    await BreakerRollback(store, metrics, applied.append).rollback("missing", "tripped")
    assert applied == [] and await read_audit(aredis) == []


async def test_gives_up_after_retries_while_redis_is_down(
    dead_redis: aioredis.Redis, metrics: GatewayMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0
    store = ConfigStore(dead_redis)
    real_update = store.update

    async def counting_update(*args: object, **kw: object) -> ConfigDoc:
        nonlocal calls
        calls += 1
        return await real_update(*args, **kw)  # type: ignore[arg-type]

    store.update = counting_update  # type: ignore[method-assign]
    applied: list[ConfigDoc] = []
    with caplog.at_level(logging.ERROR, logger="router.runtime.rollback"):
        await BreakerRollback(store, metrics, applied.append, retry_delay=0.0).rollback("e", "r")
    assert calls == ATTEMPTS and applied == []
    assert "could not record the circuit breaker's rollback of e" in caplog.text


async def test_cancel_stops_pending_rollbacks(
    dead_redis: aioredis.Redis, metrics: GatewayMetrics
) -> None:
    rollback = BreakerRollback(ConfigStore(dead_redis), metrics, lambda _: None, retry_delay=60)
    rollback.trip("exp", "tripped")
    rollback.cancel()
    await rollback.wait()  # returns: the task was cancelled, not left sleeping

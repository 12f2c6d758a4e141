"""Redis's state as the gateway instance reports it: right from the start, and an outage logged
once when it starts and once when it ends (not a traceback every health interval)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from router.control.adapters import AdapterManager
from router.metrics import GatewayMetrics
from router.runtime.embedded_redis import EmbeddedRedis
from router.runtime.gateway import Gateway
from router.runtime.health import HealthService
from router.runtime.redis_state import RedisState
from router.settings import Settings
from serving.pool import ReplicaPool

DOWN = "Redis is unreachable"
BACK = "Redis is reachable again"


@pytest.fixture
def stopped_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server with its port chosen, not started yet."""
    server = EmbeddedRedis(appendonly=False, data_dir=tmp_path / "redis")
    yield server
    server.cleanup()


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def _until(predicate: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


def test_an_outage_is_logged_once_when_it_starts_and_once_when_every_service_is_back(
    metrics: GatewayMetrics, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="router.runtime.redis_state")
    state = RedisState(metrics)
    assert state.ok and registry.get_sample_value("abgate_redis_up") == 1
    for _ in range(5):
        state.down("health", ConnectionError("refused"))
        state.down("config", ConnectionError("refused"))
    assert not state.ok and registry.get_sample_value("abgate_redis_up") == 0
    state.up("health")
    assert not state.ok  # the config follower has not reached it yet
    report = state.report("events")
    report(None)  # a service that never failed changes nothing
    state.up("config")
    assert state.ok and registry.get_sample_value("abgate_redis_up") == 1
    assert len(_lines(caplog, DOWN)) == 1 and len(_lines(caplog, BACK)) == 1


async def test_the_health_loop_logs_an_outage_once_without_tracebacks(
    stopped_redis: EmbeddedRedis, replicas: ReplicaPool, metrics: GatewayMetrics,
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    stopped_redis.start()
    client = aioredis.from_url(stopped_redis.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    settings = Settings(redis_url=stopped_redis.url, health_interval_seconds=0.05)
    state = RedisState(metrics)
    health = HealthService(
        settings, client, replicas, AdapterManager(client, replicas), metrics, "gw-a",
        Counter(), state,
    )  # fmt: skip
    task = asyncio.create_task(health.run())
    try:
        errors = {"component": "health"}
        await asyncio.to_thread(stopped_redis.stop)
        await _until(
            lambda: (registry.get_sample_value("abgate_redis_errors_total", errors) or 0) >= 10,
            "the health loop did not keep trying while Redis was away",
        )
        assert not state.ok
        await asyncio.to_thread(stopped_redis.start)
        await _until(lambda: state.ok, "the health loop did not see Redis come back")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()
    assert len(_lines(caplog, DOWN)) == 1 and len(_lines(caplog, BACK)) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_readiness_reports_redis_down_from_the_start_and_back_when_it_is(
    stopped_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = Settings(
        redis_url=stopped_redis.url, health_interval_seconds=0.1, config_poll_seconds=0.1
    )
    gateway = Gateway(settings)
    await gateway.start()
    try:
        assert gateway.readiness()["redis"] == "unreachable"  # before any event was written
        await asyncio.to_thread(stopped_redis.start)
        await _until(lambda: gateway.readiness()["redis"] == "ok", "Redis not seen back")
    finally:
        await gateway.close()
    assert len(_lines(caplog, DOWN)) == 1 and len(_lines(caplog, BACK)) == 1
    assert not [r for r in caplog.records if r.exc_info]

"""HealthService: in-flight counts published with a TTL, summed across gateway instances; one
reconciler per round; replica and adapter metrics."""

from __future__ import annotations

from collections import Counter

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from router import keys
from router.control.adapters import AdapterManager, AdapterRecord, ReplicaState
from router.metrics import GatewayMetrics
from router.runtime.health import HealthService
from router.settings import Settings
from serving.pool import ReplicaPool

URL = "http://127.0.0.1:9/v1"


def _service(
    settings: Settings,
    aredis: aioredis.Redis,
    replicas: ReplicaPool,
    metrics: GatewayMetrics,
    identity: str = "gw-a",
) -> HealthService:
    adapters = AdapterManager(aredis, replicas)
    return HealthService(settings, aredis, replicas, adapters, metrics, identity, Counter())


async def test_tick_publishes_in_flight_counts_with_a_ttl(
    settings: Settings, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics,
    rds: redis.Redis,
) -> None:  # fmt: skip
    health = _service(settings, aredis, replicas, metrics)
    health.model_inflight.update({"lora-a": 2, "base": 0})
    await health.tick()
    key = keys.inflight("gw-a")
    assert rds.hgetall(key) == {"lora-a": "2"}  # models with nothing running are left out
    assert 0 < rds.ttl(key) <= max(3, int(settings.health_interval_seconds * 3))

    health.model_inflight["lora-a"] = 0
    await health.tick()
    assert not rds.exists(key)


async def test_in_flight_adds_other_instances_but_not_its_own_published_count(
    settings: Settings, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics,
    rds: redis.Redis,
) -> None:  # fmt: skip
    health = _service(settings, aredis, replicas, metrics)
    health.model_inflight["lora-a"] = 2
    await health.tick()
    health.model_inflight["lora-a"] = 1  # one finished since the tick: the local count wins
    rds.hset(keys.inflight("gw-b"), mapping={"lora-a": 3, "base": 7})
    rds.hset(keys.inflight("gw-c"), mapping={"base": 1})
    assert await health.in_flight("lora-a") == 1 + 3
    assert await health.in_flight("base") == 0 + 7 + 1
    assert await health.in_flight("unknown") == 0


async def test_one_instance_reconciles_per_round(
    redis_url: str, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics,
    rds: redis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    settings = Settings(redis_url=redis_url, reconcile_interval_seconds=30)
    a = _service(settings, aredis, replicas, metrics, "gw-a")
    b = _service(settings, aredis, replicas, metrics, "gw-b")
    rounds: list[str] = []
    for service in (a, b):

        async def reconcile(who: str = service.identity) -> list[str]:
            rounds.append(who)
            return []

        monkeypatch.setattr(service.adapters, "reconcile", reconcile)
    await a.tick()
    await b.tick()  # the lock is a's for this round
    await a.tick()  # within the interval: no new round
    assert rounds == ["gw-a"]
    assert rds.get(keys.RECONCILER) == "gw-a"
    assert 0 < rds.pttl(keys.RECONCILER) <= 30_000


async def test_tick_exports_replica_and_adapter_metrics(
    settings: Settings, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics,
    registry: CollectorRegistry, rds: redis.Redis,
) -> None:  # fmt: skip
    replicas.set_for((URL,))
    replica = replicas.replica(URL)
    replica.outstanding = 4
    record = AdapterRecord(name="lora-a", path="/w/a", urls=[URL])
    rds.hset(keys.ADAPTERS, "lora-a", record.model_dump_json())
    rds.hset(keys.adapter_state("lora-a"), URL, ReplicaState(state="ready").model_dump_json())
    health = _service(settings, aredis, replicas, metrics)
    await health.tick()
    assert registry.get_sample_value("abgate_replica_healthy", {"replica": URL}) == 1
    assert registry.get_sample_value("abgate_replica_outstanding_requests", {"replica": URL}) == 4
    labels = {"adapter": "lora-a", "replica": URL, "state": "ready"}
    assert registry.get_sample_value("abgate_adapter_state", labels) == 1

    replica.healthy = False
    await health.tick()
    assert registry.get_sample_value("abgate_replica_healthy", {"replica": URL}) == 0

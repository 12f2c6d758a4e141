"""HealthService: in-flight counts published with an expiry in one hash, summed across gateway
instances without scanning the keyspace; one reconciler per round; replica and adapter
metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from router import keys
from router.control import discovery
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


async def _tick(service: HealthService) -> None:
    """One tick, and the reconcile round it started (in its own task) run to its end."""
    await service.tick()
    if service.reconciling is not None:
        await service.reconciling


def _entry(rds: redis.Redis, identity: str) -> tuple[int, dict[str, int]]:
    """A gateway instance's registry entry: its expiry (ms, Redis's clock) and its counts."""
    raw = rds.hget(keys.INFLIGHT, identity)
    assert isinstance(raw, str), raw
    expiry, counts = raw.split(" ", 1)
    return int(expiry), json.loads(counts)


def _redis_ms(rds: redis.Redis) -> int:
    seconds, micros = rds.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_tick_publishes_in_flight_counts_with_an_expiry(
    settings: Settings, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics,
    rds: redis.Redis,
) -> None:  # fmt: skip
    health = _service(settings, aredis, replicas, metrics)
    health.model_inflight.update({"lora-a": 2, "base": 0})
    await _tick(health)
    expiry, counts = _entry(rds, "gw-a")
    assert counts == {"lora-a": 2}  # models with nothing running are left out
    lifetime = max(3.0, settings.health_interval_seconds * 3) * 1000
    assert 0 < expiry - _redis_ms(rds) <= lifetime
    # one shared hash: entries expire by their own time, the key with its longest-lived entry
    assert 0 < rds.pttl(keys.INFLIGHT) <= lifetime

    health.model_inflight["lora-a"] = 0
    await _tick(health)
    assert not rds.hexists(keys.INFLIGHT, "gw-a")


async def test_in_flight_adds_other_instances_but_not_its_own_published_count(
    settings: Settings, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics,
    rds: redis.Redis,
) -> None:  # fmt: skip
    health = _service(settings, aredis, replicas, metrics)
    health.model_inflight["lora-a"] = 2
    await _tick(health)
    health.model_inflight["lora-a"] = 1  # one finished since the tick: the local count wins
    b = _service(settings, aredis, replicas, metrics, "gw-b")
    b.model_inflight.update({"lora-a": 3, "base": 7})
    c = _service(settings, aredis, replicas, metrics, "gw-c")
    c.model_inflight.update({"base": 1})
    await _tick(b)
    await _tick(c)
    assert await health.in_flight("lora-a") == 1 + 3
    assert await health.in_flight("base") == 0 + 7 + 1
    assert await health.in_flight("unknown") == 0


async def test_a_stopped_instance_stops_counting_when_its_entry_expires(
    settings: Settings, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics,
    rds: redis.Redis,
) -> None:  # fmt: skip
    health = _service(settings, aredis, replicas, metrics)
    now = _redis_ms(rds)
    rds.hset(keys.INFLIGHT, "gw-gone", f"{now - 1} " + json.dumps({"lora-a": 5}))
    rds.hset(keys.INFLIGHT, "gw-live", f"{now + 60_000} " + json.dumps({"lora-a": 2}))
    rds.hset(keys.INFLIGHT, "gw-odd", "not an entry")
    assert await health.in_flight("lora-a") == 2
    assert set(rds.hkeys(keys.INFLIGHT)) == {"gw-live"}  # the dead entries were removed


async def test_in_flight_does_not_scan_the_keyspace(
    settings: Settings, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics,
    rds: redis.Redis,
) -> None:  # fmt: skip
    """A drain asks ten times a second; the keyspace holds a key per recorded request."""
    with rds.pipeline(transaction=False) as pipe:
        for i in range(5000):
            pipe.set(keys.request(f"req_{i:032x}"), "c|exp|unit", ex=600)
        pipe.execute()
    others = _service(settings, aredis, replicas, metrics, "gw-b")
    others.model_inflight["lora-a"] = 4
    await _tick(others)
    health = _service(settings, aredis, replicas, metrics)
    await health.in_flight("lora-a")  # the script is loaded once, outside the measurement
    rds.config_resetstat()
    for _ in range(10):
        assert await health.in_flight("lora-a") == 4
    stats = rds.info("commandstats")
    assert "cmdstat_scan" not in stats, stats["cmdstat_scan"]
    calls = sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_config")
    assert calls <= 10 * 3, stats  # a few commands per call, whatever the keyspace holds


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
    await _tick(a)
    await _tick(b)  # the lock is a's for this round
    await _tick(a)  # within the interval: no new round
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
    await _tick(health)
    assert registry.get_sample_value("abgate_replica_healthy", {"replica": URL}) == 1
    assert registry.get_sample_value("abgate_replica_outstanding_requests", {"replica": URL}) == 4
    labels = {"adapter": "lora-a", "replica": URL, "state": "ready"}
    assert registry.get_sample_value("abgate_adapter_state", labels) == 1

    replica.healthy = False
    await _tick(health)
    assert registry.get_sample_value("abgate_replica_healthy", {"replica": URL}) == 0


async def test_replica_states_and_panic_requests_are_exported(
    settings: Settings, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics,
    registry: CollectorRegistry,
) -> None:  # fmt: skip
    replica = replicas.configure((URL,)).replicas[0]
    health = _service(settings, aredis, replicas, metrics)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"replica": URL, **labels})

    health.replica_metrics()
    assert sample("abgate_replica_state", state="healthy") == 1
    assert sample("abgate_replica_state", state="unhealthy") == 0
    assert sample("abgate_replica_state", state="ejected") == 0
    assert sample("abgate_replica_panic_requests_total") == 0

    replica.healthy = False
    replica.panic_requests = 3
    health.replica_metrics()
    health.replica_metrics()  # counted once, not per export
    assert sample("abgate_replica_state", state="unhealthy") == 1
    assert sample("abgate_replica_state", state="healthy") == 0
    assert sample("abgate_replica_healthy") == 0
    assert sample("abgate_replica_panic_requests_total") == 3


async def test_a_reconcile_round_that_hangs_never_holds_up_the_health_loop(
    redis_url: str, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics,
    rds: redis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A load (or a /v1/models) that takes minutes runs in the round's own task: the health loop
    keeps publishing the in-flight counts that other instances' drains read, and no second
    round starts while the first still runs."""
    settings = Settings(
        redis_url=redis_url, health_interval_seconds=0.05, reconcile_interval_seconds=0.05
    )
    health = _service(settings, aredis, replicas, metrics)
    release = asyncio.Event()
    rounds: list[int] = []

    async def reconcile() -> list[str]:
        rounds.append(len(rounds))
        await release.wait()  # a load that does not answer
        return []

    monkeypatch.setattr(health.adapters, "reconcile", reconcile)
    health.model_inflight["lora-a"] = 1
    loop = asyncio.create_task(health.run())
    try:
        expiries: set[int] = set()
        deadline = time.monotonic() + 10
        while len(expiries) < 5:  # five publications while the one round hangs
            assert time.monotonic() < deadline, (expiries, rounds)
            if rounds and rds.hexists(keys.INFLIGHT, "gw-a"):
                expiries.add(_entry(rds, "gw-a")[0])
            await asyncio.sleep(0.02)
        assert rounds == [0]  # the rounds that came due meanwhile were skipped
        assert health.reconciling is not None and not health.reconciling.done()

        release.set()  # the load ends: the next round comes
        while len(rounds) < 2:
            assert time.monotonic() < deadline, rounds
            await asyncio.sleep(0.02)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert health.reconciling is None  # stopped with the loop


async def test_discovery_ends_within_its_deadline_when_v1_models_hangs(
    aredis: aioredis.Redis, replicas: ReplicaPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    hang = asyncio.Event()

    async def served_adapters(_: object) -> None:
        await hang.wait()

    monkeypatch.setattr(discovery, "served_adapters", served_adapters)
    replicas.replica(URL).healthy = True
    started = time.monotonic()
    assert await discovery.discover(AdapterManager(aredis, replicas), [URL], deadline=0.3) == []
    assert time.monotonic() - started < 3

"""ConfigFollower: applies newer stored versions, re-seeds an emptied Redis, follows changes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from router import keys
from router.control.store import AuditEntry, ConfigDoc, ConfigStore, read_audit
from router.dataplane.breaker import Breakers
from router.experiments import ConfigFile, Experiment
from router.metrics import GatewayMetrics
from router.runtime.config_follower import ConfigFollower
from router.settings import Settings
from serving.pool import ReplicaPool
from tests.runtime.conftest import experiment


def _follower(
    settings: Settings,
    aredis: aioredis.Redis,
    replicas: ReplicaPool,
    metrics: GatewayMetrics,
    file_config: ConfigFile | None = None,
) -> ConfigFollower:
    return ConfigFollower(
        settings, file_config or ConfigFile(), ConfigStore(aredis), aredis, replicas, Breakers(),
        metrics,
    )  # fmt: skip


async def _put(store: ConfigStore, *exps: Experiment) -> ConfigDoc:
    """Store `exps` as the next version (what an admin change does)."""

    def mutate(current: dict[str, Experiment]) -> tuple[dict[str, Experiment], list[AuditEntry]]:
        for exp in exps:
            current[exp.name] = exp
        return current, [AuditEntry("test", "put", e.name, None, None) for e in exps]

    return await store.update(mutate)


async def _eventually(predicate: Callable[[], bool]) -> None:
    for _ in range(250):  # 5 s
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not hold in time")


async def test_refresh_applies_a_newer_version_and_ignores_the_same_one(
    settings: Settings, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics,
    registry: CollectorRegistry,
) -> None:  # fmt: skip
    follower = _follower(settings, aredis, replicas, metrics)
    assert (follower.table.version, follower.loaded) == (0, False)
    await follower.refresh()  # nothing stored yet: the empty document still counts as loaded
    assert (follower.table.version, follower.loaded) == (0, True)

    store = ConfigStore(aredis)
    await _put(store, experiment("one", "route-one", "http://127.0.0.1:9/v1"))
    await follower.refresh()
    first = follower.table
    assert first.version == 1 and set(first.routes) == {"route-one"}
    assert [r.url for r in replicas.replicas] == ["http://127.0.0.1:9/v1"]  # clients made now
    assert registry.get_sample_value("abgate_config_version") == 1

    await follower.refresh()
    assert follower.table is first  # same version: not compiled again

    await _put(store, experiment("two", "route-two", "http://127.0.0.1:10/v1"))
    await follower.refresh()
    assert follower.table.version == 2 and set(follower.table.routes) == {"route-one", "route-two"}


async def test_apply_forgets_the_breakers_of_experiments_no_longer_routed(
    settings: Settings, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics
) -> None:
    follower = _follower(settings, aredis, replicas, metrics)
    exp = experiment("one", "route-one", version=1)
    follower.apply(ConfigDoc(1, {"one": exp}))
    routed = follower.table.routes["route-one"]
    for _ in range(routed.experiment.circuit_breaker.window):
        follower.breakers.record("one", 1, routed.experiment.circuit_breaker, failed=True)
    assert follower.breakers.is_open("one", 1)
    follower.apply(ConfigDoc(2, {"one": exp.model_copy(update={"version": 2})}))
    assert not follower.breakers.is_open("one", 1)


async def test_refresh_seeds_again_when_redis_lost_its_data(
    settings: Settings, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics,
    rds: redis.Redis,
) -> None:  # fmt: skip
    file_config = ConfigFile(experiments=[experiment("seeded", "seeded-route")])
    follower = _follower(settings, aredis, replicas, metrics, file_config)
    await follower.load_initial()
    assert follower.table.version == 1 and "seeded-route" in follower.table.routes

    rds.flushall()  # a restart without persistence
    await follower.refresh()
    assert rds.get(keys.CONFIG_VERSION) == "1"
    assert follower.table.version == 1 and "seeded-route" in follower.table.routes
    audit = await read_audit(aredis, "seeded")
    assert [(a["actor"], a["action"]) for a in audit] == [("config-file", "create")]


async def test_load_initial_serves_the_config_file_while_redis_is_down(
    settings: Settings, dead_redis: aioredis.Redis, replicas: ReplicaPool,
    metrics: GatewayMetrics, registry: CollectorRegistry,
) -> None:  # fmt: skip
    file_config = ConfigFile(experiments=[experiment("seeded", "seeded-route")])
    follower = _follower(settings, dead_redis, replicas, metrics, file_config)
    await follower.load_initial()
    assert follower.loaded and follower.table.version == 0
    assert "seeded-route" in follower.table.routes
    assert registry.get_sample_value("abgate_redis_errors_total", {"component": "config"}) == 1


async def test_watch_follows_published_changes_and_updates_the_unit_gauges(
    redis_url: str, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics,
    registry: CollectorRegistry, rds: redis.Redis,
) -> None:  # fmt: skip
    settings = Settings(redis_url=redis_url, config_poll_seconds=0.2)
    follower = _follower(settings, aredis, replicas, metrics)
    task = asyncio.create_task(follower.watch())
    try:
        await _put(ConfigStore(aredis), experiment("one", "route-one"))
        rds.hset(keys.unit_sums("one", "control"), "n", 3)  # after its creation, which clears
        await _eventually(lambda: follower.table.version == 1)
        labels = {"route": "route-one", "experiment": "one", "arm": "control"}
        await _eventually(lambda: registry.get_sample_value("abgate_experiment_units", labels) == 3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_targets_health_path_wins_over_the_default_upstreams(
    settings: Settings, aredis: aioredis.Redis, replicas: ReplicaPool, metrics: GatewayMetrics
) -> None:
    """The default upstream is often the same server as a target: configured after the
    targets, it must not put /health back on a replica whose target switched checks off."""
    url = "http://127.0.0.1:9/v1"
    base = experiment("hp", "hp-route", url)
    exp = base.model_copy(
        update={
            "control": base.control.model_copy(update={"health_path": None}),
            "treatment": base.treatment.model_copy(update={"health_path": None}),
        }
    )
    file_config = ConfigFile.model_validate({"default_upstream": {"base_url": url}})
    follower = _follower(settings, aredis, replicas, metrics, file_config)
    follower.apply(ConfigDoc(1, {exp.name: exp}))
    assert replicas.replica(url).health_path is None

"""Redis locks that only their holder renews or releases: the adapter lock and the shared
implementation the controller's leader lock uses too, against the suite's real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from router import keys
from router.control.adapters import AdapterError, AdapterManager
from router.control.redislock import RedisLock
from serving.pool import ReplicaPool
from serving.types import Timeouts
from serving.upstream import UpstreamPool
from tests.inprocess.conftest import serve_emulator
from tests.procs import adapter_dir

OTHER = "another-holder"
TTL = 0.3  # seconds: short, so that a test outlives several TTLs within a second


@pytest.fixture
async def replicas() -> AsyncIterator[ReplicaPool]:
    pool = UpstreamPool(timeouts=Timeouts(connect=1.0, read=5.0), max_connections=4)
    yield ReplicaPool(pool)
    await pool.close()


class ExpiresMidRelease(aioredis.Redis):
    """A client of the real server on which, once `armed` names a lock's key, the lock runs out
    and another holder takes it at the worst moment of its release: right after a GET of the
    key (between a check and a delete), or just before a command that checks and deletes at
    once (where there is no moment in between)."""

    armed: str | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        key, command = self.armed, str(args[0]).upper()
        touches = key is not None and key in [a for a in args[1:] if isinstance(a, str)]
        if key is None or not touches or command not in ("GET", "DEL", "EVALSHA", "EVAL"):
            return await self._send(*args, **options)
        self.armed = None
        if command == "GET":
            answer = await self._send(*args, **options)
            await self._taken_over(key)
            return answer
        await self._taken_over(key)
        return await self._send(*args, **options)

    async def _send(self, *args: Any, **options: Any) -> Any:
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    async def _taken_over(self, key: str) -> None:
        # the holder's TTL ran out and another holder's SET NX succeeded: one overwrite
        await self._send("SET", key, OTHER, "PX", 30_000)


async def test_a_holder_whose_lock_expired_does_not_delete_the_next_holders(
    redis_url: str, aredis: aioredis.Redis, replicas: ReplicaPool
) -> None:
    racy = ExpiresMidRelease.from_url(redis_url, decode_responses=True)
    assert isinstance(racy, ExpiresMidRelease)
    try:
        manager = AdapterManager(racy, replicas)
        key = keys.adapter_lock("lora-race")
        async with manager.lock("lora-race"):
            assert await aredis.exists(key)
            racy.armed = key  # the release that follows is where the lock changes hands
        assert racy.armed is None, "the release never touched the lock's key"
        assert await aredis.get(key) == OTHER.encode(), "the first holder deleted the next one's"
    finally:
        await racy.aclose()


async def test_a_stale_holder_neither_renews_nor_releases_the_new_holders_lock(
    aredis: aioredis.Redis,
) -> None:
    key = keys.adapter_lock("lora-stale")
    first = RedisLock(aredis, key, ttl=30)
    assert await first.try_acquire()
    await aredis.delete(key)  # its TTL ran out
    second = RedisLock(aredis, key, ttl=30)
    assert await second.try_acquire()
    await aredis.pexpire(key, 5_000)
    assert not await first.renew()
    assert 0 < await aredis.pttl(key) <= 5_000  # not extended to the first holder's 30 s
    assert not await first.release()
    assert await aredis.get(key) == second.token.encode()
    assert await second.release()
    assert not await aredis.exists(key)


async def test_a_long_operation_keeps_its_lock_past_the_ttl(
    aredis: aioredis.Redis, replicas: ReplicaPool
) -> None:
    here = AdapterManager(aredis, replicas, lock_ttl=TTL)
    elsewhere = AdapterManager(aredis, replicas, lock_ttl=TTL)  # another gateway instance
    key = keys.adapter_lock("lora-long")
    async with here.lock("lora-long"):
        token = await aredis.get(key)
        await asyncio.sleep(4 * TTL)
        assert await aredis.get(key) == token
        assert 0 < await aredis.pttl(key) <= TTL * 1000
        with pytest.raises(AdapterError, match="busy"):
            async with elsewhere.lock("lora-long", wait=TTL):
                pass
    assert not await aredis.exists(key)
    async with elsewhere.lock("lora-long", wait=0.1):  # free again at once
        pass


async def test_a_load_slower_than_the_ttl_keeps_the_name_locked(
    tmp_path: Path, aredis: aioredis.Redis, replicas: ReplicaPool
) -> None:
    path = str(adapter_dir(tmp_path, "lora-slow"))
    async with serve_emulator(
        tmp_path, allow_runtime_lora_updating=True, lora_load_latency_ms=1000
    ) as url:
        here = AdapterManager(aredis, replicas, lock_ttl=TTL)
        elsewhere = AdapterManager(aredis, replicas, lock_ttl=TTL)
        load = asyncio.create_task(here.load("lora-slow", path, [url + "/v1"]))
        await asyncio.sleep(3 * TTL)  # the load is still waiting for the replica
        assert not load.done()
        with pytest.raises(AdapterError, match="busy"):
            async with elsewhere.lock("lora-slow", wait=0.1):
                pass
        record = await load
        assert record.state == "ready", record.replicas
    assert not await aredis.exists(keys.adapter_lock("lora-slow"))


async def test_renewal_stops_when_the_lock_was_lost(aredis: aioredis.Redis) -> None:
    key = keys.adapter_lock("lora-lost")
    held = RedisLock(aredis, key, ttl=TTL)
    assert await held.try_acquire()
    async with held.renewing():
        await aredis.set(key, OTHER, px=60_000)  # expired and taken while the holder ran
        await asyncio.sleep(2 * TTL)
        assert held.lost
    assert await aredis.get(key) == OTHER.encode()
    assert await aredis.pttl(key) > 50_000  # the new holder's TTL, untouched

"""The LoRA adapter lifecycle on every model-server replica: load, probe, drain, unload, reconcile.

The registry lives in Redis (router/keys.py: name -> JSON record) so every gateway instance sees
the same adapters. A record holds the adapter's immutable name and path, the replicas it
belongs on, and a state per replica: ``loading``, ``ready``, ``failed`` (with the reason),
``draining``, ``unloaded``. Names are immutable per version: loading a known name from another
path is refused, because vLLM caches adapters by name and would keep serving the old weights
(docs/adapters.md).

Loading asks every replica to load the adapter, then probes each one with a one-token completion
(serving/lora.py speaks vLLM's side); the adapter is ready only when every replica answered the
probe. Operations on one name are serialised across gateway instances by a Redis lock that only
its holder can renew or release (router/control/redislock.py), renewed while the operation runs,
however long vLLM takes to load. Unloading
waits until no request uses the adapter (or a timeout), then unloads it from every replica.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from typing import Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from router import keys
from router.control.redislock import RedisLock
from serving.lora import load_adapter, probe_adapter, unload_adapter
from serving.pool import ReplicaPool

logger = logging.getLogger(__name__)

ReplicaStateName = Literal["loading", "ready", "failed", "draining", "unloaded"]
#: who loaded the adapter: the admin API, or the model server itself at its start (vLLM's
#: `--lora-modules`), found in its /v1/models by router/control/discovery.py
Origin = Literal["admin", "server_start"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")
# Renewed every third of it while an operation runs; it only bounds how long the name stays
# locked after a gateway instance died holding it.
LOCK_TTL_SECONDS = 30.0


class AdapterError(Exception):
    """A refused adapter operation; `status` is the HTTP status the admin API answers."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ReplicaState(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: ReplicaStateName
    reason: str = ""
    at: float = 0.0


class AdapterRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    path: str
    base_model: str | None = None
    urls: list[str]
    replicas: dict[str, ReplicaState] = Field(default_factory=dict)
    created_at: float = 0.0
    origin: Origin = "admin"

    @property
    def state(self) -> ReplicaStateName:
        states = {self.replicas.get(u, ReplicaState(state="loading")).state for u in self.urls}
        for candidate in ("failed", "loading", "draining"):
            if candidate in states:
                return candidate
        return "unloaded" if states == {"unloaded"} else "ready"

    def ready_on(self, urls: tuple[str, ...]) -> bool:
        return all(self.replicas.get(u, ReplicaState(state="loading")).state == "ready"
                   for u in urls)  # fmt: skip

    def summary(self) -> dict[str, object]:
        return {**self.model_dump(), "state": self.state}


class AdapterManager:
    def __init__(
        self, redis: aioredis.Redis, replicas: ReplicaPool, lock_ttl: float = LOCK_TTL_SECONDS
    ) -> None:
        self.redis = redis
        self.replicas = replicas
        self.lock_ttl = lock_ttl
        self._locks: dict[str, asyncio.Lock] = {}

    # -- registry ------------------------------------------------------------------------------

    async def get(self, name: str) -> AdapterRecord | None:
        raw = await self.redis.hget(keys.ADAPTERS, name)
        if raw is None:
            return None
        return await self._with_states(AdapterRecord.model_validate_json(raw))

    async def all(self) -> list[AdapterRecord]:
        raw = await self.redis.hgetall(keys.ADAPTERS)
        records = [
            await self._with_states(AdapterRecord.model_validate_json(v)) for v in raw.values()
        ]
        return sorted(records, key=lambda r: r.created_at)

    async def _with_states(self, record: AdapterRecord) -> AdapterRecord:
        states = await self.redis.hgetall(keys.adapter_state(record.name))
        replicas = {
            (k.decode() if isinstance(k, bytes) else k): ReplicaState.model_validate_json(v)
            for k, v in states.items()
        }
        return record.model_copy(update={"replicas": replicas})

    async def save(self, record: AdapterRecord) -> None:
        """The record without its per-replica states (those are written one field each)."""
        static = record.model_copy(update={"replicas": {}})
        await self.redis.hset(keys.ADAPTERS, record.name, static.model_dump_json())

    async def set_state(
        self, name: str, url: str, state: ReplicaStateName, reason: str = ""
    ) -> None:
        value = ReplicaState(state=state, reason=reason, at=time.time()).model_dump_json()
        await self.redis.hset(keys.adapter_state(name), url, value)

    # -- locking -------------------------------------------------------------------------------

    @asynccontextmanager
    async def lock(self, name: str, wait: float = 60.0) -> AsyncIterator[None]:
        """Hold the adapter's lock: one load or unload of `name` at a time, across gateway
        instances (a Redis lock renewed while the body runs, so even a load that waits the
        full five minutes for vLLM keeps it) and within this one (an asyncio lock, so its
        own operations queue without polling Redis). `AdapterError` (409) after `wait`."""
        busy = AdapterError(f"adapter {name!r} is busy (another load or unload)")
        deadline = time.monotonic() + wait
        local = self._locks.setdefault(name, asyncio.Lock())
        try:
            async with asyncio.timeout(wait):
                await local.acquire()
        except TimeoutError:
            raise busy from None
        try:
            held = RedisLock(self.redis, keys.adapter_lock(name), self.lock_ttl)
            if not await held.acquire(max(0.0, deadline - time.monotonic())):
                raise busy
            try:
                async with held.renewing():
                    yield
            finally:
                await self._unlock(held, name)
        finally:
            local.release()

    @staticmethod
    async def _unlock(held: RedisLock, name: str) -> None:
        if held.lost:
            logger.warning("adapter %s: another operation may have run alongside this one", name)
        try:
            await held.release()
        except RedisError as exc:  # it expires within one TTL anyway
            logger.warning("adapter %s: could not release its lock: %s", name, exc)

    # -- load ----------------------------------------------------------------------------------

    async def load(
        self, name: str, path: str, urls: list[str], base_model: str | None = None
    ) -> AdapterRecord:
        if not _NAME.match(name):
            raise AdapterError(f"invalid adapter name {name!r}", 422)
        if not path:
            raise AdapterError("path is required", 422)
        if not urls:
            raise AdapterError("at least one replica base URL is required", 422)
        async with self.lock(name):
            existing = await self.get(name)
            if existing is not None and existing.path != path:
                raise AdapterError(
                    f"adapter names are immutable per version: {name!r} was loaded from "
                    f"{existing.path}; load the new weights under a new name (e.g. {name}-v2)"
                )
            merged = list(dict.fromkeys([*(existing.urls if existing else []), *urls]))
            record = AdapterRecord(
                name=name, path=path, base_model=base_model, urls=merged,
                replicas=dict(existing.replicas) if existing else {},
                created_at=existing.created_at if existing else time.time(),
                origin=existing.origin if existing else "admin",
            )  # fmt: skip
            await self.save(record)
            todo = [u for u in urls if not record.ready_on((u,))]
            await asyncio.gather(*(self._load_on(name, path, u) for u in todo))
            final = await self.get(name)
            assert final is not None
            logger.info("adapter %s: %s on %d replicas", name, final.state, len(final.urls))
            return final

    async def _load_on(self, name: str, path: str, url: str) -> None:
        await self.set_state(name, url, "loading")
        upstream = self.replicas.replica(url).upstream
        failure = await load_adapter(upstream, name, path)
        if failure is None:
            failure = await probe_adapter(upstream, name)
        if failure is not None:
            await self.set_state(name, url, "failed", failure)
        else:
            await self.set_state(name, url, "ready")

    # -- unload --------------------------------------------------------------------------------

    async def unload(
        self,
        name: str,
        in_flight: Callable[[str], Awaitable[int]],
        drain_seconds: float = 30.0,
        only: Collection[str] | None = None,
    ) -> AdapterRecord:
        """Drain, then unload from every replica of the record (or those of them in `only`;
        the others keep it as they are)."""
        async with self.lock(name):
            record = await self.get(name)
            if record is None:
                raise AdapterError(f"no adapter named {name!r}", 404)
            urls = [u for u in record.urls if only is None or u in only]
            for url in urls:
                await self.set_state(name, url, "draining")
            deadline = time.monotonic() + drain_seconds
            while (n := await in_flight(name)) > 0:
                if time.monotonic() > deadline:
                    logger.warning("adapter %s: %d requests still running; unloading", name, n)
                    break
                await asyncio.sleep(0.1)
            await asyncio.gather(*(self._unload_on(name, u) for u in urls))
            final = await self.get(name)
            assert final is not None
            return final

    async def _unload_on(self, name: str, url: str) -> None:
        failure = await unload_adapter(self.replicas.replica(url).upstream, name)
        if failure is not None:
            await self.set_state(name, url, "failed", failure)
        else:
            await self.set_state(name, url, "unloaded")

    # -- reconcile -----------------------------------------------------------------------------

    async def reconcile(self) -> list[str]:
        """Reload adapters that a healthy replica lost (a restart): what it did, per line. Not
        those a server loaded at its start (origin ``server_start``): discovery follows them."""
        done: list[str] = []
        for record in await self.all():
            for url in record.urls:
                state = record.replicas.get(url)
                replica = self.replicas.replica(url)
                if (
                    state is None
                    or record.origin == "server_start"  # router/control/discovery.py's
                    or state.state != "ready"
                    or not replica.healthy
                    or replica.models is None
                    or record.name in replica.models
                ):
                    continue
                logger.warning("replica %s lost adapter %s; reloading", url, record.name)
                try:
                    async with self.lock(record.name, wait=0.1):
                        await self._load_on(record.name, record.path, url)
                except AdapterError:
                    continue
                replica.models = None  # re-read on the next health check
                done.append(f"reloaded {record.name} on {url}")
        return done

"""The health loop: replica health checks, replica and adapter metrics, the in-flight counts
that adapter drains wait on, and adapter reconciliation.

Every gateway instance publishes how many requests it is running per upstream model as its
field of one registry hash (router/keys.py), stamped with an expiry a few health intervals
ahead by Redis's own clock, so a stopped instance's counts stop counting without any clock of
the gateway instances being compared. A drain reads that one hash (`in_flight`, ten times a
second while it waits): the cost does not grow with the keyspace, which holds a key per
recorded request. Reconciliation (recording the adapters a replica loaded at its start, and
reloading an adapter that a restarted replica lost) runs on one gateway instance at a time:
whichever takes the reconciler lock for the round. A round runs in its own task, one at a time
(a round that comes due while the previous one still runs is skipped), so a slow /v1/models or
a load that takes minutes never delays the health checks or the publishing of the in-flight
counts, whose entries expire a few health intervals after they were written.

A Redis outage is reported to the runtime's `RedisState` (one log line when it starts, one
when it ends), not logged on every tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router import keys
from router.control.adapters import AdapterManager
from router.control.discovery import discover
from router.metrics import GatewayMetrics
from router.runtime.redis_state import RedisState
from router.settings import Settings
from serving.pool import STATES, ReplicaPool

logger = logging.getLogger(__name__)

# KEYS[1] the registry hash; ARGV: this instance's id, its entry's lifetime in ms, its counts
# as JSON ("" when it runs nothing: the entry is removed). The hash itself expires with its
# longest-lived entry, so it goes when every gateway instance is gone.
_PUBLISH = """
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lifetime = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], (now + lifetime) .. ' ' .. ARGV[3])
if redis.call('PTTL', KEYS[1]) < lifetime then redis.call('PEXPIRE', KEYS[1], lifetime) end
return 1
"""

# KEYS[1] the registry hash; ARGV: the reading instance's id, the model. The sum of the other
# instances' live counts for the model; expired entries are removed on the way.
_SUM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #entries, 2 do
  local id, value = entries[i], entries[i + 1]
  local space = string.find(value, ' ', 1, true)
  local expiry = space and tonumber(string.sub(value, 1, space - 1)) or 0
  if expiry < now then
    redis.call('HDEL', KEYS[1], id)
  elseif id ~= ARGV[1] then
    local ok, counts = pcall(cjson.decode, string.sub(value, space + 1))
    if ok and type(counts) == 'table' then
      total = total + (tonumber(counts[ARGV[2]]) or 0)
    end
  end
end
return total
"""


class HealthService:
    """Runs the health loop of one gateway instance, named `identity` in Redis."""

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        replicas: ReplicaPool,
        adapters: AdapterManager,
        metrics: GatewayMetrics,
        identity: str,
        model_inflight: Counter[str],
        redis_state: RedisState | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.replicas = replicas
        self.adapters = adapters
        self.metrics = metrics
        self.identity = identity
        self.model_inflight = model_inflight  # the request path counts here, by upstream model
        self.redis_state = redis_state or RedisState(metrics)
        self._last_reconcile = 0.0
        #: the reconcile round running now, if any (tests await it)
        self.reconciling: asyncio.Task[None] | None = None
        self._panics_seen: dict[str, int] = {}
        self._publish = redis.register_script(_PUBLISH)
        self._sum = redis.register_script(_SUM)

    async def run(self) -> None:
        """Check every replica, then `tick`, each health interval until cancelled."""
        interval = self.settings.health_interval_seconds
        try:
            await self._loop(interval)
        finally:
            await self.stop_reconciling()

    async def _loop(self, interval: float) -> None:
        while True:
            try:
                await self.replicas.check_all(limit=min(interval, 2.0))
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed("health loop", exc)
            else:
                self.redis_state.up("health")
            await asyncio.sleep(interval)

    async def tick(self) -> None:
        """Publish the replica metrics and this gateway instance's in-flight counts per model
        and, once per reconcile interval, start a reconcile round in its own task (none while
        the previous round still runs): it never holds up the next tick."""
        self.replica_metrics()
        await self._publish_inflight()
        interval = self.settings.reconcile_interval_seconds
        now = time.monotonic()
        if now - self._last_reconcile < interval:
            return
        if self.reconciling is not None and not self.reconciling.done():
            logger.info("reconciler: the previous round still runs; skipping this one")
            return
        self._last_reconcile = now
        self.reconciling = asyncio.create_task(self._round(interval), name="abgate-reconcile")

    async def stop_reconciling(self) -> None:
        """Cancel the reconcile round that runs now, if any, and wait for it to end."""
        task, self.reconciling = self.reconciling, None
        if task is None:
            return
        while not task.done():  # see Gateway.close: one cancel can be swallowed
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def replica_metrics(self) -> None:
        """Each replica's state, outstanding requests and panic-mode requests, as metrics."""
        now = time.monotonic()
        for replica in self.replicas.replicas:
            url = replica.url
            state = replica.state(now)
            self.metrics.replica_healthy.labels(url).set(1 if state == "healthy" else 0)
            for name in STATES:
                self.metrics.replica_state.labels(url, name).set(1 if name == state else 0)
            self.metrics.replica_outstanding.labels(url).set(replica.outstanding)
            panics = self.metrics.replica_panic_requests.labels(url)
            new = replica.panic_requests - self._panics_seen.get(url, 0)
            if new > 0:
                panics.inc(new)
            self._panics_seen[url] = replica.panic_requests

    async def _publish_inflight(self) -> None:
        counts = {m: n for m, n in self.model_inflight.items() if n > 0}
        lifetime_ms = int(max(3.0, self.settings.health_interval_seconds * 3) * 1000)
        payload = orjson.dumps(counts) if counts else b""
        await self._publish(keys=[keys.INFLIGHT], args=[self.identity, lifetime_ms, payload])

    async def _round(self, interval: float) -> None:
        try:
            await self._reconcile(interval)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed("reconcile round", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        """Count a failed health loop or reconcile round (called from its `except` block)."""
        if isinstance(exc, RedisError):
            self.metrics.redis_errors.labels("health").inc()
            self.redis_state.down("health", exc)
        else:
            logger.exception("%s failed", what)
            self.metrics.errors.labels("health").inc()

    async def _reconcile(self, interval: float) -> None:
        if await self.redis.set(keys.RECONCILER, self.identity, nx=True,
                                px=int(interval * 1000)):  # fmt: skip
            for line in [*await discover(self.adapters), *await self.adapters.reconcile()]:
                logger.info("reconciler: %s", line)
        self.metrics.adapter_state.clear()
        for record in await self.adapters.all():
            for url, state in record.replicas.items():
                self.metrics.adapter_state.labels(record.name, url, state.state).set(1)

    async def in_flight(self, model: str) -> int:
        """Requests using `model` right now: here, and on other gateway instances as they last
        published (one script over one hash, whatever the size of the keyspace)."""
        others = await self._sum(keys=[keys.INFLIGHT], args=[self.identity, model])
        return self.model_inflight[model] + int(others)

"""The health loop: replica health checks, replica and adapter metrics, the in-flight counts
that adapter drains wait on, and adapter reconciliation.

Every gateway instance publishes how many requests it is running per upstream model under its
own key (router/keys.py), with a TTL of a few health intervals, so a stopped instance's counts
expire. Reconciliation (reloading an adapter that a restarted replica lost) runs on one gateway
instance at a time: whichever takes the reconciler lock for the round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import redis.asyncio as aioredis

from router import keys
from router.control.adapters import AdapterManager
from router.metrics import GatewayMetrics
from router.settings import Settings
from serving.pool import ReplicaPool

logger = logging.getLogger(__name__)


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
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.replicas = replicas
        self.adapters = adapters
        self.metrics = metrics
        self.identity = identity
        self.model_inflight = model_inflight  # the request path counts here, by upstream model
        self._last_reconcile = 0.0

    async def run(self) -> None:
        """Check every replica, then `tick`, each health interval until cancelled."""
        interval = self.settings.health_interval_seconds
        while True:
            try:
                await self.replicas.check_all(limit=min(interval, 2.0))
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("health loop failed")
                self.metrics.errors.labels("health").inc()
            await asyncio.sleep(interval)

    async def tick(self) -> None:
        """Publish the replica metrics and this gateway instance's in-flight counts per model
        and, once per reconcile interval, reconcile adapters if this instance takes the lock."""
        self._replica_metrics()
        await self._publish_inflight()
        interval = self.settings.reconcile_interval_seconds
        now = time.monotonic()
        if now - self._last_reconcile < interval:
            return
        self._last_reconcile = now
        await self._reconcile(interval)

    def _replica_metrics(self) -> None:
        now = time.monotonic()
        for replica in self.replicas.replicas:
            self.metrics.replica_healthy.labels(replica.url).set(1 if replica.available(now) else 0)
            self.metrics.replica_outstanding.labels(replica.url).set(replica.outstanding)

    async def _publish_inflight(self) -> None:
        key = keys.inflight(self.identity)
        counts: dict[Any, Any] = {m: n for m, n in self.model_inflight.items() if n > 0}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if counts:
                pipe.hset(key, mapping=counts)
                pipe.expire(key, max(3, int(self.settings.health_interval_seconds * 3)))
            await pipe.execute()

    async def _reconcile(self, interval: float) -> None:
        if await self.redis.set(keys.RECONCILER, self.identity, nx=True,
                                px=int(interval * 1000)):  # fmt: skip
            for line in await self.adapters.reconcile():
                logger.info("reconciler: %s", line)
        self.metrics.adapter_state.clear()
        for record in await self.adapters.all():
            for url, state in record.replicas.items():
                self.metrics.adapter_state.labels(record.name, url, state.state).set(1)

    async def in_flight(self, model: str) -> int:
        """Requests using `model` right now: here, and on other gateway instances as they last
        published."""
        others = 0
        own = keys.inflight(self.identity)
        async for key in self.redis.scan_iter(match=keys.INFLIGHT_PATTERN, count=100):
            if key in (own, own.encode()):
                continue
            others += int(await self.redis.hget(key, model) or 0)
        return self.model_inflight[model] + others

"""A lock in Redis that only its holder can renew or release.

The key holds the holder's token with a TTL, so the lock of a holder that died frees itself
within one TTL. Renewing and releasing compare the token and act in one Lua script: a holder
whose TTL ran out, and whose key another holder has taken since, neither extends nor deletes
the new holder's lock. (A GET followed by a DEL could: the key may change hands between the
two round trips.)

The controller holds its leader lock with `renew` on its own tick; an operation that may run
longer than the TTL (an adapter load waits up to five minutes for vLLM) holds it inside
`renewing()`, which renews it every third of the TTL in the background.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
POLL_SECONDS = 0.05


class RedisLock:
    """One holder's handle on the lock at `key`; `token` tells this holder from the others
    (random unless given, e.g. the controller's identity)."""

    def __init__(
        self, redis: aioredis.Redis, key: str, ttl: float, token: str | None = None
    ) -> None:
        if ttl <= 0:
            raise ValueError("a lock's TTL must be positive")
        self.redis = redis
        self.key = key
        self.ttl = ttl
        self.token = token or os.urandom(16).hex()
        self.lost = False
        self._renew = redis.register_script(RENEW)
        self._release = redis.register_script(RELEASE)

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    async def try_acquire(self) -> bool:
        """Take the lock if nobody holds it (one attempt)."""
        got = bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))
        if got:
            self.lost = False
        return got

    async def acquire(self, wait: float) -> bool:
        """Take the lock, retrying for up to `wait` seconds; False if it stayed taken."""
        deadline = time.monotonic() + wait
        while not await self.try_acquire():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_SECONDS)
        return True

    async def renew(self) -> bool:
        """Reset the TTL if this holder still holds the lock; False if it does not."""
        return bool(await self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    async def release(self) -> bool:
        """Delete the lock if this holder still holds it; False if it did not."""
        return bool(await self._release(keys=[self.key], args=[self.token]))

    @asynccontextmanager
    async def renewing(self) -> AsyncIterator[None]:
        """Keep the (acquired) lock while the body runs, renewing it every third of the TTL.

        A renewal that finds the key gone or another holder's sets `lost` and stops: the
        exclusion is over, and extending someone else's lock would be wrong."""
        task = asyncio.create_task(self._keep(), name=f"renew {self.key}")
        try:
            yield
        finally:
            task.cancel()
            # wait() does not re-raise the task's cancellation, but does raise ours
            await asyncio.wait({task})

    async def _keep(self) -> None:
        interval = self.ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                held = await self.renew()
            except RedisError as exc:
                # the key lives on for the rest of its TTL: the next attempt may still be in time
                logger.warning("could not renew the lock %s: %s", self.key, exc)
                continue
            if not held:
                self.lost = True
                logger.warning(
                    "the lock %s expired and was lost while its holder was still running",
                    self.key,
                )
                return

"""Fixtures of the control plane's tests: an async client of the suite's redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An async client of the suite's redis-server (emptied for each test by `redis_url`)."""
    client = aioredis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    yield client
    await client.aclose()

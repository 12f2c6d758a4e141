"""Fixtures of the runtime services' tests: an async client of the suite's redis-server, the
upstream clients (closed after each test), and a small experiment factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from router.experiments import Experiment
from router.metrics import GatewayMetrics
from router.settings import Settings
from serving.pool import ReplicaPool
from serving.types import Timeouts
from serving.upstream import UpstreamPool

DEAD_URL = "redis://127.0.0.1:9/0"  # nothing listens on the discard port: refused at once


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An async client of the suite's redis-server, emptied for each test."""
    client = aioredis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    yield client
    await client.aclose()


@pytest.fixture
async def dead_redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(DEAD_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
    yield client
    await client.aclose()


@pytest.fixture
async def replicas() -> AsyncIterator[ReplicaPool]:
    pool = UpstreamPool(timeouts=Timeouts(connect=0.5, read=0.5), max_connections=4)
    replicas = ReplicaPool(pool)
    yield replicas
    await replicas.close()  # the health checks' client
    await pool.close()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> GatewayMetrics:
    return GatewayMetrics(registry)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url)


def experiment(
    name: str, route: str, url: str = "http://127.0.0.1:9/v1", **extra: Any
) -> Experiment:
    """A running experiment with both arms on the replica `url`."""
    return Experiment.model_validate(
        {
            "name": name,
            "route": route,
            "control": {"base_url": url, "model": "base"},
            "treatment": {"base_url": url, "model": f"{name}-lora"},
            "treatment_percent": 10.0,
            **extra,
        }
    )

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from router.runtime.embedded_redis import EmbeddedRedis, RedisNotFound


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real redis-server started by the test suite itself on a free port."""
    try:
        server = EmbeddedRedis(appendonly=True, data_dir=tmp_path_factory.mktemp("redis"))
    except RedisNotFound:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("no redis-server (install the dev extra)")
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def rds(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("procs")

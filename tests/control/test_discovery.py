"""Adapters a model server loaded at its start (the emulator's ``--lora``, vLLM's
``--lora-modules``) enter the registry from its /v1/models, and follow what the server lists,
against an in-process emulator and the suite's real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from router.control.adapters import AdapterManager
from router.control.discovery import AGAIN_REASON, GONE_REASON, START_REASON, discover
from serving.pool import ReplicaPool
from serving.types import Timeouts
from serving.upstream import UpstreamPool
from tests.inprocess.conftest import serve_emulator
from tests.procs import adapter_dir


@pytest.fixture
async def replicas() -> AsyncIterator[ReplicaPool]:
    pool = UpstreamPool(timeouts=Timeouts(connect=1.0, read=5.0), max_connections=4)
    yield ReplicaPool(pool)
    await pool.close()


async def no_requests(_: str) -> int:
    return 0


async def test_start_time_adapters_are_discovered_and_followed(
    tmp_path: Path, aredis: aioredis.Redis, replicas: ReplicaPool
) -> None:
    manager = AdapterManager(aredis, replicas)
    http = httpx.AsyncClient(timeout=10)  # the emulator serves base and lora-a (from its start)
    async with (
        http,
        serve_emulator(tmp_path, allow_runtime_lora_updating=True) as root,
    ):
        url = root + "/v1"
        replicas.replica(url)
        assert await manager.all() == []
        assert await discover(manager) == [
            f"found lora-a on {url}, loaded by the server at its start"
        ]
        record = await manager.get("lora-a")
        assert record is not None
        assert (record.origin, record.base_model, record.urls) == ("server_start", "base", [url])
        assert record.path == str(tmp_path / "adapters" / "lora-a")
        assert record.state == "ready" and record.replicas[url].reason == START_REASON
        assert await discover(manager) == []  # nothing new: no second record, no change
        assert [r.name for r in await manager.all()] == ["lora-a"]  # the base model is no adapter

        # the reconciler never reloads a start-time adapter: discovery records it gone instead
        listed = {m["id"] for m in (await http.get(root + "/v1/models")).json()["data"]}
        replicas.replica(url).models = frozenset(listed - {"lora-a"})
        assert await manager.reconcile() == []
        outside = await http.post(root + "/v1/unload_lora_adapter", json={"lora_name": "lora-a"})
        assert outside.status_code == 200
        assert await discover(manager) == [f"lora-a is no longer listed on {url}"]
        gone = await manager.get("lora-a")
        assert gone is not None and gone.replicas[url].state == "unloaded"
        assert gone.replicas[url].reason == GONE_REASON

        # listed again (a restart with the same --lora-modules): ready again
        body = {"lora_name": "lora-a", "lora_path": record.path}
        loaded = await http.post(root + "/v1/load_lora_adapter", json=body)
        assert loaded.status_code == 200
        assert await discover(manager) == [f"lora-a is listed again on {url}"]
        back = await manager.get("lora-a")
        assert (
            back is not None and back.state == "ready" and back.replicas[url].reason == AGAIN_REASON
        )

        # unloading it through the registry unloads it from the server, and it stays unloaded
        done = await manager.unload("lora-a", no_requests, drain_seconds=1)
        assert done.state == "unloaded"
        assert "lora-a" not in {
            m["id"] for m in (await http.get(root + "/v1/models")).json()["data"]
        }
        assert await discover(manager) == []
        final = await manager.get("lora-a")
        assert final is not None and final.state == "unloaded"


async def test_an_adapter_loaded_through_the_registry_is_left_as_it_is(
    tmp_path: Path, aredis: aioredis.Redis, replicas: ReplicaPool
) -> None:
    manager = AdapterManager(aredis, replicas)
    async with serve_emulator(tmp_path, static_loras={}, allow_runtime_lora_updating=True) as root:
        url = root + "/v1"
        path = str(adapter_dir(tmp_path, "v2"))
        loaded = await manager.load("v2", path, [url])
        assert loaded.state == "ready" and loaded.origin == "admin"
        assert await discover(manager, [url]) == []
        again = await manager.get("v2")
        assert again is not None and again.origin == "admin" and again.replicas[url].reason == ""


async def test_an_unreachable_or_unhealthy_replica_is_skipped(
    tmp_path: Path, aredis: aioredis.Redis, replicas: ReplicaPool
) -> None:
    manager = AdapterManager(aredis, replicas)
    async with serve_emulator(tmp_path, allow_runtime_lora_updating=True) as root:
        replicas.replica(root + "/v1").healthy = False
        replicas.replica("http://127.0.0.1:9/v1")  # nothing listens there
        assert await discover(manager) == []
        assert await manager.all() == []

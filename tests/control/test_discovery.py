"""Adapters a model server loaded at its start (the emulator's ``--lora``, vLLM's
``--lora-modules``) enter the registry from its /v1/models, and follow what the server lists,
against an in-process emulator and the suite's real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from router.control import discovery
from router.control.adapters import AdapterManager
from router.control.discovery import (
    AGAIN_REASON,
    GONE_REASON,
    START_REASON,
    discover,
    mismatch_reason,
)
from serving.lora import MAX_MODEL_CARDS, served_adapters
from serving.pool import ReplicaPool
from serving.types import Timeouts
from serving.upstream import Upstream, UpstreamPool
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


async def test_one_name_served_from_two_paths_is_failed_never_ready(
    tmp_path: Path, aredis: aioredis.Redis, replicas: ReplicaPool
) -> None:
    """Two servers list lora-x from different folders: one name, two sets of weights. The
    replica that differs from the record is failed, naming both paths; a path that differs only
    in its spelling (a trailing slash, a ``.``) is the same path."""
    manager = AdapterManager(aredis, replicas)
    first, second = adapter_dir(tmp_path, "x1"), adapter_dir(tmp_path, "x2")
    async with (
        serve_emulator(tmp_path, static_loras={"lora-x": str(first)}) as one,
        serve_emulator(tmp_path, static_loras={"lora-x": str(second)}) as two,
        serve_emulator(tmp_path, static_loras={"lora-x": f"{first}/./"}) as same,
    ):
        a, b, c = one + "/v1", two + "/v1", same + "/v1"
        assert await discover(manager, [a]) == [
            f"found lora-x on {a}, loaded by the server at its start"
        ]
        assert await discover(manager, [b, c]) == [
            f"lora-x on {b} is served from {second}, not from {first}",
            f"found lora-x on {c} too, loaded by the server at its start",
        ]
        record = await manager.get("lora-x")
        assert record is not None and record.urls == [a, b, c]
        assert {u: s.state for u, s in record.replicas.items()} == {
            a: "ready", b: "failed", c: "ready"
        }  # fmt: skip
        assert record.replicas[b].reason == mismatch_reason("lora-x", str(second), str(first))
        assert str(first) in record.replicas[b].reason and str(second) in record.replicas[b].reason
        assert record.state == "failed" and not record.ready_on((b,))
        assert await discover(manager) == []  # said once, not every round


async def test_an_admin_loaded_name_served_from_another_path_is_failed(
    tmp_path: Path, aredis: aioredis.Redis, replicas: ReplicaPool
) -> None:
    """The server already had lora-a from its start: loading lora-a from another folder through
    the registry is answered "already loaded" and probes fine, but the server still serves the
    weights it had; discovery sees the other path and fails the replica."""
    manager = AdapterManager(aredis, replicas)
    async with serve_emulator(tmp_path, allow_runtime_lora_updating=True) as root:
        url = root + "/v1"
        served = str(tmp_path / "adapters" / "lora-a")
        other = str(adapter_dir(tmp_path, "other"))
        loaded = await manager.load("lora-a", other, [url])
        assert loaded.state == "ready" and loaded.origin == "admin"
        assert await discover(manager, [url]) == [
            f"lora-a on {url} is served from {served}, not from {other}"
        ]
        record = await manager.get("lora-a")
        assert record is not None and record.state == "failed"
        assert record.replicas[url].reason == mismatch_reason("lora-a", served, other)


class _Scripted:
    """An upstream whose /v1/models answers `cards`."""

    base_url = "http://scripted/v1"

    def __init__(self, cards: list[object]) -> None:
        self.body = orjson.dumps({"object": "list", "data": cards})

    async def call(self, method: str, path: str, **_: object) -> tuple[int, bytes]:
        assert (method, path) == ("GET", "/models")
        return 200, self.body


def _card(name: object, parent: object = "base", root: object = "/w/x") -> dict[str, object]:
    return {"id": name, "object": "model", "parent": parent, "root": root}


async def test_cards_that_cannot_be_adapters_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    cards: list[object] = [
        {"id": "base", "object": "model", "parent": None, "root": "base"},  # the base model
        _card("good"),
        _card("selfish", parent="selfish"),  # its own parent
        _card("rootless", root=None),
        _card("listroot", root=["/w"]),
        _card(7),
        "not a card",
    ]
    found = await served_adapters(cast(Upstream, _Scripted(cards)))
    assert found == {"good": ("/w/x", "base")}
    assert "skipped 3 model cards" in caplog.text and "selfish" in caplog.text


async def test_only_the_first_cards_are_read() -> None:
    cards: list[object] = [_card(f"a{i}") for i in range(MAX_MODEL_CARDS + 50)]
    found = await served_adapters(cast(Upstream, _Scripted(cards)))
    assert found is not None and len(found) == MAX_MODEL_CARDS
    assert f"a{MAX_MODEL_CARDS}" not in found


async def test_names_the_registry_refuses_are_not_recorded(
    aredis: aioredis.Redis, replicas: ReplicaPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = {
        "ok-1": ("/w/ok", "base"),
        "-dash-first": ("/w/a", "base"),
        "has space": ("/w/b", "base"),
        "x" * 201: ("/w/c", "base"),
        "<script>": ("/w/d", "base"),
    }

    async def scripted(_: Upstream) -> dict[str, tuple[str, str]]:
        return listed

    monkeypatch.setattr(discovery, "served_adapters", scripted)
    url = "http://127.0.0.1:9/v1"
    replicas.replica(url).healthy = True
    manager = AdapterManager(aredis, replicas)
    assert await discover(manager, [url]) == [
        f"found ok-1 on {url}, loaded by the server at its start"
    ]
    assert [r.name for r in await manager.all()] == ["ok-1"]

"""Redis away for 10 s under steady load: clients see no errors, and no event is lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import redis

from router.runtime.embedded_redis import EmbeddedRedis
from tests.procs import Proc, experiment, gateway

pytestmark = pytest.mark.integration


async def _steady_load(url: str, seconds: float, ids: list[str], failures: list[str]) -> None:
    deadline = time.monotonic() + seconds
    body = {"model": "outage-route", "messages": [{"role": "user", "content": "still there?"}]}

    async def worker(w: int) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                stream = i % 4 == 0
                try:
                    resp = await client.post(
                        url + "/v1/chat/completions",
                        json={**body, "stream": stream},
                        headers={"X-User-Id": f"w{w}-u{i % 50}"},
                    )
                    if resp.status_code != 200:
                        failures.append(f"{resp.status_code}: {resp.text[:200]}")
                    else:
                        ids.append(resp.headers["x-request-id"])
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                await asyncio.sleep(0.02)

    await asyncio.gather(*(worker(w) for w in range(4)))


def test_redis_outage_loses_nothing(tmp_path: Path, emu: Proc) -> None:
    server = EmbeddedRedis(appendonly=True, data_dir=tmp_path / "redis")
    server.start()
    try:
        config = {"experiments": [experiment("outage", "outage-route", emu.url, 50)]}
        with gateway(tmp_path, config, server.url) as gw:
            ids: list[str] = []
            failures: list[str] = []

            async def scenario() -> None:
                load = asyncio.create_task(_steady_load(gw.url, 15.0, ids, failures))
                await asyncio.sleep(2.5)
                await asyncio.to_thread(server.stop)
                stopped_at = len(ids)
                await asyncio.sleep(10.0)
                during = len(ids) - stopped_at
                assert during > 50, "the load did not continue while Redis was away"
                ready = (await asyncio.to_thread(httpx.get, gw.url + "/readyz")).json()
                assert ready["redis"] == "unreachable" and ready["event_queue_depth"] > 0
                await asyncio.to_thread(server.start)
                await load

            asyncio.run(scenario())
            assert failures == []
            client = redis.Redis.from_url(server.url, decode_responses=True)
            deadline = time.monotonic() + 30
            while client.xlen("abgate:{outage}:events") < len(ids):
                assert time.monotonic() < deadline, "the writer did not catch up"
                time.sleep(0.2)
            stored = {f["request_id"] for _, f in client.xrange("abgate:{outage}:events")}
            assert stored == set(ids)
            total = sum(
                int(client.hget(f"abgate:{{outage}}:arm:{arm}", "requests") or 0)
                for arm in ("control", "treatment")
            )
            assert total == len(ids)
            metrics = httpx.get(gw.url + "/metrics").text
            # exported at 0 from the start; nothing was dropped
            assert 'abgate_events_dropped_total{reason="buffer_full"} 0.0' in metrics
            assert 'abgate_redis_errors_total{component="events"}' in metrics
            client.close()
    finally:
        server.cleanup()


def test_events_beyond_the_buffer_are_dropped_and_counted(tmp_path: Path, emu: Proc) -> None:
    server = EmbeddedRedis(appendonly=True, data_dir=tmp_path / "redis")
    server.start()
    try:
        config = {"experiments": [experiment("tiny", "tiny-route", emu.url, 50)]}
        with gateway(tmp_path, config, server.url, event_buffer="5") as gw:
            server.stop()
            body = {"model": "tiny-route", "messages": [{"role": "user", "content": "x"}]}
            for i in range(12):
                resp = httpx.post(
                    gw.url + "/v1/chat/completions", json=body, headers={"X-User-Id": f"{i}"}
                )
                assert resp.status_code == 200
            metrics = httpx.get(gw.url + "/metrics").text
            dropped = [
                line for line in metrics.splitlines()
                if line.startswith('abgate_events_dropped_total{reason="buffer_full"}')
            ]  # fmt: skip
            assert dropped and float(dropped[0].split()[-1]) >= 6
            server.start()
            client = redis.Redis.from_url(server.url)
            deadline = time.monotonic() + 20
            while client.xlen("abgate:{tiny}:events") < 5:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert client.xlen("abgate:{tiny}:events") <= 6
            client.close()
    finally:
        server.cleanup()


def test_shutdown_flushes_buffered_events(tmp_path: Path, emu: Proc) -> None:
    server = EmbeddedRedis(appendonly=True, data_dir=tmp_path / "redis")
    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        config = {"experiments": [experiment("flush", "flush-route", emu.url, 50)]}
        with gateway(tmp_path, config, server.url) as gw:
            client.execute_command("CLIENT", "PAUSE", "2000", "WRITE")  # writes stall for 2 s
            body = {"model": "flush-route", "messages": [{"role": "user", "content": "x"}]}
            ids = [
                httpx.post(
                    gw.url + "/v1/chat/completions", json=body, headers={"X-User-Id": f"{i}"}
                ).headers["x-request-id"]
                for i in range(20)
            ]
            assert gw.stop() == 0  # SIGTERM while the events are still buffered
        stored = {f[b"request_id"].decode() for _, f in client.xrange("abgate:{flush}:events")}
        assert stored == set(ids)
    finally:
        client.close()
        server.cleanup()

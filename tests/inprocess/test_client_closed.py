"""A client that closes its stream after the first chunk ("stop generating") is counted as a
client close of its arm: never an error, never a breaker failure, shown in the report.

The gateway's ASGI app is served by uvicorn on a loopback socket in this process (a real
client can hang up on it), against the emulator streaming slowly."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis
import uvicorn

from router import keys
from router.signals.readmodel import decode_unit_totals
from tests.inprocess.conftest import Gate, GatewayFactory, arm_totals, serve_emulator
from tests.procs import experiment

pytestmark = pytest.mark.asyncio(loop_scope="module")

NAME = "closes"
ROUTE = "closes-route"
USERS = [f"stopper-{i}" for i in range(16)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def slow_emu(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The emulator decoding 20 tokens per second: a stream of 40 tokens lasts 2 s."""
    profile = {"tokens_per_second": 20.0}
    async with serve_emulator(tmp_path_factory.mktemp("slow"), default_profile=profile) as url:
        yield url


async def _served(gw: Gate) -> AsyncIterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(gw.app, lifespan="off", log_level="warning", access_log=False)
    )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        task = asyncio.create_task(server.serve(sockets=[sock]), name="gateway")
        try:
            deadline = time.monotonic() + 10
            while not server.started:
                assert not task.done() and time.monotonic() < deadline, "gateway did not start"
                await asyncio.sleep(0.005)
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            await task


async def _first_chunk_then_close(client: httpx.AsyncClient, user: str) -> str:
    """Open a stream, read until the first content chunk, hang up; the arm served."""
    body: dict[str, Any] = {
        "model": ROUTE,
        "stream": True,
        "max_tokens": 40,
        "messages": [{"role": "user", "content": "tell me a long story"}],
    }
    headers = {"X-User-Id": user}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        async for chunk in r.aiter_bytes():
            if b'"content"' in chunk:
                break
        return r.headers["x-abgate-arm"]


async def _until(check: Any, what: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"not reached within {limit} s: {what}"
        await asyncio.sleep(0.02)


async def test_streams_closed_after_the_first_chunk_are_client_closes_not_errors(
    slow_emu: str, start_gateway: GatewayFactory, rds: redis.Redis
) -> None:
    # a breaker that would trip on 2 failures in 4: client closes must not feed it
    breaker = {"window": 4, "min_errors": 2, "error_ratio": 0.5}
    config = {"experiments": [experiment(NAME, ROUTE, slow_emu, 50, circuit_breaker=breaker)]}
    async with start_gateway(config) as gw:
        served = _served(gw)
        url = await served.__anext__()
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                arms = [await _first_chunk_then_close(client, u) for u in USERS]
                # one stream read to its end: neither an error nor a client close
                done = await client.post(
                    "/v1/chat/completions",
                    json={
                        "model": ROUTE,
                        "stream": True,
                        "max_tokens": 2,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                    headers={"X-User-Id": USERS[0]},
                )
                assert done.status_code == 200 and done.text.endswith("data: [DONE]\n\n")
            counts = {a: arms.count(a) for a in ("control", "treatment")}
            assert counts["control"] and counts["treatment"], counts  # both arms were left

            def recorded() -> bool:
                return (
                    sum(arm_totals(rds, NAME, a).get("requests", 0) for a in counts)
                    == len(USERS) + 1
                )

            await _until(recorded, "every request recorded")
            state = (await gw.admin("GET", f"/experiments/{NAME}")).json()
            report = (await gw.admin("GET", f"/experiments/{NAME}/report")).json()
            metrics = (await gw.client.get("/metrics")).text
        finally:
            await served.aclose()

    assert state["state"] == "running"  # the breaker did not trip
    for arm, closed in counts.items():
        totals = arm_totals(rds, NAME, arm)
        assert totals.get("errors", 0) == 0, (arm, totals)
        assert totals["client_closed"] == closed, (arm, totals)
        assert report["client_closed"][arm] == closed
        assert report["errors"][arm] == 0
        minutes = [rds.hgetall(k) for k in rds.scan_iter(keys.minute(NAME, arm, "*"))]
        assert sum(int(float(m.get("client_closed", 0))) for m in minutes) == closed
        assert sum(int(float(m.get("errors", 0))) for m in minutes) == 0
        units = rds.hgetall(keys.unit_totals(NAME, arm))
        assert sum(decode_unit_totals(v).get("client_closed", 0) for v in units.values()) == closed
        label = f'arm="{arm}",experiment="{NAME}",route="{ROUTE}"'
        assert f"abgate_client_closed_total{{{label}}} {float(closed)}" in metrics
    assert 'reason="client_closed"' not in metrics  # not an upstream error
    for row in report["metrics"]:  # the error rate (and its guardrail) sees no error
        if row["metric"] == "error_rate":
            assert not row["control"] and not row["treatment"] and not row["difference"], row
    events = rds.xrange(keys.events(NAME))
    closed_events = [f for _, f in events if f["error"] == "client_closed"]
    assert len(closed_events) == len(USERS)
    assert {f["status"] for f in closed_events} == {"499"}

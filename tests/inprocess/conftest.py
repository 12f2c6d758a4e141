"""The gateway in this test process: its ASGI app driven through httpx, against a real Redis.

The gateway is built by `router.app.create_app` and started by its own FastAPI lifespan (httpx's
ASGI transport does not run lifespans), so these tests cover the real start-up and shutdown. Its
upstream is the vLLM emulator served by uvicorn on a loopback port in the same event loop: the
gateway's upstream client speaks HTTP/1.1 over real sockets. Redis is the suite's redis-server
(tests/conftest.py), emptied before every test.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis
import uvicorn
from prometheus_client import CollectorRegistry

from router import keys
from router.app import GatewayApp, create_app
from router.settings import Settings
from serving.emulator import EmulatorConfig
from serving.emulator import create_app as create_emulator

TOKEN = "inprocess-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START_TIMEOUT = 10.0
DRAIN_TIMEOUT = 5.0
STOP_TIMEOUT = 3.0


@asynccontextmanager
async def serve_emulator(tmp: Path, **config: Any) -> AsyncIterator[str]:
    """The vLLM emulator on a free loopback port; yields its URL (without ``/v1``).

    It serves the base model ``base`` and a static LoRA adapter ``lora-a``."""
    adapter = tmp / "adapters" / "lora-a"
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": "base", "r": 8})
    )
    settings: dict[str, Any] = {"base_model": "base", "static_loras": {"lora-a": str(adapter)}}
    app = create_emulator(EmulatorConfig(**{**settings, **config}))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    # Bound here, so the port is known before uvicorn starts. IPPROTO_TCP is spelled out:
    # asyncio sets TCP_NODELAY only on sockets that name it, and without it each keep-alive
    # answer waits ~40 ms for a delayed ACK.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        task = asyncio.create_task(server.serve(sockets=[sock]), name="emulator")
        try:
            await _until(lambda: server.started or task.done(), START_TIMEOUT)
            if task.done():
                task.result()  # raises what stopped uvicorn
                raise RuntimeError("the emulator exited at start-up")
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task


async def _until(predicate: Callable[[], bool], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {limit} s")
        await asyncio.sleep(0.005)


@dataclass
class Gate:
    """A started in-process gateway and an HTTP client bound to it."""

    app: GatewayApp
    client: httpx.AsyncClient

    async def chat(self, route: str, user: str | None = None, **body: Any) -> httpx.Response:
        headers = {"X-User-Id": user} if user is not None else {}
        payload = {"model": route, "messages": [{"role": "user", "content": "hi"}], **body}
        return await self.client.post("/v1/chat/completions", json=payload, headers=headers)

    async def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**AUTH, **kw.pop("headers", {})}
        return await self.client.request(method, "/admin" + path, headers=headers, **kw)

    async def drain(self) -> None:
        """Wait until every event handed to the writer is in Redis (its queue is empty).

        A proxied request hands its event over before its response completes, so after a
        response an empty queue means the event was written."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            ready = (await self.client.get("/readyz")).json()
            if ready["event_queue_depth"] == 0:
                return
            assert time.monotonic() < deadline, f"events not written in time: {ready}"
            await asyncio.sleep(0.005)


GatewayFactory = Callable[..., AbstractAsyncContextManager[Gate]]


def arm_totals(rds: redis.Redis, name: str, arm: str) -> dict[str, float]:
    """An experiment's per-arm aggregate hash, as numbers (Redis keeps float strings)."""
    raw: dict[str, str] = rds.hgetall(keys.arm_totals(name, arm))  # type: ignore[assignment]
    return {field: float(value) for field, value in raw.items()}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def emu(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """URL of an in-process vLLM emulator (no API key), one per test module: the test modules
    run in one event loop per module (their `pytestmark`), which this server lives in."""
    async with serve_emulator(tmp_path_factory.mktemp("emulator")) as url:
        yield url


@pytest.fixture
def start_gateway(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> GatewayFactory:
    """Start gateways in this process: ``async with start_gateway(config, **settings) as gw``.

    `config` is the config file's document; `settings` override `Settings` fields (the same
    values tests/procs.py passes a gateway process as ``ABGATE_*`` variables)."""
    for name in list(os.environ):
        if name.startswith("ABGATE_"):
            monkeypatch.delenv(name)  # only the settings given here apply

    @asynccontextmanager
    async def start(config: dict[str, Any], **overrides: Any) -> AsyncIterator[Gate]:
        path = tmp_path / f"gateway-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        fields: dict[str, Any] = {
            "redis_url": redis_url,
            "config_file": path,
            "config_poll_seconds": 0.5,
            "log_format": "text",
            "admin_token": TOKEN,
            **overrides,
        }
        app = create_app(Settings(**fields), registry=CollectorRegistry())
        lifespan = app.api.router.lifespan_context(app.api)
        await lifespan.__aenter__()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                yield Gate(app, client)
        finally:
            await _shut_down(lifespan)
            # the lifespan freezes what exists at start-up for the process's lifetime; in a
            # test process that is every earlier test's garbage, so hand it back
            gc.unfreeze()

    return start


async def _shut_down(lifespan: AbstractAsyncContextManager[Any]) -> None:
    """Leave the gateway's lifespan, failing the test if that takes over `STOP_TIMEOUT`.

    On Python 3.11 `asyncio.wait_for` (which redis-py uses to send commands) can swallow a
    cancellation that races with the command completing, so a background loop of the gateway
    may miss the one cancellation shutdown sends it and shutdown waits forever. The timeout
    cancels once more, which reaches the loop, and the test then fails instead of hanging."""
    started = time.monotonic()
    async with asyncio.timeout(STOP_TIMEOUT):
        await lifespan.__aexit__(None, None, None)
    took = time.monotonic() - started
    assert took < STOP_TIMEOUT, (
        f"the gateway took {took:.1f} s to shut down: a background task of it missed its "
        "cancellation and was only stopped by this fixture's timeout"
    )

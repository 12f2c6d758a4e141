"""Replica health that fails open, against real local HTTP servers.

A server without a health endpoint is not taken out for it (404/405 there: the model list
decides, and 401/403 on the model list count as an answer; neither endpoint: real traffic
decides); a replica that is out still gets requests when no replica is in (panic mode, logged
once per change and counted), and the first request that succeeds on it re-admits it. Failures
are named for what happened.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from serving.errors import UpstreamError
from serving.pool import ReplicaPool
from serving.types import Timeouts
from serving.upstream import UpstreamPool

MODELS = {"object": "list", "data": [{"id": "base", "object": "model"}]}
ANSWER = {"id": "x", "object": "chat.completion", "choices": [], "model": "base"}
Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A real HTTP server on a loopback port; `routes` maps paths to handlers (GET or POST)."""

    routes: dict[str, Route]
    seen: list[str] = field(default_factory=list)
    port: int = 0
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.seen.append(request.path)
            route = self.routes.get(request.path)
            if route is None:
                return web.Response(status=404, text="404 page not found")
            return await route(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def url(self, prefix: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{prefix}/v1"


def status(code: int, body: object = None) -> Route:
    async def route(_: web.Request) -> web.StreamResponse:
        if body is None:
            return web.Response(status=code)
        return web.json_response(body, status=code)

    return route


def stall(seconds: float) -> Route:
    async def route(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=200)

    return route


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[dict[str, Route]], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(routes: dict[str, Route]) -> Server:
        server = Server(routes)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        assert server.runner is not None
        await server.runner.cleanup()


@pytest.fixture
async def pool() -> AsyncIterator[ReplicaPool]:
    upstreams = UpstreamPool(timeouts=Timeouts(connect=1.0, read=5.0), max_connections=4)
    replicas = ReplicaPool(upstreams)
    yield replicas
    await replicas.close()
    await upstreams.close()


Serve = Callable[[dict[str, Route]], Awaitable[Server]]


@pytest.mark.parametrize(
    ("routes", "state", "check", "models"),
    [
        ({"/health": status(200), "/v1/models": status(200, MODELS)}, "healthy", "health",
         frozenset({"base"})),
        ({"/v1/models": status(200, MODELS)}, "healthy", "models", frozenset({"base"})),
        ({"/health": status(405), "/v1/models": status(401)}, "healthy", "models", None),
        ({"/v1/models": status(403)}, "healthy", "models", None),
        ({}, "healthy", "passive", None),  # neither endpoint: real traffic decides
        ({"/health": status(503)}, "unhealthy", "health", None),
        ({"/health": status(200), "/v1/models": status(401)}, "healthy", "health", None),
        ({"/v1/models": status(502)}, "unhealthy", "models", None),
    ],
)  # fmt: skip
async def test_a_check_reads_what_the_server_has(
    serve: Serve,
    pool: ReplicaPool,
    routes: dict[str, Route],
    state: str,
    check: str,
    models: frozenset[str] | None,
) -> None:
    server = await serve(routes)
    replica = pool.configure((server.url(),)).replicas[0]
    await pool.check(replica, limit=2.0)
    assert (replica.state(), replica.check, replica.models) == (state, check, models)
    if state == "unhealthy":
        assert replica.last_error.startswith("status_5")


async def test_the_health_path_is_asked_below_a_path_prefix(
    serve: Serve, pool: ReplicaPool
) -> None:
    server = await serve({"/openai/ready": status(200), "/openai/v1/models": status(200, MODELS)})
    prefixed = pool.configure((server.url("/ok"),)).replicas[0]
    await pool.check(prefixed)
    custom = pool.configure((server.url("/openai"),), health_path="/ready").replicas[0]
    await pool.check(custom)
    assert server.seen == ["/ok/health", "/ok/v1/models", "/openai/ready", "/openai/v1/models"]
    assert (prefixed.check, custom.check) == ("passive", "health")


async def test_a_null_health_path_sends_nothing(serve: Serve, pool: ReplicaPool) -> None:
    server = await serve({"/health": status(503)})
    replica = pool.configure((server.url(),), health_path=None).replicas[0]
    await pool.check(replica)
    assert server.seen == [] and replica.check == "off" and replica.state() == "healthy"


async def test_failed_checks_are_named(serve: Serve, pool: ReplicaPool) -> None:
    server = await serve({"/health": stall(1.0)})
    slow = pool.configure((server.url(),)).replicas[0]
    refused = pool.configure((f"http://127.0.0.1:{free_port()}/v1",)).replicas[0]
    await asyncio.gather(pool.check(slow, limit=0.3), pool.check(refused, limit=0.3))
    assert (slow.state(), slow.last_error) == ("unhealthy", "timeout")
    assert (refused.state(), refused.last_error) == ("unhealthy", "connect_refused")
    assert pool.states()[refused.url] == {
        "state": "unhealthy", "check": "health", "last_error": "connect_refused",
    }  # fmt: skip


async def test_a_replica_coming_back_waits_for_its_model_list(
    serve: Serve, pool: ReplicaPool
) -> None:
    server = await serve({"/health": status(200), "/v1/models": status(500)})
    replica = pool.configure((server.url(),)).replicas[0]
    await pool.check(replica)
    assert replica.state() == "healthy"  # a replica that is in stays in
    replica.healthy = False
    await pool.check(replica)
    assert replica.state() == "unhealthy"  # one coming back is not routed on a stale list


async def test_panic_mode_sends_to_a_replica_that_is_out_and_the_first_success_readmits_it(
    serve: Serve, pool: ReplicaPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serving.pool")
    server = await serve({"/v1/chat/completions": status(200, ANSWER)})
    replicas = pool.configure((server.url(),))
    replica = replicas.replicas[0]
    replica.healthy, replica.last_error = False, "timeout"  # its last check failed
    async with await replicas.post("/chat/completions", b"{}", [], model="base") as resp:
        assert resp.status == 200
    assert replica.state() == "healthy" and replica.panic_requests == 1
    async with await replicas.post("/chat/completions", b"{}", [], model="base") as resp:
        assert resp.status == 200
    assert replica.panic_requests == 1  # in again: no longer panic mode
    messages = [r.getMessage() for r in caplog.records]
    assert sum("panic mode" in m and "anyway" in m for m in messages) == 1
    assert sum("panic mode over" in m for m in messages) == 1
    assert sum("a request succeeded on it" in m for m in messages) == 1


async def test_panic_mode_is_logged_once_while_every_replica_stays_down(
    pool: ReplicaPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serving.pool")
    urls = (f"http://127.0.0.1:{free_port()}/v1", f"http://127.0.0.1:{free_port()}/v1")
    replicas = pool.configure(urls)
    for replica in replicas.replicas:
        replica.healthy = False
    for _ in range(5):
        with pytest.raises(UpstreamError) as caught:
            await replicas.post("/chat/completions", b"{}", [], model="base")
        assert caught.value.reason == "connect_refused"
    assert [r.panic_requests for r in replicas.replicas] == [5, 5]  # both tried each time
    panics = [r for r in caplog.records if "panic mode" in r.getMessage()]
    assert len(panics) == 1 and panics[0].levelno == logging.WARNING


async def test_a_refused_connection_and_a_missing_model_are_named(
    serve: Serve, pool: ReplicaPool
) -> None:
    refused = pool.configure((f"http://127.0.0.1:{free_port()}/v1",))
    with pytest.raises(UpstreamError) as caught:
        await refused.post("/chat/completions", b"{}", [], model="base")
    assert caught.value.reason == "connect_refused"

    server = await serve({"/health": status(200), "/v1/models": status(200, MODELS)})
    listed = pool.configure((server.url(),))
    await pool.check(listed.replicas[0])
    with pytest.raises(UpstreamError) as caught:
        await listed.post("/chat/completions", b"{}", [], model="lora-unknown")
    assert caught.value.reason == "no_replica_for_model"


async def test_passive_ejection_is_lifted_by_a_request_that_succeeds(
    serve: Serve, pool: ReplicaPool
) -> None:
    server = await serve({"/v1/chat/completions": status(200, ANSWER)})
    replicas = pool.configure((server.url(),))
    replica = replicas.replicas[0]
    for _ in range(pool.outlier.max_failures):
        replicas.failed(replica, "timeout")
    assert replica.state() == "ejected"
    async with await replicas.post("/chat/completions", b"{}", [], model=None) as resp:
        assert resp.status == 200
    assert replica.state() == "healthy"


async def test_a_health_endpoint_behind_a_key_is_judged_by_the_model_list(
    serve: Serve, pool: ReplicaPool
) -> None:
    """LiteLLM's /health wants a key: a 401 there means the server answered, not 'down'."""
    server = await serve({"/health": status(401), "/v1/models": status(401)})
    replica = pool.configure((server.url(),)).replicas[0]
    await pool.check(replica)
    assert replica.state() == "healthy"

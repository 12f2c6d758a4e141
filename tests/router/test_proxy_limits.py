"""The request path's limits and fallbacks against scripted replicas: control's own timeouts on
a fallback, the errors a client gets for an exhausted pool or an oversized body, a client that
stops reading a stream, an unfinished stream event without end."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from router.dataplane.proxy import Proxy
from router.dataplane.routing import RoutingTable, compile_table
from router.experiments import DefaultUpstream, Experiment
from serving.errors import UpstreamPoolExhausted, UpstreamProtocolError, UpstreamTooLarge
from serving.types import Timeouts
from tests.router.test_proxy_paths import (
    CHAT,
    CONTROL,
    DEFAULT,
    STREAM,
    TREATMENT,
    FakeGateway,
    FakeResponse,
    _ok,
    _run,
    _sse,
)


def _table(
    control: dict[str, Any], treatment: dict[str, Any] | None = None, *, fallback: bool = True
) -> RoutingTable:
    exp = Experiment.model_validate(
        {
            "name": "exp",
            "route": "alias",
            "control": {"base_url": CONTROL, "model": "base", **control},
            "treatment": {"base_url": TREATMENT, "model": "lora", **(treatment or {})},
            "treatment_percent": 100,
            "fallback_to_control": fallback,
        }
    )
    return compile_table(1, [exp], DefaultUpstream(base_url=DEFAULT), ["x-user-id"])


@pytest.mark.parametrize(
    ("control", "expected"),
    [
        ({"connect_timeout": 3.0, "read_timeout": 7.0}, Timeouts(connect=3.0, read=7.0)),
        ({"read_timeout": 7.0}, Timeouts(connect=1.0, read=7.0)),  # the pool's connect
        ({}, None),  # none of its own: the pool's defaults
    ],
)
async def test_a_fallback_applies_control_timeouts(
    control: dict[str, Any], expected: Timeouts | None
) -> None:
    table = _table(control, {"read_timeout": 99.0})
    gw = FakeGateway(table, {TREATMENT: [FakeResponse(503)], CONTROL: [_ok()]})
    res = await _run(gw, CHAT, user="someone")
    assert res.status == 200 and res.headers[b"x-abgate-fallback"] == b"control"
    treatment_call, control_call = gw.replicas.calls
    assert treatment_call["timeouts"] == Timeouts(connect=1.0, read=99.0)
    assert control_call["url"] == CONTROL and control_call["timeouts"] == expected


async def test_an_exhausted_pool_is_a_503_in_the_openai_shape() -> None:
    busy = UpstreamPoolExhausted("busy", base_url=CONTROL, connections=8, waited=2.5)
    gw = FakeGateway(_table({}), {TREATMENT: [FakeResponse(503)], CONTROL: [busy]})
    res = await _run(gw, CHAT, user="someone")
    assert res.status == 503 and res.error == "fallback_status_503"
    error = orjson.loads(res.body)["error"]
    assert error["code"] == "upstream_pool_exhausted" and error["type"] == "upstream_error"
    assert "all 8 connections" in error["message"] and "2.5 s" in error["message"]
    assert CONTROL not in error["message"]  # never the replica's address
    gw = FakeGateway(_table({}, fallback=False), {TREATMENT: [busy]})
    res = await _run(gw, CHAT, user="someone")
    assert res.status == 503 and res.error == "pool_exhausted"


@pytest.mark.parametrize(
    ("failure", "code", "words"),
    [
        (
            UpstreamTooLarge("big", base_url=TREATMENT, limit=1000),
            "upstream_response_too_large",
            "limit of 1000 bytes (ABGATE_UPSTREAM_MAX_RESPONSE_BYTES)",
        ),
        (
            UpstreamProtocolError("the response's headers exceed 65536 bytes", base_url=TREATMENT),
            "upstream_unavailable",
            "refused: the response's headers exceed 65536 bytes",
        ),
    ],
)
async def test_a_refused_response_is_a_clear_502(failure: Exception, code: str, words: str) -> None:
    answer = FakeResponse(200, broken=failure)  # type: ignore[arg-type]
    gw = FakeGateway(_table({}, fallback=False), {TREATMENT: [answer]})
    res = await _run(gw, CHAT, user="someone")
    error = orjson.loads(res.body)["error"]
    assert res.status == 502 and error["code"] == code and words in error["message"]
    assert res.error == failure.reason  # type: ignore[attr-defined]


async def test_a_client_that_stops_reading_a_stream_is_let_go() -> None:
    chunks = _sse(*({"choices": [{"delta": {"content": str(i)}}]} for i in range(50)))
    gw = FakeGateway(_table({}), {TREATMENT: [FakeResponse(chunks=chunks)]})
    gw.settings = SimpleNamespace(
        max_body_bytes=10_000,
        client_write_timeout=0.2,
        max_unit_id_bytes=256,
        direct_arm_models="refuse_treatment",
    )
    sent: list[dict[str, Any]] = []
    stuck = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 3:
            await stuck.wait()  # the client's socket buffer is full from here on

    messages = [{"type": "http.request", "body": orjson.dumps(STREAM)}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await stuck.wait()
        raise AssertionError("unreachable")

    scope = {
        "type": "http",
        "headers": [(b"content-type", b"application/json"), (b"x-user-id", b"someone")],
    }
    started = time.monotonic()
    await Proxy(gw)(scope, receive, send, "/chat/completions")  # type: ignore[arg-type]
    assert 0.15 < time.monotonic() - started < 2
    assert len(sent) == 3  # the start and two events; then the relay gave up
    assert gw.events[0].error == "client_closed" and gw.events[0].status == 499
    assert gw.breakers.fed == [False]  # not the treatment's fault
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_an_unfinished_event_without_end_breaks_the_stream() -> None:
    endless = [b"data: {" + b"x" * (1 << 20) for _ in range(10)]  # 10 MiB, no event end
    gw = FakeGateway(_table({}), {TREATMENT: [FakeResponse(chunks=endless)]})
    res = await _run(gw, STREAM, user="someone")
    assert res.status == 200 and res.error == "stream_protocol"
    assert len(res.body) < 1024 and res.body.endswith(b"data: [DONE]\n\n")

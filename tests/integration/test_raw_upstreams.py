"""A real gateway process in front of a raw-socket upstream that sends exactly the bytes each
scenario chooses: an interim 100 before the answer, trailers, close-delimited bodies, endless
headers (with the gateway's memory measured), a body over the limit, a pool exhausted by
stalled responses, a fallback to a control whose own read timeout is short, and a client that
stops reading a stream.

The upstream runs its own event loop in a thread and picks the scenario by the request's
`model` (the default upstream passes it unchanged; an experiment rewrites it to its target's).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI

from router.runtime.embedded_redis import EmbeddedRedis
from tests.procs import Proc, gateway

pytestmark = pytest.mark.integration

Writer = asyncio.StreamWriter
ANSWER = orjson.dumps(
    {
        "id": "cmpl-raw",
        "object": "chat.completion",
        "created": 1,
        "model": "raw",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
)
EVENTS = [
    b"data: "
    + orjson.dumps(
        {
            "id": "cmpl-raw",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "raw",
            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
        }
    )
    + b"\n\n"
    for word in ("hel", "lo")
] + [b"data: [DONE]\n\n"]
MODELS = ["interim", "trailers", "close", "endless", "big", "stall", "fail503", "flood"]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class RawUpstream:
    """An OpenAI-shaped upstream written byte by byte, on its own loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.unstall = asyncio.Event()
        self.written: dict[str, int] = {}  # bytes written by the endless scenarios
        self.ended: dict[str, float] = {}  # when the gateway closed an endless scenario
        self.stalled = 0
        self.url = ""

    def __enter__(self) -> RawUpstream:
        self.thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop
        ).result(5)
        self.server = server
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            self.unstall.set()
            self.server.close()
            await asyncio.sleep(0.1)
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def release_stalled(self) -> None:
        """Release the responses stalled so far; later ones stall again (test order free)."""
        self.loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        stalled, self.unstall = self.unstall, asyncio.Event()
        stalled.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        try:
            while True:
                method, path, body = await _read_request(reader)
                if not await self._answer(method, path, body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, method: bytes, path: bytes, body: bytes, writer: Writer) -> bool:
        """Answer one request; False when the connection is to end."""
        if method == b"GET":
            payload = b"" if path == b"/health" else _models()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            await writer.drain()
            return True
        request = orjson.loads(body)
        scenario: Callable[[Writer, bool], Awaitable[bool]] = getattr(self, "_" + request["model"])
        return await scenario(writer, request.get("stream") is True)

    async def _interim(self, writer: Writer, stream: bool) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # the final answer in a later read
        if stream:
            await _stream_chunked(writer, b"")
        else:
            writer.write(_json_head(len(ANSWER)) + ANSWER)
        await writer.drain()
        return True

    async def _trailers(self, writer: Writer, stream: bool) -> bool:
        trailers = b"X-Checksum: abc\r\nX-Trailer-Only: 1\r\n"
        if stream:
            await _stream_chunked(writer, trailers)
        else:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\nTrailer: X-Checksum, X-Trailer-Only\r\n\r\n"
                + _chunk(ANSWER[:20])
                + _chunk(ANSWER[20:])
                + b"0\r\n"
                + trailers
                + b"\r\n"
            )
        await writer.drain()
        return True

    async def _close(self, writer: Writer, stream: bool) -> bool:
        ctype = b"text/event-stream" if stream else b"application/json"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\n\r\n")
        for part in EVENTS if stream else (ANSWER[:20], ANSWER[20:]):
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(part)
        await writer.drain()
        return False  # the end of the connection is the end of the body

    async def _endless(self, writer: Writer, stream: bool) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        line = b"X-Padding: " + b"p" * 4000 + b"\r\n"
        return await self._until_closed("endless", writer, line)

    async def _big(self, writer: Writer, stream: bool) -> bool:
        body = b"[" + b"0," * 300_000 + b"0]"
        writer.write(_json_head(len(body)) + body)
        await writer.drain()
        return True

    async def _stall(self, writer: Writer, stream: bool) -> bool:
        self.stalled += 1
        await self.unstall.wait()
        return False

    async def _fail503(self, writer: Writer, stream: bool) -> bool:
        error = b'{"error": {"message": "overloaded", "type": "server_error", "code": 503}}'
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(error), error)
        )
        await writer.drain()
        return True

    async def _flood(self, writer: Writer, stream: bool) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        event = _chunk(EVENTS[0][:-2] + b" " * 4000 + b"\n\n")
        return await self._until_closed("flood", writer, event)

    async def _until_closed(self, name: str, writer: Writer, piece: bytes) -> bool:
        """Write `piece` again and again until the gateway closes the connection."""
        self.written[name] = 0
        try:
            while not writer.is_closing():
                writer.write(piece)
                self.written[name] += len(piece)
                await writer.drain()
        except ConnectionError:
            pass
        self.ended[name] = time.monotonic()
        return False


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, path, _ = lines[0].split(b" ", 2)
    length = 0
    for line in lines[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return method, path, await reader.readexactly(length)


def _models() -> bytes:
    return orjson.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]})


def _json_head(length: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
        length
    )


async def _stream_chunked(writer: Writer, trailers: bytes) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for event in EVENTS:
        writer.write(_chunk(event))
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.write(b"0\r\n" + trailers + b"\r\n")


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(appendonly=False, data_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def raw() -> Iterator[RawUpstream]:
    with RawUpstream() as upstream:
        yield upstream


def _config(raw: RawUpstream) -> dict[str, Any]:
    return {
        "default_upstream": {"base_url": raw.url + "/v1"},
        "experiments": [
            {
                "name": "fallback",
                "route": "fallback-route",
                "treatment_percent": 100,
                "fallback_to_control": True,
                "treatment": {"base_url": raw.url + "/v1", "model": "fail503"},
                # control's own read timeout applies on the fallback, not the gateway's 30 s
                "control": {"base_url": raw.url + "/v1", "model": "stall", "read_timeout": 0.5},
            }
        ],
    }


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, redis: EmbeddedRedis, raw: RawUpstream
) -> Iterator[Proc]:
    with gateway(
        tmp_path_factory.mktemp("gw"),
        _config(raw),
        redis.url,
        log_level="info",  # lower case, as uvicorn and gunicorn spell it
        upstream_read_timeout="30",
        upstream_max_response_bytes="100000",
        outlier_max_failures="1000",  # every scenario on one replica: never eject it
        client_write_timeout="1",
    ) as proc:
        yield proc


def _post(gw: Proc, model: str, *, stream: bool = False, timeout: float = 15) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(
        gw.url + "/v1/chat/completions",
        json=body,
        headers={"x-user-id": "u1"},
        timeout=timeout,
    )


def _error(resp: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = resp.json()["error"]
    assert list(error) == ["message", "type", "param", "code", "request_id"]
    return error


def _memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak RSS) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["interim", "trailers", "close"])
def test_the_openai_client_gets_each_answer(gw: Proc, model: str) -> None:
    client = OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=15)
    messages: Any = [{"role": "user", "content": "hi"}]
    for _ in range(2):  # the second on the connection the first left behind
        done = client.chat.completions.create(model=model, messages=messages)
        assert done.choices[0].message.content == "hello"
        assert done.usage is not None and done.usage.total_tokens == 4
        stream = client.chat.completions.create(model=model, messages=messages, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == "hello"


def test_trailers_never_become_headers(gw: Proc) -> None:
    for stream in (False, True):
        resp = _post(gw, "trailers", stream=stream)
        assert resp.status_code == 200
        assert "x-checksum" not in resp.headers and "x-trailer-only" not in resp.headers


def test_a_close_delimited_body_is_a_success(gw: Proc) -> None:
    resp = _post(gw, "close")
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "hello"
    assert resp.headers["content-length"] == str(len(resp.content))


def test_endless_headers_are_cut_off_with_bounded_memory(gw: Proc, raw: RawUpstream) -> None:
    assert gw.proc is not None
    pid = gw.proc.pid
    assert _post(gw, "interim").status_code == 200  # warm
    before = _memory_kib(pid)
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _post(gw, "endless"), range(4)))
    elapsed = time.monotonic() - started
    after = _memory_kib(pid)
    for resp in answers:
        assert resp.status_code == 502
        error = _error(resp)
        assert error["code"] == "upstream_unavailable"
        assert "headers exceed 65536 bytes" in error["message"]
    assert elapsed < 10  # cut off at the limit, not at the 30 s read timeout
    grown_kib = max(after["VmHWM"] - before["VmHWM"], after["VmRSS"] - before["VmRSS"])
    assert grown_kib < 4 * 1024, (before, after, raw.written)
    assert "endless" in raw.ended  # the gateway closed the connection


def test_a_body_over_the_limit_is_a_clear_502(gw: Proc) -> None:
    resp = _post(gw, "big")
    assert resp.status_code == 502
    error = _error(resp)
    assert error["code"] == "upstream_response_too_large"
    assert "100000 bytes (ABGATE_UPSTREAM_MAX_RESPONSE_BYTES)" in error["message"]
    assert _post(gw, "interim").status_code == 200  # the gateway carries on


def test_a_fallback_uses_control_timeouts(gw: Proc, raw: RawUpstream) -> None:
    started = time.monotonic()
    resp = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "fallback-route", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-user-id": "u1"},
        timeout=15,
    )
    elapsed = time.monotonic() - started
    assert resp.status_code == 504 and resp.headers["x-abgate-fallback"] == "control"
    assert _error(resp)["code"] == "upstream_timeout"
    assert elapsed < 5  # control's 0.5 s read timeout, not the gateway's 30 s


def test_a_client_that_stops_reading_a_stream_is_let_go(gw: Proc, raw: RawUpstream) -> None:
    assert gw.proc is not None
    before = _memory_kib(gw.proc.pid)
    host, port = gw.url.removeprefix("http://").split(":")
    body = orjson.dumps({"model": "flood", "messages": [], "stream": True})
    with socket.create_connection((host, int(port))) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        deadline = time.monotonic() + 15
        while "flood" not in raw.ended and time.monotonic() < deadline:
            time.sleep(0.1)  # the client reads nothing
    after = _memory_kib(gw.proc.pid)
    assert "flood" in raw.ended  # the gateway gave up on the client and closed the upstream
    assert raw.written["flood"] < 64 * 1024 * 1024  # the upstream was slowed down, not drained
    grown_kib = max(after["VmHWM"] - before["VmHWM"], after["VmRSS"] - before["VmRSS"])
    assert grown_kib < 16 * 1024, (before, after, raw.written)


def test_a_pool_exhausted_by_stalled_responses_is_a_clear_503(
    tmp_path: Path, redis: EmbeddedRedis, raw: RawUpstream
) -> None:
    with (
        gateway(
            tmp_path,
            _config(raw),
            redis.url,
            upstream_max_connections="2",
            upstream_pool_timeout="0.5",
            upstream_read_timeout="30",
            outlier_max_failures="1000",
        ) as small,
        ThreadPoolExecutor(2) as pool,
    ):
        already = raw.stalled
        stalled = [pool.submit(_post, small, "stall", timeout=30) for _ in range(2)]
        deadline = time.monotonic() + 10
        while raw.stalled < already + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        resp = _post(small, "interim")
        elapsed = time.monotonic() - started
        assert resp.status_code == 503, resp.text
        error = _error(resp)
        assert error["code"] == "upstream_pool_exhausted"
        assert "all 2 connections" in error["message"] and "0.5 s" in error["message"]
        assert 0.4 <= elapsed < 3
        raw.release_stalled()
        for future in stalled:
            future.result()
        assert _post(small, "interim").status_code == 200  # connections came back

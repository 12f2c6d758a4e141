"""The request path's HTTP/1.1 client against raw-socket servers that send exactly the bytes
each test chooses: interim responses, trailers, close-delimited bodies, endless or oversized
heads and bodies, a second response nobody asked for, and a pool exhausted by stalled responses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest

from serving.errors import (
    UpstreamConnectError,
    UpstreamPoolExhausted,
    UpstreamProtocolError,
    UpstreamTooLarge,
)
from serving.h1 import _CHUNK_LIMIT, H1Pool, H1Response
from serving.upstream import UpstreamResponse

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\nok"


class Raw:
    """A server that answers each request of a connection with the next scripted reply."""

    def __init__(self, *replies: bytes | Reply) -> None:
        self.replies = list(replies)
        self.connections = 0
        self.requests = 0
        self.written = 0  # bytes a reply function managed to write

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                await read_request(reader)
                self.requests += 1
                reply = self.replies.pop(0)
                if isinstance(reply, bytes):
                    writer.write(reply)
                    await writer.drain()
                else:
                    await reply(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


@asynccontextmanager
async def serve(raw: Raw, **limits: float) -> AsyncIterator[H1Pool]:
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = H1Pool(f"http://127.0.0.1:{port}/v1", **limits)  # type: ignore[arg-type]
    try:
        yield pool
    finally:
        pool.close()
        server.close()
        await asyncio.sleep(0.05)  # let the handlers see the closed connections
        await server.wait_closed()


async def post(pool: H1Pool, read_timeout: float = 2.0) -> H1Response:
    return await pool.request(
        b"POST", "/chat/completions", [], b"{}", connect_timeout=1, read_timeout=read_timeout
    )


async def exchange(pool: H1Pool) -> tuple[H1Response, bytes]:
    resp = await post(pool)
    try:
        return resp, await resp.read()
    finally:
        resp.release()


async def test_interim_responses_are_skipped_and_the_connection_stays_in_step() -> None:
    raw = Raw(
        b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew",
        OK,
    )
    async with serve(raw) as pool:
        first, body = await exchange(pool)
        assert (first.status, body) == (200, b"ok")
        second, body = await exchange(pool)
        assert (second.status, body) == (201, b"new")
        assert second.headers == [(b"Content-Length", b"3")]  # no header of an interim one
        third, body = await exchange(pool)
        assert (third.status, body) == (200, b"ok")
    assert raw.connections == 1  # one connection, every answer read in step


async def test_trailers_are_dropped() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: X-Checksum\r\n\r\n"
        b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n"
        b"0\r\nX-Checksum: abc\r\nContent-Type: text/plain\r\n\r\n"
    )
    raw = Raw(chunked, OK)
    async with serve(raw) as pool:
        resp = await post(pool)
        body = b"".join([chunk async for chunk in resp.iter_chunks()])
        resp.release()
        assert body == b"data: 1\n\ndata: 2\n\n"
        names = [name.lower() for name, _ in resp.headers]
        assert b"x-checksum" not in names and names.count(b"content-type") == 1
        assert resp.content_type == "text/event-stream"
        _, body = await exchange(pool)
        assert body == b"ok"
    assert raw.connections == 1


async def test_a_close_delimited_body_is_read_to_the_end_and_the_connection_not_reused() -> None:
    async def close_delimited(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
        await writer.drain()
        for part in (b'{"choices": ', b"[]}"):
            await asyncio.sleep(0.02)
            writer.write(part)
            await writer.drain()
        writer.close()  # the end of the body

    async def http10(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nold")
        writer.close()

    raw = Raw(close_delimited)
    raw2 = Raw(http10, OK)
    async with serve(raw) as pool:
        resp, body = await exchange(pool)
        assert (resp.status, body) == (200, b'{"choices": []}')
        assert pool._all == set()  # discarded
    async with serve(raw2) as pool:
        assert (await exchange(pool))[1] == b"old"
        assert (await exchange(pool))[1] == b"ok"
    assert raw2.connections == 2


async def test_a_body_cut_short_is_an_error_not_the_end() -> None:
    raw = Raw(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 10\r\n\r\nshort")
    async with serve(raw) as pool:
        resp = await post(pool)
        with pytest.raises(UpstreamConnectError):
            await resp.read()
        resp.release()
    chunked = Raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    async with serve(chunked) as pool:
        resp = await post(pool)
        with pytest.raises(UpstreamConnectError):
            await resp.read()
        resp.release()


async def test_endless_headers_are_cut_off_at_the_limit() -> None:
    raw = Raw()

    async def endless(_: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        while True:  # until the client closes the connection
            writer.write(line)
            raw.written += len(line)
            await writer.drain()

    for line in (b"X-Pad: " + b"a" * 1000 + b"\r\n", b"a" * 4096):  # many headers, or one
        raw.replies.append(lambda r, w, line=line: endless(r, w, line))
        async with serve(raw, max_header_bytes=16 * 1024) as pool:
            started = time.monotonic()
            with pytest.raises(UpstreamProtocolError, match="headers exceed 16384 bytes"):
                await post(pool, read_timeout=30)
            assert time.monotonic() - started < 5
            assert pool._all == set()


async def test_too_many_headers() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101))
    raw = Raw(head + b"Content-Length: 2\r\n\r\nok")
    async with serve(raw, max_headers=100) as pool:
        with pytest.raises(UpstreamProtocolError, match="more than 100 headers"):
            await post(pool)
    fine = Raw(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(98)) + OK[17:])
    async with serve(fine, max_headers=100) as pool:
        assert (await exchange(pool))[1] == b"ok"


async def test_a_large_head_with_its_body_in_one_read_is_measured_exactly() -> None:
    big = b"X-Big: " + b"b" * 20_000 + b"\r\n"
    raw = Raw(b"HTTP/1.1 200 OK\r\n" + big + b"Content-Length: 2\r\n\r\nok")
    async with serve(raw, max_header_bytes=16 * 1024) as pool:
        with pytest.raises(UpstreamProtocolError, match="headers exceed"):
            await post(pool)


async def test_a_body_over_the_limit() -> None:
    async def endless_chunks(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
            await writer.drain()

    declared = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"y" * 5000
    raw = Raw(declared, endless_chunks, OK)
    async with serve(raw, max_body_bytes=4096) as pool:
        for _ in range(2):
            resp = await post(pool)
            with pytest.raises(UpstreamTooLarge, match="exceeds 4096 bytes") as caught:
                await resp.read()
            assert caught.value.limit == 4096 and caught.value.reason == "too_large"
            resp.release()
        assert (await exchange(pool))[1] == b"ok"
    # the declared body arrived whole (the connection stayed in step and was reused); the
    # endless one did not, and its connection was closed
    assert raw.connections == 2


async def test_a_second_response_nobody_asked_for_closes_the_connection() -> None:
    raw = Raw(OK + OK, OK)
    async with serve(raw) as pool:
        assert (await exchange(pool))[1] == b"ok"
        assert (await exchange(pool))[1] == b"ok"
    assert raw.connections == 2


async def test_part_of_a_second_response_in_the_same_read_retires_the_connection() -> None:
    """The first answer is whole, but the connection is mid-message: never reuse it."""
    raw = Raw(OK + b"HTTP/1.1 200 OK\r\nContent-Le", OK)
    async with serve(raw) as pool:
        assert (await exchange(pool))[1] == b"ok"
        assert (await exchange(pool))[1] == b"ok"
    assert raw.connections == 2


async def test_bytes_on_an_idle_connection_retire_it() -> None:
    async def then_more(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nsta")  # unasked, cut

    raw = Raw(then_more, OK)
    async with serve(raw) as pool:
        assert (await exchange(pool))[1] == b"ok"
        await asyncio.sleep(0.2)
        resp, body = await exchange(pool)
        assert (resp.status, body) == (200, b"ok")  # not the stale answer
    assert raw.connections == 2


async def test_an_upgrade_is_a_protocol_error() -> None:
    raw = Raw(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
    async with serve(raw) as pool:
        with pytest.raises(UpstreamProtocolError):
            await post(pool)


async def test_a_pool_exhausted_by_stalled_responses_fails_within_the_pool_timeout() -> None:
    stalled = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await stalled.wait()  # never answers, until the test ends

    raw = Raw(stall, stall, OK, OK)
    async with serve(raw, max_connections=2, pool_timeout=0.3) as pool:
        hung = [asyncio.create_task(post(pool, read_timeout=30)) for _ in range(2)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(UpstreamPoolExhausted) as caught:
            await post(pool)
        waited = time.monotonic() - started
        assert 0.25 <= waited < 1.0
        assert caught.value.reason == "pool_exhausted"
        assert (caught.value.connections, caught.value.waited) == (2, 0.3)
        assert len(pool._turns) == 0  # the expired turn is forgotten
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)
        stalled.set()
        assert pool._all == set()  # the cancelled requests gave their connections back
        assert (await exchange(pool))[1] == b"ok"


async def test_waiting_requests_get_released_connections_in_order() -> None:
    gate = asyncio.Event()

    async def later(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        writer.write(OK)
        await writer.drain()

    raw = Raw(later, *([OK] * 5))
    async with serve(raw, max_connections=1, pool_timeout=5) as pool:
        order: list[int] = []

        async def one(i: int) -> None:
            _, body = await exchange(pool)
            assert body == b"ok"
            order.append(i)

        tasks = [asyncio.create_task(one(i)) for i in range(6)]
        await asyncio.sleep(0.05)
        cancelled = tasks.pop(3)
        cancelled.cancel()  # a waiter that gives up keeps no one else waiting
        gate.set()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 4, 5]
    assert raw.connections == 1


async def test_a_reader_that_falls_behind_pauses_the_socket() -> None:
    total = 16 * _CHUNK_LIMIT
    sent = 0

    async def flood(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"z" * 65536
        while sent < total:
            writer.write(block)
            sent += len(block)
            await writer.drain()

    async with serve(Raw(flood)) as pool:
        resp = await post(pool)
        conn = resp._conn
        await asyncio.sleep(0.5)  # the reader is busy elsewhere
        assert conn.paused
        assert conn.buffered < _CHUNK_LIMIT + 1024 * 1024  # not the 16 MiB sent
        assert sent < total
        got = 0
        async for chunk in resp.iter_chunks():
            got += len(chunk)
        resp.release()
        assert got == total and not conn.paused


async def test_the_aiohttp_path_bounds_the_body_too() -> None:
    raw = Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"y" * 5000)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"http://127.0.0.1:{port}/v1/x", data=b"{}")
            async with UpstreamResponse(resp, "https://replica/v1", 4096) as upstream:
                with pytest.raises(UpstreamTooLarge):
                    await upstream.read()
    finally:
        server.close()
        await server.wait_closed()

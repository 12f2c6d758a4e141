"""The request path's HTTP/1.1 client against a real local server: keep-alive reuse, streaming,
the connection limit, a server that closes idle connections, timeouts, refused connections."""

from __future__ import annotations

import asyncio

import pytest

from serving.errors import UpstreamConnectError, UpstreamTimeout
from serving.h1 import H1Pool


async def _server(handler):  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


async def test_keep_alive_streaming_and_limit() -> None:
    connections = 0
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                requests.append(await _read_request(reader))
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for part in (b"data: 1\n\n", b"data: 2\n\n"):
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                    await asyncio.sleep(0.01)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server, url = await _server(handler)
    pool = H1Pool(url, max_connections=2)
    try:
        for _ in range(3):
            resp = await pool.request(
                b"POST",
                "/chat/completions",
                [("X-A", "1")],
                b"{}",
                connect_timeout=1,
                read_timeout=1,
            )
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            assert [c async for c in resp.iter_chunks()] == [b"data: 1\n\n", b"data: 2\n\n"]
            resp.release()
        assert connections == 1  # reused
        assert requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert b"X-A: 1\r\n" in requests[0] and requests[0].endswith(b"\r\n\r\n{}")

        async def one() -> int:
            r = await pool.request(b"POST", "/x", [], b"", connect_timeout=1, read_timeout=1)
            await r.read()
            r.release()
            return r.status

        assert await asyncio.gather(*(one() for _ in range(6))) == [200] * 6
        assert connections <= 2  # never more than the limit
    finally:
        pool.close()
        server.close()
        await asyncio.sleep(0.05)  # let the handlers see the closed connections
        await server.wait_closed()


async def test_stale_connection_is_retried_once() -> None:
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        try:
            await _read_request(reader)
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        finally:
            writer.close()  # closes after each response, keep-alive notwithstanding

    server, url = await _server(handler)
    pool = H1Pool(url)
    try:
        for _ in range(2):
            r = await pool.request(b"POST", "/x", [], b"", connect_timeout=1, read_timeout=1)
            assert await r.read() == b"ok"
            r.release()
            await asyncio.sleep(0.05)
        assert served == 2
    finally:
        pool.close()
        server.close()
        await asyncio.sleep(0.05)  # let the handlers see the closed connections
        await server.wait_closed()


async def test_timeouts_and_refused() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _read_request(reader)
            await reader.read()  # until the client gives up and closes
        finally:
            writer.close()

    server, url = await _server(silent)
    pool = H1Pool(url)
    try:
        with pytest.raises(UpstreamTimeout):
            await pool.request(b"POST", "/x", [], b"", connect_timeout=1, read_timeout=0.2)
    finally:
        pool.close()
        server.close()
        await asyncio.sleep(0.05)
        await server.wait_closed()
    refused = H1Pool("http://127.0.0.1:9/v1")
    with pytest.raises(UpstreamConnectError):
        await refused.request(b"POST", "/x", [], b"", connect_timeout=1, read_timeout=1)

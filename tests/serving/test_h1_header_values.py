"""The request path's HTTP/1.1 client refuses to write a header name or value holding CR or LF:
such a value would end its header line and write headers (or a request) of its own. The gateway
validates every configured value that becomes a header (router/experiments.py); this is the
last line, in the one place that writes the bytes."""

from __future__ import annotations

import asyncio

import pytest

from serving.errors import UpstreamProtocolError
from serving.h1 import H1Pool


@pytest.mark.parametrize(
    "header",
    [
        ("Authorization", "Bearer sk-1\r\nX-Injected: 1"),
        ("Authorization", "Bearer sk-1\nX-Injected: 1"),
        ("Authorization", "Bearer sk-1\r"),
        ("X-Bad\r\nX-Injected", "1"),
    ],
)
async def test_a_header_with_cr_or_lf_is_not_sent(header: tuple[str, str]) -> None:
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n") + await reader.readexactly(2))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = H1Pool(f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(UpstreamProtocolError, match="CR or LF"):
            await pool.request(
                b"POST", "/chat/completions", [("X-A", "1"), header], b"{}",
                connect_timeout=1, read_timeout=1,
            )  # fmt: skip
        # the next request on the pool is the first bytes the server sees: the refused one
        # wrote nothing
        resp = await pool.request(
            b"POST", "/chat/completions", [("X-A", "2")], b"{}", connect_timeout=1,
            read_timeout=1,
        )  # fmt: skip
        assert resp.status == 200
        resp.release()
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
    assert len(received) == 1 and b"X-Injected" not in received[0]
    assert received[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"X-A: 2\r\n" in received[0] and b"X-A: 1" not in received[0]

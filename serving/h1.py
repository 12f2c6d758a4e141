"""A lean HTTP/1.1 client for the request path: keep-alive connections per upstream host,
responses parsed by httptools (the parser uvicorn uses), bodies streamed as they arrive.

aiohttp's client was measured to spend about 100 µs of CPU per proxied request on request
objects, header multidicts and connection keys (docs/performance.md); this client writes the
request in one call and hands the parser's callbacks straight to the waiting coroutine. It does
only what the proxy needs: plain HTTP (model servers sit on a private network), one request at a
time per connection (at most `max_connections` per upstream; more requests wait for one),
connect and read timeouts, and one retry on a pooled connection that the server had already
closed. Admin calls (LoRA loads, probes, health checks) keep using aiohttp.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

from serving.errors import UpstreamConnectError, UpstreamTimeout

_CHUNK_LIMIT = 1 << 20


class _Conn(asyncio.Protocol):
    """One connection; one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.complete = False
        self.keep_alive = False
        self.got_bytes = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None

    # protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.error is None:
            self.error = UpstreamConnectError(
                f"connection closed: {exc.__class__.__name__ if exc else 'EOF'}", base_url=""
            )
        self._wake()

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = UpstreamConnectError(f"bad HTTP response: {exc}", base_url="")
            self._wake()
            if self.transport is not None:
                self.transport.close()

    # parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        # llhttp forgets the message's keep-alive once it completes: read it now
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, limit: float) -> None:
        """Until the next parser event (or an error); raises on timeout."""
        if self.error is not None:
            raise self.error
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(limit, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None
        if self.error is not None:
            raise self.error

    @property
    def reusable(self) -> bool:
        return self.complete and not self.closed and self.keep_alive


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class H1Response:
    """Status and headers have arrived; the body is read with `read` or `iter_chunks`."""

    def __init__(self, pool: H1Pool, conn: _Conn, read_timeout: float) -> None:
        self._pool, self._conn, self._timeout = pool, conn, read_timeout
        self.status = conn.status
        self.headers = conn.headers

    @property
    def content_type(self) -> str:
        for name, value in self.headers:
            if name.lower() == b"content-type":
                return value.split(b";", 1)[0].strip().decode("latin-1").lower()
        return "application/octet-stream"

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            while conn.chunks:
                yield conn.chunks.popleft()
            if conn.complete:
                return
            try:
                await conn.wait(self._timeout)
            except TimeoutError as exc:
                raise UpstreamTimeout("upstream read timed out", base_url=self._pool.url) from exc

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.iter_chunks()]
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def release(self) -> None:
        self._pool.release(self._conn)


class H1Pool:
    """Keep-alive connections to one upstream (scheme http, host, port)."""

    def __init__(self, base_url: str, *, max_idle: int = 256, max_connections: int = 1000) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError("the lean client speaks plain http")
        self.url = base_url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = (parts.path or "").rstrip("/")
        self.host_header = parts.netloc.encode("latin-1")
        self._idle: deque[_Conn] = deque()
        self._max_idle = max_idle
        self._max_connections = max_connections
        self._all: set[_Conn] = set()
        self._opening = 0  # connections being opened (they count against the limit)
        self._freed: asyncio.Event | None = None  # set when a connection is released

    async def _connect(self, limit: float) -> _Conn:
        loop = asyncio.get_running_loop()
        self._opening += 1
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(loop), self.host, self.port), limit
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"connect to {self.url} timed out", base_url=self.url) from exc
        except OSError as exc:
            raise UpstreamConnectError(
                f"cannot connect to {self.url}: {exc.strerror or exc}", base_url=self.url
            ) from exc
        finally:
            self._opening -= 1
            if self._freed is not None:
                self._freed.set()
        self._all.add(conn)
        return conn

    def _take_idle(self) -> _Conn | None:
        """A pooled connection the server has not closed meanwhile."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
            self._discard(conn)
        return None

    async def request(
        self,
        method: bytes,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> H1Response:
        head = [
            method,
            b" ",
            (self.prefix + path).encode("latin-1"),
            b" HTTP/1.1\r\nHost: ",
            self.host_header,
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\n",
        ]
        for name, value in headers:
            head += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        head += [b"\r\n", body]
        payload = b"".join(head)
        for attempt in (0, 1):
            conn = self._take_idle()
            while conn is None and len(self._all) + self._opening >= self._max_connections:
                if self._freed is None:
                    self._freed = asyncio.Event()
                self._freed.clear()
                await self._freed.wait()  # at the connection limit: wait for one to come back
                conn = self._take_idle()
            fresh = conn is None
            if conn is None:
                conn = await self._connect(connect_timeout)
            conn._reset()
            assert conn.transport is not None
            conn.transport.write(payload)
            try:
                while not conn.status:
                    await conn.wait(read_timeout)
            except TimeoutError as exc:
                self._discard(conn)
                raise UpstreamTimeout(
                    f"{self.url} sent no response in time", base_url=self.url
                ) from exc
            except UpstreamConnectError as exc:
                self._discard(conn)
                if attempt == 0 and not fresh and not conn.got_bytes:
                    continue  # the server closed this idle connection: nothing reached it
                raise UpstreamConnectError(str(exc), base_url=self.url) from exc
            return H1Response(self, conn, read_timeout)
        raise UpstreamConnectError(
            f"cannot reach {self.url}", base_url=self.url
        )  # pragma: no cover

    def release(self, conn: _Conn) -> None:
        if conn.reusable and len(self._idle) < self._max_idle:
            conn.chunks.clear()
            self._idle.append(conn)
            if self._freed is not None:
                self._freed.set()
        else:
            self._discard(conn)

    def _discard(self, conn: _Conn) -> None:
        self._all.discard(conn)
        if self._freed is not None:
            self._freed.set()
        if conn.transport is not None and not conn.closed:
            conn.transport.close()

    def close(self) -> None:
        for conn in list(self._all):
            self._discard(conn)
        self._idle.clear()

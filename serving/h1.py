"""A lean HTTP/1.1 client for the request path: keep-alive connections per upstream host,
responses parsed by httptools (the parser uvicorn uses), bodies streamed as they arrive.

aiohttp's client was measured to spend about 100 µs of CPU per proxied request on request
objects, header multidicts and connection keys (docs/performance.md); this client writes the
request in one call and hands the parser's callbacks straight to the waiting coroutine. It does
only what the proxy needs: plain HTTP (model servers sit on a private network), one request at a
time per connection (at most `max_connections` per upstream; more requests wait for one, first
come first served, for at most `pool_timeout` seconds), connect and read timeouts, and one retry
on a pooled connection that the server had already closed. Admin calls (LoRA loads, probes,
health checks) keep using aiohttp.

What servers and proxies send is handled as HTTP/1.1 says: interim responses (100 Continue,
103 Early Hints) are skipped; trailers after a chunked body are dropped, never merged into the
headers; a body with neither Content-Length nor chunked encoding ends when the server closes the
connection, which is then never reused. Nothing a server sends is buffered without a bound: the
head (status line, headers, interim responses) is limited in bytes and headers, so are the bytes
of any stretch without body (chunk framing, trailers), the body that `read` collects, and the
unread body of a stream: past `_CHUNK_LIMIT` the connection stops reading from its socket until
the consumer catches up, so a client that reads slowly slows the model server through TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httptools

from serving.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamPoolExhausted,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamTooLarge,
)

#: unread body bytes a connection holds before it stops reading from its socket
_CHUNK_LIMIT = 1 << 20
#: defaults of the limits (H1Pool's arguments)
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 64 * 1024 * 1024
POOL_TIMEOUT = 10.0


class _Stop(Exception):
    """Raised in a parser callback to stop parsing; the reason is in `_Conn.error`."""


class _Conn(asyncio.Protocol):
    """One connection; one exchange at a time."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, url: str, max_header_bytes: int, max_headers: int
    ) -> None:
        self.loop = loop
        self.url = url
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.paused = False  # reading from the socket is paused (see `_CHUNK_LIMIT`)
        self._reset()

    def _reset(self) -> None:
        self.status = 0  # of the final response; 0 until its head has arrived
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.complete = False
        self.keep_alive = False
        self.interim = False  # parsing a 1xx response
        self.got_bytes = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.buffered = 0  # body bytes received and not yet taken by the reader
        self.idle = 0  # bytes received since the last body bytes (head, framing, trailers)
        if self.paused:
            self.resume()

    # protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.error is None:
            if exc is None and self.status and _ends_at_eof(self.headers):
                self.complete = True  # a close-delimited body: the server's close ends it
            else:
                self.error = UpstreamConnectError(
                    f"connection closed: {exc.__class__.__name__ if exc else 'EOF'}",
                    base_url=self.url,
                )
        self._wake()

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.complete:  # bytes after the response, or on an idle connection: not reusable
            self._abort(None)
            return
        in_head = not self.status
        before = self.buffered
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.complete:  # more after a complete response: only the connection is lost
                self._abort(None)
            else:
                self._abort(
                    self.error
                    or UpstreamProtocolError(f"bad HTTP response: {exc}", base_url=self.url)
                )
            return
        if self.buffered == before:  # no body in this read: head, chunk framing or trailers
            self.idle += len(data)
            if self.idle > self.max_header_bytes:
                self._abort(self._too_long())
            return
        if (
            in_head
            and self.idle + len(data) > self.max_header_bytes
            and _head_size(self.headers) > self.max_header_bytes  # head and body in one read
        ):
            self._abort(self._too_long())
            return
        self.idle = 0
        if self.buffered > _CHUNK_LIMIT and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    # parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.status:  # trailers, after the final head, are dropped
            self.headers.append((name, value))

    def on_message_begin(self) -> None:
        if self.complete:
            # bytes of another message came in the same read as the end of this one: this
            # response is whole, but the connection is mid-message and must not be reused
            self.keep_alive = False

    def on_headers_complete(self) -> None:
        if self.complete:
            raise _Stop  # a second response to one request
        status = self.parser.get_status_code()
        if status < 200:  # interim (100 Continue, 103 Early Hints): the final response follows
            self.interim = True
            self.headers = []
            return
        if len(self.headers) > self.max_headers:
            self.error = UpstreamProtocolError(
                f"the response has more than {self.max_headers} headers", base_url=self.url
            )
            raise _Stop
        self.status = status
        # llhttp forgets the message's keep-alive once it completes: read it now
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self._wake()

    def _too_long(self) -> UpstreamProtocolError:
        return UpstreamProtocolError(
            f"the response's headers exceed {self.max_header_bytes} bytes", base_url=self.url
        )

    def _abort(self, error: UpstreamError | None) -> None:
        """Stop using this connection; with an `error`, the exchange fails with it even if its
        message was complete (a head over the limits that arrived with its whole body)."""
        if error is not None:
            self.error = error
            self.complete = False
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True  # now, not when the loop reports it: the pool must not hand it out
        self._wake()

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

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


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _ends_at_eof(headers: list[tuple[bytes, bytes]]) -> bool:
    """The body is delimited by the end of the connection: neither a length nor chunked."""
    for name, value in headers:
        low = name.lower()
        if low == b"content-length":
            return False
        if low == b"transfer-encoding" and value.rstrip().lower().endswith(b"chunked"):
            return False
    return True


def _head_size(headers: list[tuple[bytes, bytes]]) -> int:
    return sum(len(name) + len(value) + 4 for name, value in headers)


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

    async def _more(self) -> None:
        """Everything received was taken: read on (if paused) and wait for more."""
        conn = self._conn
        conn.buffered = 0
        if conn.paused:
            conn.resume()
        try:
            await conn.wait(self._timeout)
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream read timed out", base_url=self._pool.url) from exc

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            chunks = conn.chunks
            while chunks:
                yield chunks.popleft()
            if conn.complete:
                return
            await self._more()

    async def read(self) -> bytes:
        """The whole body; `UpstreamTooLarge` past the pool's `max_body_bytes`."""
        conn, limit = self._conn, self._pool.max_body_bytes
        parts: list[bytes] = []
        size = 0
        while True:
            chunks = conn.chunks
            while chunks:
                part = chunks.popleft()
                size += len(part)
                parts.append(part)
            if size > limit:
                raise UpstreamTooLarge(
                    f"the response body exceeds {limit} bytes", base_url=self._pool.url, limit=limit
                )
            if conn.complete:
                return b"".join(parts) if len(parts) != 1 else parts[0]
            await self._more()

    def release(self) -> None:
        self._pool.release(self._conn)


class H1Pool:
    """Keep-alive connections to one upstream (scheme http, host, port)."""

    def __init__(
        self,
        base_url: str,
        *,
        max_idle: int = 256,
        max_connections: int = 1000,
        pool_timeout: float = POOL_TIMEOUT,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_headers: int = MAX_HEADERS,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError("the lean client speaks plain http")
        self.url = base_url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = (parts.path or "").rstrip("/")
        self.host_header = parts.netloc.encode("latin-1")
        self.pool_timeout = pool_timeout
        self.max_body_bytes = max_body_bytes
        self._head_limits = (max_header_bytes, max_headers)
        self._idle: deque[_Conn] = deque()
        self._max_idle = max_idle
        self._max_connections = max_connections
        self._all: set[_Conn] = set()
        self._opening = 0  # connections being opened (they count against the limit)
        self._turns: deque[asyncio.Future[_Conn | None]] = deque()  # requests waiting, in order

    async def _connect(self, limit: float) -> _Conn:
        loop = asyncio.get_running_loop()
        self._opening += 1
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Conn(loop, self.url, *self._head_limits), self.host, self.port
                ),
                limit,
            )
        except BaseException as exc:
            self._opening -= 1
            self._hand_over(None)  # the slot this connection held is free again
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(
                    f"connect to {self.url} timed out", base_url=self.url
                ) from exc
            if isinstance(exc, OSError):
                raise UpstreamConnectError(
                    f"cannot connect to {self.url}: {exc.strerror or exc}", base_url=self.url
                ) from exc
            raise
        self._opening -= 1
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

    def _full(self) -> bool:
        return len(self._all) + self._opening >= self._max_connections

    async def _acquire(self, connect_timeout: float) -> tuple[_Conn, bool]:
        """A connection for one exchange, and whether it is new."""
        conn = self._take_idle()
        if conn is not None:
            return conn, False
        if self._full():
            conn = await self._wait_turn()
            if conn is not None:
                return conn, False
        return await self._connect(connect_timeout), True

    async def _wait_turn(self) -> _Conn | None:
        """At the connection limit: wait, first come first served, for a released connection
        (returned) or for room to open one (None), at most `pool_timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.pool_timeout
        first = True
        while True:
            turn: asyncio.Future[_Conn | None] = loop.create_future()
            if first:
                self._turns.append(turn)
            else:
                self._turns.appendleft(turn)  # woken but overtaken: keep its place
            first = False
            timer = loop.call_at(deadline, _expire, turn)
            try:
                conn = await turn
            except TimeoutError:
                self._forget(turn)
                raise UpstreamPoolExhausted(
                    f"all {self._max_connections} connections to {self.url} stayed busy for "
                    f"{self.pool_timeout:g} s",
                    base_url=self.url,
                    connections=self._max_connections,
                    waited=self.pool_timeout,
                ) from None
            except BaseException:
                self._forget(turn)
                self._pass_on(turn)
                raise
            finally:
                timer.cancel()
            if conn is not None:
                if not conn.closed:
                    return conn
                self._discard(conn)
            conn = self._take_idle()
            if conn is not None or not self._full():
                return conn

    def _forget(self, turn: asyncio.Future[_Conn | None]) -> None:
        with contextlib.suppress(ValueError):  # already handed its turn
            self._turns.remove(turn)

    def _pass_on(self, turn: asyncio.Future[_Conn | None]) -> None:
        """A waiting request was cancelled after its turn came: the next one gets it."""
        if turn.done() and not turn.cancelled() and turn.exception() is None:
            conn = turn.result()
            if conn is not None:
                self.release(conn)
            else:
                self._hand_over(None)

    def _hand_over(self, conn: _Conn | None) -> bool:
        """Give a released connection (or None: room for a new one) to the first waiter."""
        turns = self._turns
        while turns:
            turn = turns.popleft()
            if not turn.done():
                turn.set_result(conn)
                return True
        return False

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
        fields = "".join([f"{name}: {value}\r\n" for name, value in headers]).encode("latin-1")
        if fields.count(b"\n") != len(headers) or fields.count(b"\r") != len(headers):
            # a CR or LF inside a name or value would write headers of its own (or a request)
            raise UpstreamProtocolError(
                f"a header for {self.url} holds CR or LF; the request was not sent",
                base_url=self.url,
            )
        head += [fields, b"\r\n", body]
        payload = b"".join(head)
        for attempt in (0, 1):
            conn, fresh = await self._acquire(connect_timeout)
            conn._reset()
            assert conn.transport is not None
            conn.transport.write(payload)
            try:
                while not conn.status:
                    await conn.wait(read_timeout)
            except UpstreamConnectError:
                self._discard(conn)
                if attempt == 0 and not fresh and not conn.got_bytes:
                    continue  # the server closed this idle connection: nothing reached it
                raise
            except TimeoutError as exc:
                self._discard(conn)
                raise UpstreamTimeout(
                    f"{self.url} sent no response in time", base_url=self.url
                ) from exc
            except BaseException:  # a bad response, or the request was cancelled
                self._discard(conn)
                raise
            return H1Response(self, conn, read_timeout)
        raise UpstreamConnectError(
            f"cannot reach {self.url}", base_url=self.url
        )  # pragma: no cover

    def release(self, conn: _Conn) -> None:
        if conn.reusable:
            if self._turns and self._hand_over(conn):
                return
            if len(self._idle) < self._max_idle:
                conn.chunks.clear()
                self._idle.append(conn)
                return
        self._discard(conn)

    def _discard(self, conn: _Conn) -> None:
        if conn.transport is not None and not conn.closed:
            conn.transport.close()
        if conn in self._all:
            self._all.remove(conn)
            if self._turns:
                self._hand_over(None)

    def close(self) -> None:
        for conn in list(self._all):
            self._discard(conn)
        self._idle.clear()
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_exception(
                    UpstreamConnectError(f"the pool of {self.url} is closed", base_url=self.url)
                )

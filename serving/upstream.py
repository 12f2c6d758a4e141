"""Pooled HTTP clients for model servers.

One `Upstream` per replica base URL, opened in the gateway's lifespan and closed at shutdown.
Completions to an `http://` replica go through the lean HTTP/1.1 client (serving/h1.py), which
was measured to cost far less CPU per request than aiohttp's (docs/performance.md); `https://`
replicas and the small admin calls (LoRA loads, probes, model lists) use one aiohttp session.

Both paths bound the same things: the wait for a free connection when `max_connections` are
busy (`pool_timeout`; aiohttp counts it in its connect timeout and reports a timeout), and the
body that `read` collects (`max_body_bytes`, then `UpstreamTooLarge`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from serving.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout, UpstreamTooLarge
from serving.h1 import MAX_BODY_BYTES, POOL_TIMEOUT, H1Pool, H1Response
from serving.types import ErrorInfo, Timeouts

logger = logging.getLogger(__name__)

_RETRYABLE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class UpstreamResponse:
    """A response whose body has not been read yet. Use as an async context manager."""

    def __init__(self, resp: aiohttp.ClientResponse, base_url: str, limit: int) -> None:
        self._resp = resp
        self._base_url = base_url
        self._limit = limit
        self.status = resp.status
        self.headers: Sequence[tuple[bytes, bytes]] = resp.raw_headers
        self.on_close: Callable[[], None] | None = None

    @property
    def content_type(self) -> str:
        return self._resp.content_type

    def _release(self) -> None:
        self._resp.release()

    async def read(self) -> bytes:
        """The whole body; `UpstreamTooLarge` past the limit."""
        limit = self._limit
        length = self._resp.content_length
        if length is not None and length > limit:
            raise self._too_large()
        parts: list[bytes] = []
        size = 0
        try:
            async for data in self._resp.content.iter_any():
                size += len(data)
                if size > limit:
                    raise self._too_large()
                parts.append(data)
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream read timed out", base_url=self._base_url) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectError(
                f"upstream closed the connection: {exc.__class__.__name__}",
                base_url=self._base_url,
            ) from exc
        return b"".join(parts)

    def _too_large(self) -> UpstreamTooLarge:
        return UpstreamTooLarge(
            f"the response body exceeds {self._limit} bytes",
            base_url=self._base_url,
            limit=self._limit,
        )

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Bytes as they arrive from the socket."""
        try:
            async for data in self._resp.content.iter_any():
                yield data
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream read timed out", base_url=self._base_url) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectError(
                f"upstream closed the stream: {exc.__class__.__name__}", base_url=self._base_url
            ) from exc

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback()


class LeanResponse(UpstreamResponse):
    """The same interface over the lean HTTP/1.1 client's response (serving/h1.py)."""

    def __init__(self, resp: H1Response, base_url: str) -> None:
        self._h1 = resp
        self._base_url = base_url
        self.status = resp.status
        self.headers = resp.headers
        self.on_close = None

    @property
    def content_type(self) -> str:
        return self._h1.content_type

    def _release(self) -> None:
        self._h1.release()

    def read(self) -> Coroutine[Any, Any, bytes]:
        return self._h1.read()  # the lean client's own coroutine: no wrapper per request

    def iter_chunks(self) -> AsyncIterator[bytes]:
        return self._h1.iter_chunks()  # and no wrapper per chunk


class Upstream:
    """A pooled client for one base URL (for example ``http://vllm:8000/v1``)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeouts: Timeouts,
        max_connections: int,
        pool_timeout: float = POOL_TIMEOUT,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts
        self.pool_timeout = pool_timeout
        self.max_body_bytes = max_body_bytes
        # the request path's client: the lean HTTP/1.1 client for http, aiohttp for https
        self._h1 = (
            H1Pool(
                self.base_url,
                max_idle=max_connections,
                max_connections=max_connections,
                pool_timeout=pool_timeout,
                max_body_bytes=max_body_bytes,
            )
            if self.base_url.startswith("http://")
            else None
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=max_connections, limit_per_host=max_connections, keepalive_timeout=60
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=self._client_timeout(timeouts),
        )

    def _client_timeout(self, timeouts: Timeouts) -> aiohttp.ClientTimeout:
        """aiohttp's `connect` covers the wait for a pooled connection and the connect itself."""
        return aiohttp.ClientTimeout(
            total=None,
            connect=self.pool_timeout + timeouts.connect,
            sock_connect=timeouts.connect,
            sock_read=timeouts.read,
        )

    async def post(
        self,
        path: str,
        body: bytes,
        headers: Mapping[str, str] | list[tuple[str, str]],
        *,
        timeouts: Timeouts | None = None,
    ) -> UpstreamResponse:
        """POST and return once the status line and headers arrived.

        A connection that the server closed while idle in the pool is retried once: nothing of
        that request reached the model server, and nothing has been sent to the client.
        """
        if self._h1 is not None:
            t = timeouts or self.timeouts
            pairs = list(headers.items()) if isinstance(headers, Mapping) else headers
            lean = await self._h1.request(
                b"POST", path, pairs, body, connect_timeout=t.connect, read_timeout=t.read
            )
            return LeanResponse(lean, self.base_url)
        url = self.base_url + path
        timeout = None
        if timeouts is not None and timeouts != self.timeouts:
            timeout = self._client_timeout(timeouts)
        for attempt in (0, 1):
            try:
                if timeout is None:
                    resp = await self._session.post(url, data=body, headers=headers)
                else:
                    resp = await self._session.post(
                        url, data=body, headers=headers, timeout=timeout
                    )
                return UpstreamResponse(resp, self.base_url, self.max_body_bytes)
            except _RETRYABLE as exc:
                if attempt == 0 and not isinstance(exc, aiohttp.ClientConnectorError):
                    logger.debug("retrying %s after a stale pooled connection", url)
                    continue
                raise UpstreamConnectError(
                    f"cannot reach upstream {self.base_url}: {exc.__class__.__name__}",
                    base_url=self.base_url,
                ) from exc
            except TimeoutError as exc:
                raise UpstreamTimeout(
                    f"upstream {self.base_url} timed out", base_url=self.base_url
                ) from exc
            except aiohttp.ClientError as exc:
                raise UpstreamConnectError(
                    f"cannot reach upstream {self.base_url}: {exc.__class__.__name__}",
                    base_url=self.base_url,
                ) from exc
        raise UpstreamError("unreachable", base_url=self.base_url)  # pragma: no cover

    async def get_json(self, path: str, headers: Mapping[str, str] | None = None) -> object:
        try:
            async with self._session.get(self.base_url + path, headers=headers) as resp:
                resp.raise_for_status()
                return orjson.loads(await resp.read())
        except (aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise UpstreamConnectError(
                f"GET {path} on {self.base_url} failed: {exc.__class__.__name__}",
                base_url=self.base_url,
            ) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"GET {path} timed out", base_url=self.base_url) from exc

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        limit: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """A small admin call (LoRA load/unload, probes): status and body."""
        try:
            async with self._session.request(
                method,
                self.base_url + path,
                data=None if json is None else orjson.dumps(json),
                # the session skips automatic headers (the proxy forwards the client's own)
                headers={"Content-Type": "application/json", **(headers or {})},
                timeout=aiohttp.ClientTimeout(total=limit),
            ) as resp:
                return resp.status, await resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{method} {path} timed out", base_url=self.base_url) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectError(
                f"{method} {path} on {self.base_url} failed: {exc.__class__.__name__}",
                base_url=self.base_url,
            ) from exc

    async def close(self) -> None:
        if self._h1 is not None:
            self._h1.close()
        await self._session.close()


class UpstreamPool:
    """The gateway's upstream clients, one per base URL, created when a config names them."""

    def __init__(
        self,
        *,
        timeouts: Timeouts,
        max_connections: int,
        pool_timeout: float = POOL_TIMEOUT,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._timeouts = timeouts
        self._max_connections = max_connections
        self._pool_timeout = pool_timeout
        self._max_body_bytes = max_body_bytes
        self._clients: dict[str, Upstream] = {}

    def get(self, base_url: str) -> Upstream:
        """The client for `base_url`, created on first use (call at config time)."""
        key = base_url.rstrip("/")
        client = self._clients.get(key)
        if client is None:
            client = Upstream(
                key,
                timeouts=self._timeouts,
                max_connections=self._max_connections,
                pool_timeout=self._pool_timeout,
                max_body_bytes=self._max_body_bytes,
            )
            self._clients[key] = client
        return client

    def __contains__(self, base_url: str) -> bool:
        return base_url.rstrip("/") in self._clients

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def parse_error_body(body: bytes) -> ErrorInfo | None:
    """Read an error from any of the shapes a vLLM server or a proxy in front of it returns:
    nested ``{"error": {...}}`` (vLLM >= 0.10.1), flat ``{"object": "error", ...}`` (older),
    ``{"error": "Unauthorized"}`` and FastAPI's ``{"detail": ...}``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    if isinstance(err, dict):
        return ErrorInfo(str(err.get("message", "")), _opt_str(err.get("type")), err.get("code"))
    if isinstance(err, str):
        return ErrorInfo(err, None, None)
    if data.get("object") == "error":
        return ErrorInfo(str(data.get("message", "")), _opt_str(data.get("type")), data.get("code"))
    if "detail" in data:
        return ErrorInfo(str(data["detail"]), None, None)
    return None


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)

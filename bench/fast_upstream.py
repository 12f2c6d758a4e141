"""A minimal, fast, vLLM-shaped model server for benchmarks: never the bottleneck.

An `asyncio.Protocol` with the httptools parser (uvloop when importable), HTTP/1.1 keep-alive
and pipelining. It answers

- ``POST /v1/chat/completions`` (and ``/v1/completions``) with a canned chat completion that
  echoes the request's ``model`` and carries ``usage``; with ``"stream": true`` in the body, a
  ``text/event-stream`` in chunked transfer encoding: N ``chat.completion.chunk`` events, a
  usage-only chunk (``"choices": []``) when the body asked ``stream_options.include_usage``,
  then ``data: [DONE]``. Every content chunk carries ``"bench_sent_ns"``, the server's
  ``time.monotonic_ns()`` when the chunk was written, so a client on the same machine can
  measure each chunk's delivery latency;
- ``GET /health`` with 200, ``GET /v1/models`` with a model list.

N and the pause between chunks default to ``--chunks`` / ``--chunk-delay-ms`` and can be set per
request with the headers ``X-Bench-Chunks`` and ``X-Bench-Chunk-Delay-Ms``.

Run: ``python -m bench.fast_upstream --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, cast

import httptools
import orjson

CREATED = 1_700_000_000
PROMPT_TOKENS = 12
_CONTENT = "Sure. Open Settings, choose Security, then Reset password and follow the e-mail link."
_COMPLETION_TOKENS = 28
MAX_CHUNKS = 100_000


@dataclass(slots=True)
class _Request:
    method: bytes
    url: bytes
    body: bytes
    keep_alive: bool
    chunks: int | None
    delay_ms: float | None


class _Canned:
    """Pre-rendered responses, per model name (the server echoes the request's model)."""

    def __init__(self) -> None:
        self._completion: dict[str, bytes] = {}
        self._chunk_parts: dict[str, tuple[bytes, bytes, bytes, bytes]] = {}

    def completion(self, model: str, keep_alive: bool) -> bytes:
        key = model if keep_alive else "\x00" + model
        cached = self._completion.get(key)
        if cached is None:
            body = orjson.dumps(
                {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": _CONTENT, "tool_calls": []},
                            "logprobs": None,
                            "finish_reason": "stop",
                            "stop_reason": None,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": PROMPT_TOKENS,
                        "total_tokens": PROMPT_TOKENS + _COMPLETION_TOKENS,
                        "completion_tokens": _COMPLETION_TOKENS,
                    },
                    "prompt_logprobs": None,
                }
            )
            cached = _head(200, b"application/json", len(body), keep_alive) + body
            if len(self._completion) < 1000:
                self._completion[key] = cached
        return cached

    def chunk_parts(self, model: str) -> tuple[bytes, bytes, bytes, bytes]:
        """(prefix, first suffix, middle suffix, last suffix): prefix + ns + suffix is one event."""
        parts = self._chunk_parts.get(model)
        if parts is None:
            head = (
                b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":'
                + str(CREATED).encode()
                + b',"model":'
                + orjson.dumps(model)
                + b',"bench_sent_ns":'
            )

            def tail(delta: dict[str, str], finish: str | None) -> bytes:
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return b',"choices":[' + orjson.dumps(choice) + b"]}\n\n"

            parts = (
                head,
                tail({"role": "assistant", "content": "tok"}, None),
                tail({"content": " tok"}, None),
                tail({"content": "."}, "stop"),
            )
            if len(self._chunk_parts) < 1000:
                self._chunk_parts[model] = parts
        return parts


def _head(status: int, ctype: bytes, length: int, keep_alive: bool) -> bytes:
    reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
        status,
        reason.get(status, b"Error"),
        ctype,
        length,
        b"" if keep_alive else b"Connection: close\r\n",
    )


def _simple(
    status: int, body: bytes, keep_alive: bool, ctype: bytes = b"application/json"
) -> bytes:
    return _head(status, ctype, len(body), keep_alive) + body


def _error(status: int, message: str, keep_alive: bool) -> bytes:
    body = orjson.dumps(
        {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}
    )
    return _simple(status, body, keep_alive)


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)
_MODELS = orjson.dumps(
    {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": CREATED, "owned_by": "bench"}
            for name in ("base", "lora")
        ],
    }
)
_COMPLETION_PATHS = frozenset((b"/v1/chat/completions", b"/v1/completions"))


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Connection(asyncio.Protocol):
    def __init__(self, server: FastUpstream) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        self._chunks: int | None = None
        self._delay_ms: float | None = None
        self._streaming = False
        self._pending: collections.deque[_Request] = collections.deque()
        self._closed = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(_error(400, "malformed HTTP request", False))
            self._close()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._chunks = None
        self._delay_ms = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) > 8 and name[:8].lower() == b"x-bench-":
            key = name.lower()
            with contextlib.suppress(ValueError):
                if key == b"x-bench-chunks":
                    self._chunks = max(0, min(MAX_CHUNKS, int(value)))
                elif key == b"x-bench-chunk-delay-ms":
                    self._delay_ms = max(0.0, float(value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = _Request(
            self._parser.get_method(),
            self._url,
            body,
            self._parser.should_keep_alive(),
            self._chunks,
            self._delay_ms,
        )
        if self._streaming:
            self._pending.append(request)
        else:
            self._handle(request)

    # -- responses ---------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _handle(self, req: _Request) -> None:
        path = req.url.split(b"?", 1)[0]
        ka = req.keep_alive
        if path in _COMPLETION_PATHS:
            if req.method != b"POST":
                self._write(_error(405, "use POST", ka))
            else:
                self._completion(req)
                return
        elif path == b"/health":
            self._write(_simple(200, b"", ka))
        elif path == b"/v1/models":
            self._write(_simple(200, _MODELS, ka))
        else:
            self._write(_error(404, f"no route {path.decode('latin-1')}", ka))
        if not ka:
            self._close()

    def _completion(self, req: _Request) -> None:
        ka = req.keep_alive
        try:
            data = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            data = None
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(model, str):
            self._write(_error(400, "the body must be a JSON object with a model", ka))
            if not ka:
                self._close()
            return
        if data.get("stream") is True:
            opts = data.get("stream_options")
            usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            self._streaming = True
            if self._transport is not None:
                self._transport.pause_reading()
            asyncio.get_running_loop().create_task(self._stream(req, model, usage))
            return
        self._write(self._server.canned.completion(model, ka))
        if not ka:
            self._close()

    async def _stream(self, req: _Request, model: str, usage: bool) -> None:
        server = self._server
        n = req.chunks if req.chunks is not None else server.chunks
        delay = (req.delay_ms if req.delay_ms is not None else server.delay_ms) / 1000.0
        head, first, middle, last = server.canned.chunk_parts(model)
        ns = time.monotonic_ns
        try:
            self._write(_STREAM_HEAD)
            for i in range(n):
                if self._closed:
                    return
                suffix = first if i == 0 else (last if i == n - 1 else middle)
                self._write(_http_chunk(head + str(ns()).encode() + suffix))
                # Yield between chunks (each is its own write, as from a real token loop).
                await asyncio.sleep(delay)
            tail = b""
            if usage:
                final = {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion.chunk",
                    "created": CREATED,
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": PROMPT_TOKENS,
                        "total_tokens": PROMPT_TOKENS + n,
                        "completion_tokens": n,
                    },
                }
                tail = _http_chunk(b"data: " + orjson.dumps(final) + b"\n\n")
            self._write(tail + _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            if not req.keep_alive:
                self._close()
                return
        finally:
            self._streaming = False
        if self._transport is not None:
            self._transport.resume_reading()
        while self._pending and not self._streaming and not self._closed:
            self._handle(self._pending.popleft())


class FastUpstream:
    """Server state shared by the connections."""

    def __init__(self, chunks: int = 50, delay_ms: float = 0.0) -> None:
        self.chunks = chunks
        self.delay_ms = delay_ms
        self.canned = _Canned()

    def protocol(self) -> _Connection:
        return _Connection(self)

    async def serve(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self.protocol, host, port, backlog=4096, reuse_address=True
        )
        print(f"fast upstream listening on http://{host}:{port}", flush=True)
        async with server:
            await server.serve_forever()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop when it is importable, else on the default asyncio loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a gateway dependency
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fast_upstream", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--chunks", type=int, default=50, help="content chunks per stream")
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=0.0, help="pause between stream chunks"
    )
    args = parser.parse_args(argv)
    upstream = FastUpstream(chunks=args.chunks, delay_ms=args.chunk_delay_ms)
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(upstream.serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())

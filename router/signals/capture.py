"""Opt-in capture of sampled requests and responses for the data flywheel (docs/flywheel.md).

The request path only decides whether to capture (one random draw against the experiment's
``capture.rate``) and keeps the raw request and response bytes of the chosen requests. Everything
else happens here, in a background task: the prompt and completion are extracted, redacted, and
stored in Redis with one Lua script that keeps the newest ``max_items`` per experiment and copies
any feedback the request already received. Feedback that arrives later is attached by the
feedback script (router/signals/lua.py). Nothing is captured, stored or logged when capture is off.

Two keys per experiment, tagged like the rest of its state (router/keys.py `capture` and
`captures`): a hash per captured request (``item`` JSON and ``fb:<signal>`` per feedback,
expiring after ``retention_days``) and the list of captured request ids, newest first, trimmed
to ``max_items``, expiring with its newest item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import RedisError

from router import keys
from router.signals.redact import Redactor

logger = logging.getLogger(__name__)

__all__ = ["CaptureWriter", "RawCapture", "extract_exchange", "read_captures"]

# ARGV: experiment, request id, item JSON, max items, TTL seconds.
CAPTURE = (
    keys.LUA_KEYS
    + """
local tag = exp_tag(ARGV[1])
local rid = ARGV[2]
local ttl = tonumber(ARGV[5])
local ckey = capture_key(tag, rid)
if redis.call('EXISTS', ckey) == 1 then return 0 end
redis.call('HSET', ckey, 'item', ARGV[3])
for _, signal in ipairs(redis.call('SMEMBERS', feedback_key(tag, rid))) do
  redis.call('HSET', ckey, 'fb:' .. signal, 1)
end
redis.call('EXPIRE', ckey, ttl)
local list = captures_key(tag)
redis.call('LPUSH', list, rid)
-- the list lives as long as its newest item (and goes with the experiment's other keys)
if redis.call('TTL', list) < ttl then redis.call('EXPIRE', list, ttl) end
local max = tonumber(ARGV[4])
-- at most 100 evictions per capture, so that lowering max_items never blocks Redis for long;
-- the list converges to the cap as new captures arrive
local evicted = 0
while evicted < 100 and redis.call('LLEN', list) > max do
  local old = redis.call('RPOP', list)
  redis.call('DEL', capture_key(tag, old))
  evicted = evicted + 1
end
return 1
"""
)


#: Exchanges (request plus response bytes) above this are not captured: redaction and storage
#: stay cheap, and one huge prompt cannot hold the writer up.
MAX_ITEM_BYTES = 512 * 1024
#: Bytes waiting for the writer, at most; beyond, captures are dropped (Redis away).
MAX_QUEUED_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RawCapture:
    """What the request path hands over: bytes as they were, parsed later off the hot path."""

    request_id: str
    ts: float
    experiment: str
    route: str
    arm: str
    model: str
    request: bytes
    response: bytes
    stream: bool
    redactor: Redactor
    max_items: int
    ttl_seconds: int


def _sse_text(body: bytes) -> str:
    parts: list[str] = []
    for line in body.split(b"\n"):
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        try:
            event = orjson.loads(line[6:])
        except orjson.JSONDecodeError:
            continue
        for choice in event.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(piece, str):
                parts.append(piece)
    return "".join(parts)


def _content_text(content: object) -> str:
    """A message's text: the string, or its text parts joined (images and audio dropped)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def extract_exchange(request: bytes, response: bytes, stream: bool) -> tuple[Any, str] | None:
    """``(input, output)``: the request's messages (or prompt) and the first choice's text;
    ``None`` when either cannot be read (nothing is stored then)."""
    try:
        body = orjson.loads(request)
    except orjson.JSONDecodeError:
        return None
    if isinstance(body.get("messages"), list):
        messages = [
            {"role": str(m.get("role", "user")), "content": text}
            for m in body["messages"]
            if isinstance(m, dict) and (text := _content_text(m.get("content")))
        ]
        if not messages:
            return None
        prompt: Any = messages
    elif isinstance(body.get("prompt"), str):
        prompt = body["prompt"]
    else:
        return None
    if stream:
        return prompt, _sse_text(response)
    try:
        payload = orjson.loads(response)
        choice = payload["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    return (prompt, text) if isinstance(text, str) else None


def _redacted(prompt: Any, redact: Redactor) -> Any:
    if isinstance(prompt, str):
        return redact(prompt)
    return [{"role": m["role"], "content": redact(m["content"])} for m in prompt]


class CaptureWriter:
    """A bounded queue drained by one background task; full means the capture is dropped."""

    def __init__(
        self,
        redis: aioredis.Redis,
        registry: CollectorRegistry,
        capacity: int = 1000,
        max_item_bytes: int = MAX_ITEM_BYTES,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self._redis = redis
        self._queue: asyncio.Queue[RawCapture] = asyncio.Queue(capacity)
        self.max_item_bytes = max_item_bytes
        self.max_queued_bytes = max_queued_bytes
        self._queued_bytes = 0
        self._script = redis.register_script(CAPTURE)
        self._task: asyncio.Task[None] | None = None
        self.results = Counter(
            "abgate_captures_total",
            "Sampled requests handled by the flywheel capture, by result "
            "(stored, dropped, too_large, unreadable, failed).",
            ["result"],
            registry=registry,
        )
        for result in ("stored", "dropped", "too_large", "unreadable", "failed"):
            self.results.labels(result)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="abgate-capture")

    def _accepts(self, size: int) -> bool:
        """Whether an exchange of ``size`` bytes may be captured (counted when it may not)."""
        if size > self.max_item_bytes:
            self.results.labels("too_large").inc()
            return False
        if self._queued_bytes + size > self.max_queued_bytes or self._queue.full():
            self.results.labels("dropped").inc()
            return False
        return True

    def submit(self, item: RawCapture) -> None:
        size = len(item.request) + len(item.response)
        if not self._accepts(size):
            return
        self._queued_bytes += size
        self._queue.put_nowait(item)

    async def close(self, flush_seconds: float = 2.0) -> None:
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), flush_seconds)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._store(item)
            except RedisError as exc:
                self.results.labels("failed").inc()
                logger.warning("capture of %s not stored: %s", item.request_id, exc)
            except Exception:
                self.results.labels("failed").inc()
                logger.exception("capture failed")
            finally:
                self._queued_bytes -= len(item.request) + len(item.response)
                self._queue.task_done()

    async def _store(self, item: RawCapture) -> None:
        # Extraction and redaction take up to a few hundred ms on a hostile 512 KiB exchange:
        # in a worker thread the event loop keeps its turn every GIL switch interval (about
        # 15 ms of stall instead of the whole redaction).
        doc = await asyncio.to_thread(_document, item)
        if doc is None:
            self.results.labels("unreadable").inc()
            return
        await self._script(
            args=[item.experiment, item.request_id, orjson.dumps(doc), item.max_items,
                  item.ttl_seconds],
        )  # fmt: skip
        self.results.labels("stored").inc()


def _document(item: RawCapture) -> dict[str, Any] | None:
    """The redacted item to store; None when the exchange cannot be read."""
    exchange = extract_exchange(item.request, item.response, item.stream)
    if exchange is None:
        return None
    prompt, output = exchange
    return {
        "request_id": item.request_id,
        "ts": item.ts,
        "experiment": item.experiment,
        "route": item.route,
        "arm": item.arm,
        "model": item.model,
        "input": _redacted(prompt, item.redactor),
        "output": item.redactor(output),
    }


async def read_captures(
    redis: aioredis.Redis, experiment: str, limit: int = 10_000
) -> list[dict[str, Any]]:
    """The experiment's captured items, newest first, each with ``signals``: the feedback
    signals its request received."""
    rids = await redis.lrange(keys.captures(experiment), 0, limit - 1)
    if not rids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for rid in rids:
            pipe.hgetall(keys.capture(experiment, rid.decode() if isinstance(rid, bytes) else rid))
        rows = await pipe.execute()
    out: list[dict[str, Any]] = []
    for row in rows:
        if not row or b"item" not in row:
            continue  # expired
        item = orjson.loads(row[b"item"])
        item["signals"] = sorted(k.decode()[3:] for k in row if k.startswith(b"fb:"))
        out.append(item)
    return out

"""The background event writer: per-request events into Redis without delaying any response.

The request path appends an `Event` to an in-memory buffer (O(1), no I/O). A single task drains
it in batches and runs one Lua script per batch, which for each event atomically

- sets the request index entry of the request (``<a>|<experiment>|<unit>``, `a` the arm's
  initial) with the feedback window as TTL, **only if it does not exist yet** (so a batch
  retried after a lost reply is never counted twice); a request served after its experiment
  ended (`Event.counted` false) gets only its index entry (``C|<experiment>|`` or ``T|...``,
  upper case: feedback for it is answered and not counted), and nothing below,
- appends the event to the experiment's capped event stream,
- adds it to the per-arm aggregates and to the per-minute counters (expiring after the
  retention),
- updates the unit's totals and the unit-level sums (router/signals/lua.py): a unit new to an
  arm that already holds ``ABGATE_MAX_UNITS_PER_ARM`` units is not stored (its request counts in
  the per-arm totals and their ``units_over_cap``), and
- detects an implicit `regenerated` signal (the unit repeating its last prompt in the window).

The keys are named in router/keys.py; those of one experiment share its hash tag
(docs/redis.md).

While Redis is unreachable the writer keeps the events and retries with backoff; the buffer is
bounded by ``ABGATE_EVENT_BUFFER`` events and by ``ABGATE_EVENT_BUFFER_BYTES`` of estimated
memory (`Event.size`: its strings' lengths and a constant), and only events beyond either bound
are dropped and counted in ``abgate_events_dropped_total`` (``buffer_full``,
``buffer_bytes``). Shutdown flushes what is buffered, within a time limit. The writer reports
when writes start failing and when they recover (once each, not per retry) to the `on_redis`
callback the gateway process gives it, which logs the outage once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router.metrics import GatewayMetrics
from router.signals.lua import RECORD_EVENTS

logger = logging.getLogger(__name__)


#: Memory of an `Event` in the buffer besides its strings' characters (the object, its numbers,
#: the string headers, its entry in `EventWriter.pending`), measured with tracemalloc.
EVENT_OVERHEAD_BYTES = 448
DEFAULT_BUFFER_BYTES = 128 * 1024 * 1024
DEFAULT_MAX_UNITS_PER_ARM = 1_000_000


@dataclass(slots=True)
class Event:
    """One proxied request, as recorded. Times in milliseconds; `ttft_ms` is -1 when unknown."""

    request_id: str
    ts: float
    experiment: str
    route: str
    arm: str
    unit: str
    model: str
    status: int
    error: str
    stream: bool
    latency_ms: float
    ttft_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    ttl: int  # request index TTL: the experiment's feedback window
    regen: float = 0.0  # regeneration window in seconds; 0: detection off
    fp: str = ""  # fingerprint of the normalised last user message
    counted: bool = True  # False: served after its experiment ended; only indexed (feedback)
    period: int = 0  # the experiment's period it was routed under (per-period sums)

    def size(self) -> int:
        """Estimated bytes the event holds while buffered (cheap: no serialisation)."""
        return (
            EVENT_OVERHEAD_BYTES
            + len(self.request_id)
            + len(self.experiment)
            + len(self.route)
            + len(self.arm)
            + len(self.unit)
            + len(self.model)
            + len(self.error)
            + len(self.fp)
        )

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "request_id": self.request_id,
                "ts": round(self.ts, 3),
                "experiment": self.experiment,
                "route": self.route,
                "arm": self.arm,
                "unit": self.unit,
                "model": self.model,
                "status": self.status,
                "error": self.error,
                "stream": 1 if self.stream else 0,
                "latency_ms": round(self.latency_ms, 3),
                "ttft_ms": round(self.ttft_ms, 3),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "cost_usd": self.cost_usd,
                "ttl": self.ttl,
                "regen": self.regen,
                "fp": self.fp,
                "counted": 1 if self.counted else 0,
                "period": self.period,
            }
        )


class EventWriter:
    """Buffers events and writes them to Redis in batches from one background task."""

    def __init__(
        self,
        redis: aioredis.Redis,
        metrics: GatewayMetrics,
        *,
        capacity: int,
        capacity_bytes: int = DEFAULT_BUFFER_BYTES,
        batch: int,
        stream_maxlen: int,
        minute_retention_seconds: int,
        max_units_per_arm: int = DEFAULT_MAX_UNITS_PER_ARM,
        linger_seconds: float = 0.005,
        on_redis: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._capacity = capacity
        self._capacity_bytes = capacity_bytes
        self._bytes = 0  # estimated bytes buffered (`Event.size`)
        self._batch = batch
        self._args = (stream_maxlen, minute_retention_seconds, max_units_per_arm)
        self._buffer: deque[Event] = deque()
        self.pending: dict[str, Event] = {}  # request id -> event not yet in Redis
        self.flushed = asyncio.Event()  # pulsed after every written batch
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._script = redis.register_script(RECORD_EVENTS)
        self._redis_ok = True
        self._on_redis = on_redis  # told when writes start failing (the error) and recover
        self._linger = linger_seconds

    @property
    def depth(self) -> int:
        return len(self._buffer)

    @property
    def buffered_bytes(self) -> int:
        """Estimated memory of the buffered events."""
        return self._bytes

    @property
    def redis_ok(self) -> bool:
        """False while the last write attempt failed."""
        return self._redis_ok

    def submit(self, event: Event) -> None:
        """Queue an event; never blocks. Beyond the buffer's capacity (events or bytes) the
        event is dropped."""
        if len(self._buffer) >= self._capacity:
            self._metrics.events_dropped.labels("buffer_full").inc()
            return
        size = event.size()
        if self._bytes + size > self._capacity_bytes:
            self._metrics.events_dropped.labels("buffer_bytes").inc()
            return
        self._bytes += size
        self._buffer.append(event)
        self.pending[event.request_id] = event
        if not self._wakeup.is_set():
            self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="abgate-event-writer")

    async def close(self, flush_seconds: float) -> None:
        """Stop the writer after flushing what is buffered (at most `flush_seconds`)."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), flush_seconds)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._buffer:
            logger.warning("dropping %d events at shutdown: Redis unreachable", len(self._buffer))
            self._metrics.events_dropped.labels("shutdown").inc(len(self._buffer))
            self._buffer.clear()
            self.pending.clear()
            self._bytes = 0
        self._metrics.event_queue_depth.set(0)

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                if self._linger > 0 and not self._closing and len(self._buffer) < self._batch:
                    await asyncio.sleep(self._linger)  # let a batch gather: fewer round trips
                continue
            n = min(self._batch, len(self._buffer))
            batch = [self._buffer[i] for i in range(n)]
            self._metrics.event_queue_depth.set(len(self._buffer))
            try:
                await self._script(args=[*self._args, *(e.to_json() for e in batch)])
            except RedisError as exc:
                self._metrics.redis_errors.labels("events").inc()
                if self._redis_ok:
                    self._redis_changed(exc)
                self._redis_ok = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            except Exception:
                logger.exception("event writer: unexpected error; dropping the batch")
                self._metrics.errors.labels("event_writer").inc()
                self._metrics.events_dropped.labels("error").inc(n)
            else:
                self._metrics.events_written.inc(n)
                if not self._redis_ok:
                    self._redis_changed(None)
                self._redis_ok = True
                backoff = 0.05
            for _ in range(n):
                done = self._buffer.popleft()
                self._bytes -= done.size()
                self.pending.pop(done.request_id, None)
            self._metrics.event_queue_depth.set(len(self._buffer))
            self.flushed.set()
            self.flushed.clear()

    def _redis_changed(self, exc: BaseException | None) -> None:
        """Writes started failing (`exc`) or recovered (None): one report per change."""
        if self._on_redis is not None:
            self._on_redis(exc)
        elif exc is not None:
            logger.warning("event writes failing, buffering: %s", exc)
        else:
            logger.info("event writes recovered; %d events buffered", len(self._buffer))

"""Relaying an upstream SSE stream to the client, event by event.

Only complete events are passed on, so the usage-only chunk (asked for on the client's behalf)
can be removed whole. Events are parsed only when they may hold usage or an error; an
unfinished event longer than `MAX_EVENT_BYTES` breaks the stream instead of growing in memory.

A client that stops reading is not waited for without end. uvicorn's `send` waits while the
client's socket buffer is full, and meanwhile the upstream connection stops reading once it
holds a bounded amount (serving/h1.py), so the model server is slowed down through TCP; if one
send waits `Plan.write_timeout` seconds, the relay gives up on that client, records it as
`client_closed`, and the server closes the connection.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from router.dataplane.outcome import Outcome, OutcomeKind
from router.dataplane.plan import Plan
from router.http import Receive, Send
from serving.errors import UpstreamError, UpstreamProtocolError
from serving.upstream import UpstreamResponse

#: the longest unfinished event held while waiting for its end
MAX_EVENT_BYTES = 8 * 1024 * 1024
_DONE = b"data: [DONE]\n\n"
_BROKEN = orjson.dumps(
    {
        "error": {
            "message": "the model server closed the stream",
            "type": "upstream_error",
            "param": None,
            "code": 502,
        }
    }
)


async def relay_stream(
    receive: Receive,
    send: Send,
    plan: Plan,
    resp: UpstreamResponse,
    headers: list[tuple[bytes, bytes]],
    t0: float,
    out: Outcome,
) -> None:
    """Send the 200 and relay the events; a broken stream ends with an error event."""
    out.started = True
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    disconnected = asyncio.ensure_future(receive())
    watch = _WriteWatch(plan.write_timeout)
    clock = watch.loop.time
    pending = b""
    captured = out.captured = [] if plan.capture else None
    try:
        try:
            async for data in resp.iter_chunks():
                if disconnected.done():
                    out.status = 499
                    out.fail(OutcomeKind.CLIENT_CLOSED)
                    return
                pending += data
                cut = pending.rfind(b"\n\n")
                if cut < 0:
                    if len(pending) > MAX_EVENT_BYTES:
                        pending = b""
                        raise UpstreamProtocolError("an unfinished stream event", base_url="")
                    continue
                ready, pending = pending[: cut + 2], pending[cut + 2 :]
                if out.ttft < 0:
                    out.ttft = time.perf_counter() - t0
                if captured is not None:
                    captured.append(ready)
                ready = scan_events(ready, plan.client_wants_usage, out)
                if ready:
                    watch.since = clock()
                    await send({"type": "http.response.body", "body": ready, "more_body": True})
                    watch.since = 0.0
            tail = pending
        except UpstreamError as exc:
            out.fail(OutcomeKind.STREAM_FAILURE, exc.reason)
            tail = pending + b"data: " + _BROKEN + b"\n\n" + _DONE
        watch.since = clock()
        await send({"type": "http.response.body", "body": tail})
    except asyncio.CancelledError:
        if not watch.expired():
            raise
        out.status = 499  # the client accepted nothing for `write_timeout` seconds
        out.fail(OutcomeKind.CLIENT_CLOSED)
    finally:
        watch.stop()
        disconnected.cancel()


class _WriteWatch:
    """Cancels the relay's task when one send to the client has waited `limit` seconds.

    One timer per stream, re-armed at most once per `limit`, instead of a timeout around each
    send: the relay only notes when a send starts (`since`) and ends (0.0)."""

    __slots__ = ("_fired", "_limit", "_task", "_timer", "loop", "since")

    def __init__(self, limit: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.since = 0.0  # when the send in progress started; 0.0: none in progress
        self._limit = limit
        self._task = asyncio.current_task()
        self._fired = False
        self._timer = self.loop.call_later(limit, self._check)

    def _check(self) -> None:
        since, now = self.since, self.loop.time()
        if since and now - since >= self._limit and self._task is not None:
            self._fired = True
            self._task.cancel()
            return
        self._timer = self.loop.call_at((since or now) + self._limit, self._check)

    def expired(self) -> bool:
        """Whether this watch cancelled the task; the cancellation is then taken back."""
        if self._fired and self._task is not None:
            self._task.uncancel()
        return self._fired

    def stop(self) -> None:
        self._timer.cancel()


def scan_events(ready: bytes, client_wants_usage: bool, out: Outcome) -> bytes:
    """Look at complete SSE events: note usage and errors, strip the usage-only chunk if the
    client did not ask for it. Events without usage or errors pass untouched."""
    if b'"usage"' not in ready and b'{"error"' not in ready:
        return ready
    kept: list[bytes] = []
    for event in ready.split(b"\n\n"):
        if not event:
            continue
        if event.startswith(b"data: {") and (b'"usage"' in event or b'{"error"' in event):
            try:
                obj = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                if "error" in obj:
                    out.fail(OutcomeKind.STREAM_ERROR)
                usage = obj.get("usage")
                if isinstance(usage, dict):
                    out.note_usage(usage)
                    if obj.get("choices") == [] and not client_wants_usage:
                        continue
        kept.append(event + b"\n\n")
    return b"".join(kept)

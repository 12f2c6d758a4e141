"""Relaying an upstream SSE stream to the client, event by event.

Only complete events are passed on, so the usage-only chunk (asked for on the client's behalf)
can be removed whole. Events are parsed only when they may hold usage or an error.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from router.dataplane.outcome import Outcome, OutcomeKind
from router.dataplane.plan import Plan
from router.http import Receive, Send
from serving.errors import UpstreamError
from serving.upstream import UpstreamResponse

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
    pending = b""
    captured = out.captured = [] if plan.capture else None
    try:
        async for data in resp.iter_chunks():
            if disconnected.done():
                out.status = 499
                out.fail(OutcomeKind.CLIENT_CLOSED)
                return
            pending += data
            cut = pending.rfind(b"\n\n")
            if cut < 0:
                continue
            ready, pending = pending[: cut + 2], pending[cut + 2 :]
            if out.ttft < 0:
                out.ttft = time.perf_counter() - t0
            if captured is not None:
                captured.append(ready)
            ready = scan_events(ready, plan.client_wants_usage, out)
            if ready:
                await send({"type": "http.response.body", "body": ready, "more_body": True})
    except UpstreamError as exc:
        out.fail(OutcomeKind.STREAM_FAILURE, exc.reason)
        await send(
            {"type": "http.response.body", "body": pending + b"data: " + _BROKEN + b"\n\n" + _DONE}
        )
        return
    finally:
        disconnected.cancel()
    await send({"type": "http.response.body", "body": pending})


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

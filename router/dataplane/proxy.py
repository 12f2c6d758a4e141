"""The request path: OpenAI-compatible completions proxied to the arm of the caller's unit.

A raw ASGI handler, not a FastAPI route: the framework layer was measured to cost more CPU per
request than the whole proxy (docs/performance.md). Per request it parses the body once and
decides the plan (router/dataplane/plan.py), relays the upstream response chunk by chunk
(forward.py, sse.py), and records the outcome, handing an event to the background writer
(record.py). It never awaits Redis.
"""

from __future__ import annotations

import logging
import time

from router.dataplane.forward import forward
from router.dataplane.outcome import Outcome, OutcomeKind
from router.dataplane.plan import build_plan
from router.dataplane.ports import GatewayPort
from router.dataplane.record import record
from router.errors import GatewayError
from router.http import Receive, RequestIds, Scope, Send, send_error

logger = logging.getLogger(__name__)


class Proxy:
    def __init__(self, gateway: GatewayPort) -> None:
        self._gw = gateway
        self._ids = RequestIds()
        # read once; a test double of the gateway may leave it out
        self._write_timeout = gateway.settings.client_write_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        t0 = time.perf_counter()
        rid = self._ids.next()
        rid_b = rid.encode()
        gw = self._gw
        try:
            plan = await build_plan(gw, scope, receive)
        except GatewayError as exc:
            gw.metrics.rejected.labels(exc.code or exc.type).inc()
            await send_error(send, exc, rid_b, [])
            return
        if plan.stream:
            plan.write_timeout = self._write_timeout
        extra = [(b"x-request-id", rid_b)]
        if plan.exp is not None and plan.arm is not None:
            extra.append((b"x-abgate-experiment", plan.exp.name_header))
            extra.append((b"x-abgate-arm", plan.arm.headers_arm))
        out = Outcome()
        gw.model_inflight[plan.model] += 1  # adapter drains wait for these
        if plan.exp is not None:
            gw.inflight.add(rid)  # feedback for it waits until the event is recorded
        try:
            await forward(gw, scope, receive, send, path, plan, rid, extra, t0, out)
        except Exception:
            logger.exception("unexpected error in the request path")
            gw.metrics.errors.labels("proxy").inc()
            out.status = 500
            out.fail(OutcomeKind.INTERNAL)
            if not out.started:
                await send_error(send, GatewayError("internal error"), rid_b, extra)
        finally:
            record(gw, plan, rid, t0, out)

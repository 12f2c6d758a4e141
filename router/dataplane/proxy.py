"""The request path: OpenAI-compatible completions proxied to the arm of the caller's unit.

A raw ASGI handler, not a FastAPI route: the framework layer was measured to cost more CPU per
request than the whole proxy (docs/performance.md). Per request it parses the body once, looks
the route up in the immutable routing table, hashes the unit id, rewrites `model` (and asks for
usage on streams) by byte-span edits, relays the upstream response chunk by chunk, and hands an
event to the background writer. It never awaits Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from router.dataplane import body as jsonbody
from router.dataplane.assignment import assign
from router.dataplane.body import prompt_fingerprint
from router.dataplane.routing import CompiledArm, CompiledExperiment
from router.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    UpstreamUnavailable,
)
from router.http import Receive, Scope, Send, error_body
from router.signals.events import Event
from serving.errors import UpstreamError, UpstreamTimeout
from serving.pool import ReplicaSet
from serving.types import Timeouts
from serving.upstream import UpstreamResponse, parse_error_body

if TYPE_CHECKING:
    from router.runtime.gateway import Gateway

logger = logging.getLogger(__name__)

_MODEL_KEY = frozenset((b'"model"',))
_MODEL_AND_OPTIONS = frozenset((b'"model"', b'"stream_options"'))
_HOP_BY_HOP = frozenset(
    (
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
        b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length",
        b"accept-encoding", b"x-request-id", b"expect",
    )
)  # fmt: skip
_DROP_RESPONSE = frozenset(
    (
        b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date",
        b"server", b"x-request-id", b"x-abgate-experiment", b"x-abgate-arm",
    )
)  # fmt: skip
_USAGE_ON = b'"stream_options":{"include_usage":true}'
_DONE = b"data: [DONE]\n\n"
DEFAULT_ROUTE = "_default"


@dataclass(slots=True)
class _Plan:
    """What one request will do, decided before any upstream I/O."""

    body: bytes
    stream: bool
    client_wants_usage: bool
    replicas: ReplicaSet
    timeouts: Timeouts | None
    exp: CompiledExperiment | None
    arm: CompiledArm | None
    unit: str
    route: str
    model: str
    api_key: str | None
    fingerprint: str = ""
    raw: bytes = b""  # the client's body, for a fallback to control
    capture: bool = False  # sampled for the flywheel (router/signals/capture.py)


@dataclass(slots=True)
class _Outcome:
    status: int = 0
    error: str = ""
    ttft: float = -1.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: bool = False  # the response status line was sent to the client
    captured: list[bytes] | None = None  # response bytes of a captured request


def new_request_id() -> str:
    """128 bits from the OS's CSPRNG: unguessable, so feedback cannot be forged for others."""
    return "req_" + os.urandom(16).hex()


class RequestIds:
    """`new_request_id` for the hot path: the same CSPRNG bytes, read 4 KiB at a time (one
    system call per 256 ids instead of one per request)."""

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def next(self) -> str:
        if self._pos + 16 > len(self._buf):
            self._buf, self._pos = os.urandom(4096), 0
        chunk = self._buf[self._pos : self._pos + 16]
        self._pos += 16
        return "req_" + chunk.hex()


class Proxy:
    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self._ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        t0 = time.perf_counter()
        rid = self._ids.next()
        rid_b = rid.encode()
        gw = self._gw
        try:
            plan = await self._plan(scope, receive)
        except GatewayError as exc:
            gw.metrics.rejected.labels(exc.code or exc.type).inc()
            await _send_error(send, exc, rid_b, [])
            return
        extra = [(b"x-request-id", rid_b)]
        if plan.exp is not None and plan.arm is not None:
            extra.append((b"x-abgate-experiment", plan.exp.name_header))
            extra.append((b"x-abgate-arm", plan.arm.headers_arm))
        out = _Outcome()
        gw.model_inflight[plan.model] += 1  # adapter drains wait for these
        if plan.exp is not None:
            gw.inflight.add(rid)  # feedback for it waits until the event is recorded
        try:
            await self._forward(scope, receive, send, path, plan, rid, extra, t0, out)
        except Exception:
            logger.exception("unexpected error in the request path")
            gw.metrics.errors.labels("proxy").inc()
            out.status, out.error = 500, "internal"
            if not out.started:
                await _send_error(send, GatewayError("internal error"), rid_b, extra)
        finally:
            self._record(plan, rid, t0, out)

    async def _plan(self, scope: Scope, receive: Receive) -> _Plan:
        gw = self._gw
        headers: dict[bytes, bytes] = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"")
        if not ctype.lower().startswith(b"application/json"):
            raise UnsupportedMediaType(
                "the request body must be JSON sent with Content-Type: application/json; got "
                + (repr(ctype.decode("latin-1")) if ctype else "no Content-Type")
            )
        limit = gw.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {int(declared)} bytes exceeds {limit} bytes")
        raw = await _read_body(receive, limit)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidRequest("the request body must be a JSON object")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("you must provide a model parameter (a string)", param="model")
        stream = data.get("stream") is True
        opts = data.get("stream_options")
        client_wants_usage = isinstance(opts, dict) and bool(opts.get("include_usage", True))

        table = gw.table
        exp = table.routes.get(model)
        if exp is None:
            default = table.default_upstream
            if default is None:
                raise ModelNotFound(
                    f"The model `{model}` does not exist: it is not a route alias of this "
                    "gateway and no default upstream is configured.",
                    param="model",
                )
            body = _ask_usage(raw, stream, client_wants_usage, None, "stream_options" in data)
            return _Plan(
                body, stream, client_wants_usage, gw.replicas.set_for((default.base_url,)), None,
                None, None, "", DEFAULT_ROUTE, model, default.api_key,
            )  # fmt: skip

        unit = _unit_id(exp, headers, data)
        arm = exp.arm(assign(exp, unit))
        if arm.arm == "treatment" and gw.breakers.is_open(exp.name, exp.version):
            arm = exp.control  # this replica's circuit breaker is open
        target = arm.target
        body = _ask_usage(
            raw,
            stream,
            client_wants_usage,
            arm.model_json,
            "stream_options" in data,
            exp.alias_json,
        )
        timeouts = None
        if target.connect_timeout is not None or target.read_timeout is not None:
            base = gw.pool.get(arm.urls[0]).timeouts
            timeouts = Timeouts(
                connect=target.connect_timeout or base.connect,
                read=target.read_timeout or base.read,
            )
        fingerprint = prompt_fingerprint(data) if exp.regen and unit else ""
        return _Plan(
            body, stream, client_wants_usage, gw.replicas.set_for(arm.urls), timeouts, exp, arm,
            unit or "", exp.experiment.route, target.model, target.api_key, fingerprint, raw,
            exp.capture_rate > 0 and random.random() < exp.capture_rate,
        )  # fmt: skip

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        plan: _Plan,
        rid: str,
        extra: list[tuple[bytes, bytes]],
        t0: float,
        out: _Outcome,
    ) -> None:
        fwd = _upstream_headers(scope, rid, plan.api_key)
        failure: UpstreamError | None = None
        resp: UpstreamResponse | None = None
        try:
            resp = await plan.replicas.post(
                path,
                plan.body,
                fwd,
                timeouts=plan.timeouts,
                # the default upstream answers for models it may not list: no filtering there
                model=plan.model if plan.exp is not None else None,
            )
        except UpstreamError as exc:
            failure = exc
        exp, arm = plan.exp, plan.arm
        if (
            exp is not None
            and arm is not None
            and arm.arm == "treatment"
            and exp.experiment.fallback_to_control
            and (failure is not None or (resp is not None and resp.status >= 500))
        ):
            # nothing was sent to the client yet: serve control, count a treatment error
            out.error = "fallback_" + (failure.reason if failure else f"status_{resp.status}")  # type: ignore[union-attr]
            if resp is not None:
                await resp.__aexit__(None, None, None)
            control = exp.control
            body = _ask_usage(
                plan.raw,
                plan.stream,
                plan.client_wants_usage,
                control.model_json,
                b'"stream_options"' in plan.raw,
            )
            extra.append((b"x-abgate-fallback", b"control"))
            failure, resp = None, None
            try:
                resp = await self._gw.replicas.set_for(control.urls).post(
                    path,
                    body,
                    _upstream_headers(scope, rid, control.target.api_key),
                    model=control.target.model,
                )
            except UpstreamError as exc:
                failure = exc
        if failure is not None or resp is None:
            err = failure or UpstreamError("no response", base_url="")
            status = 504 if isinstance(err, UpstreamTimeout) else 502
            out.status = status
            out.error = out.error or err.reason
            await _send_error(
                send,
                UpstreamUnavailable(
                    f"the model server for this request is unavailable ({err.reason})",
                    status=status,
                    code="upstream_timeout" if status == 504 else "upstream_unavailable",
                ),
                extra[0][1],
                extra,
            )
            return
        async with resp:
            headers = [(k.lower(), v) for k, v in resp.headers if k.lower() not in _DROP_RESPONSE]
            headers.extend(extra)
            out.status = resp.status
            if plan.stream and resp.status == 200 and resp.content_type == "text/event-stream":
                await self._relay_stream(receive, send, plan, resp, headers, t0, out)
                return
            try:
                payload = await resp.read()
            except UpstreamError as exc:
                out.status, out.error = 502, exc.reason
                await _send_error(
                    send, UpstreamUnavailable("the model server closed the response"),
                    extra[0][1], extra,
                )  # fmt: skip
                return
            if resp.status == 200:
                _read_usage(payload, out)
                if plan.capture:
                    out.captured = [payload]
            elif (resp.status >= 500 or resp.status == 404) and not out.error:
                out.error = f"status_{resp.status}"
                info = parse_error_body(payload)
                if info is not None:
                    logger.debug("upstream %s: %s", resp.status, info.message)
            headers.append((b"content-length", str(len(payload)).encode()))
            out.started = True
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})

    async def _relay_stream(
        self,
        receive: Receive,
        send: Send,
        plan: _Plan,
        resp: UpstreamResponse,
        headers: list[tuple[bytes, bytes]],
        t0: float,
        out: _Outcome,
    ) -> None:
        out.started = True
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        disconnected = asyncio.ensure_future(receive())
        pending = b""
        captured = out.captured = [] if plan.capture else None
        try:
            async for data in resp.iter_chunks():
                if disconnected.done():
                    out.status, out.error = 499, "client_closed"
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
                ready = _scan_events(ready, plan.client_wants_usage, out)
                if ready:
                    await send({"type": "http.response.body", "body": ready, "more_body": True})
        except UpstreamError as exc:
            out.error = "stream_" + exc.reason
            err = orjson.dumps(
                {"error": {"message": "the model server closed the stream", "type":
                           "upstream_error", "param": None, "code": 502}}
            )  # fmt: skip
            await send(
                {"type": "http.response.body", "body": pending + b"data: " + err + b"\n\n" + _DONE}
            )
            return
        finally:
            disconnected.cancel()
        await send({"type": "http.response.body", "body": pending})

    def _record(self, plan: _Plan, rid: str, t0: float, out: _Outcome) -> None:
        gw = self._gw
        gw.model_inflight[plan.model] -= 1
        if plan.exp is not None and plan.arm is not None and plan.arm.arm == "treatment":
            exp = plan.exp.experiment
            failed = bool(out.error) and out.error != "client_closed"
            tripped = gw.breakers.record(exp.name, exp.version, exp.circuit_breaker, failed)
            if tripped is not None:
                gw.trip(exp.name, tripped)
        elapsed = time.perf_counter() - t0
        exp_name = plan.exp.experiment.name if plan.exp is not None else ""
        arm = plan.arm.arm if plan.arm is not None else ""
        status = out.status or 500
        gw.metrics.request_counter(
            plan.route, exp_name, arm, _status_class(status, out.error)
        ).inc()
        series = gw.metrics.arm_series(plan.route, exp_name, arm)
        series.duration.observe(elapsed)
        if out.ttft >= 0:
            series.ttft.observe(out.ttft)
        cost = 0.0
        if out.prompt_tokens or out.completion_tokens:
            series.prompt_tokens.inc(out.prompt_tokens)
            series.completion_tokens.inc(out.completion_tokens)
            if plan.arm is not None:
                t = plan.arm.target
                cost = (
                    out.prompt_tokens * t.prompt_price_per_million
                    + out.completion_tokens * t.completion_price_per_million
                ) / 1e6
                if cost:
                    series.cost.inc(cost)
        if out.error:
            gw.metrics.upstream_errors.labels(plan.route, exp_name, arm, out.error).inc()
        if plan.exp is None:
            return
        if out.captured is not None and status == 200 and not out.error:
            gw.capture_request(plan.exp, arm, plan.model, rid, plan.raw, out.captured, plan.stream)
        gw.inflight.discard(rid)
        gw.writer.submit(
            Event(
                request_id=rid,
                ts=time.time(),
                experiment=exp_name,
                route=plan.route,
                arm=arm,
                unit=plan.unit,
                model=plan.model,
                status=status,
                error=out.error,
                stream=plan.stream,
                latency_ms=elapsed * 1000.0,
                ttft_ms=out.ttft * 1000.0 if out.ttft >= 0 else -1.0,
                prompt_tokens=out.prompt_tokens,
                completion_tokens=out.completion_tokens,
                cost_usd=cost,
                ttl=plan.exp.ttl,
                regen=plan.exp.regen,
                fp=plan.fingerprint,
            )
        )


def _upstream_headers(scope: Scope, rid: str, api_key: str | None) -> list[tuple[str, str]]:
    fwd = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in scope["headers"]
        if k not in _HOP_BY_HOP and not (api_key and k == b"authorization")
    ]
    fwd.append(("X-Request-Id", rid))
    if api_key:
        fwd.append(("Authorization", "Bearer " + api_key))
    return fwd


def _status_class(status: int, error: str) -> str:
    if error.startswith("stream_"):
        return "5xx"
    return f"{status // 100}xx"


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client closed the connection before sending the body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def _unit_id(
    exp: CompiledExperiment, headers: dict[bytes, bytes], data: dict[str, Any]
) -> str | None:
    for name in exp.unit_headers:
        value = headers.get(name)
        if value:
            return value.decode("latin-1")
    if exp.use_body_user:
        user = data.get("user")
        if isinstance(user, str) and user:
            return user
    return None


def _ask_usage(
    raw: bytes,
    stream: bool,
    client_wants_usage: bool,
    model_json: bytes | None,
    has_options: bool = False,
    alias: bytes | None = None,
) -> bytes:
    """Rewrite `model` (when routed to an arm) and, on streams, ask for the usage chunk.
    `has_options`: the body has a top-level `stream_options` (from the parsed body); `alias`:
    the client's `model` as a JSON string literal, for the scan-free fast path."""
    if model_json is None and (not stream or client_wants_usage):
        return raw
    # look only for the keys that are there, so the scan can stop at the last one it needs
    need_options = stream and not client_wants_usage and has_options
    quick = None if need_options or alias is None else jsonbody.model_span(raw, alias)
    if quick is not None:
        spans = {b'"model"': quick}
    else:
        spans = jsonbody.top_level_spans(raw, _MODEL_AND_OPTIONS if need_options else _MODEL_KEY)
    edits: list[tuple[int, int, bytes]] = []
    if model_json is not None:
        start, end = spans[b'"model"']
        edits.append((start, end, model_json))
    if stream and not client_wants_usage:
        span = spans.get(b'"stream_options"')
        if need_options and span is not None:
            start, end = span
            opts = orjson.loads(raw[start:end])
            opts = dict(opts) if isinstance(opts, dict) else {}
            opts["include_usage"] = True
            edits.append((start, end, orjson.dumps(opts)))
        else:
            brace = jsonbody.closing_brace(raw)
            edits.append((brace, brace, b"," + _USAGE_ON))
    return jsonbody.rewrite(raw, edits)


def _read_usage(payload: bytes, out: _Outcome) -> None:
    """The response's `usage` (vLLM puts it last): parse only that object when it is flat."""
    at = payload.rfind(b'"usage"')
    usage: object = None
    if at >= 0:
        start = payload.find(b"{", at)
        end = payload.find(b"}", start)
        if start >= 0 and end >= 0 and b"{" not in payload[start + 1 : end]:
            try:
                usage = orjson.loads(payload[start : end + 1])
            except orjson.JSONDecodeError:
                usage = None
    if usage is None:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        usage = data.get("usage") if isinstance(data, dict) else None
    if isinstance(usage, dict):
        out.prompt_tokens = _int(usage.get("prompt_tokens"))
        out.completion_tokens = _int(usage.get("completion_tokens"))


def _int(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _scan_events(ready: bytes, client_wants_usage: bool, out: _Outcome) -> bytes:
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
                    out.error = "stream_error"
                usage = obj.get("usage")
                if isinstance(usage, dict):
                    out.prompt_tokens = _int(usage.get("prompt_tokens"))
                    out.completion_tokens = _int(usage.get("completion_tokens"))
                    if obj.get("choices") == [] and not client_wants_usage:
                        continue
        kept.append(event + b"\n\n")
    return b"".join(kept)


async def _send_error(
    send: Send, exc: GatewayError, rid: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    payload = error_body(exc.message, exc.type, exc.param, exc.code, rid.decode())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *(extra or [(b"x-request-id", rid)]),
    ]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})

"""Sending a planned request to its arm's replicas and relaying the answer.

A treatment that fails before anything reached the client (no response, a 5xx, or a 404: its
model is missing on the replica, which vLLM answers "does not exist") is replaced by control
when the experiment falls back to control, with control's own target timeouts; the
request still counts as a treatment error (router/dataplane/outcome.py names the recorded
errors). With no response at all the client gets an OpenAI-shaped error: 504 after a timeout,
503 when every pooled connection to the replica stayed busy for the pool timeout, 502 otherwise
(and for a non-streamed body over the size limit).
"""

from __future__ import annotations

import logging

import orjson

from router.dataplane.body import edit_request
from router.dataplane.outcome import Outcome, OutcomeKind
from router.dataplane.plan import Plan, arm_timeouts
from router.dataplane.ports import GatewayPort
from router.dataplane.routing import CompiledExperiment
from router.dataplane.sse import relay_stream
from router.errors import UpstreamUnavailable
from router.http import Receive, Scope, Send, send_error
from serving.errors import (
    UpstreamError,
    UpstreamPoolExhausted,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamTooLarge,
)
from serving.upstream import UpstreamResponse, parse_error_body

logger = logging.getLogger(__name__)

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


async def forward(
    gw: GatewayPort,
    scope: Scope,
    receive: Receive,
    send: Send,
    path: str,
    plan: Plan,
    rid: str,
    extra: list[tuple[bytes, bytes]],
    t0: float,
    out: Outcome,
) -> None:
    """Answer the client from the plan's replicas (or control's, on a fallback); `extra` are
    the gateway's own response headers, X-Request-Id first."""
    failure: UpstreamError | None = None
    resp: UpstreamResponse | None = None
    try:
        resp = await plan.replicas.post(
            path,
            plan.body,
            upstream_headers(scope, rid, plan.api_key),
            timeouts=plan.timeouts,
            # the default upstream answers for models it may not list: no filtering there
            model=plan.model if plan.exp is not None else None,
        )
    except UpstreamError as exc:
        failure = exc
    exp = plan.exp
    if exp is not None and _falls_back(plan, exp, resp, failure):
        resp, failure = await _fall_back(gw, scope, path, plan, exp, rid, extra, resp, failure, out)
    if failure is not None or resp is None:
        await _unavailable(send, failure, extra, out)
        return
    async with resp:
        headers = [(k.lower(), v) for k, v in resp.headers if k.lower() not in _DROP_RESPONSE]
        headers.extend(extra)
        out.status = resp.status
        if plan.stream and resp.status == 200 and resp.content_type == "text/event-stream":
            await relay_stream(receive, send, plan, resp, headers, t0, out)
        else:
            await _relay_body(send, plan, resp, headers, extra, out)


def upstream_headers(scope: Scope, rid: str, api_key: str | None) -> list[tuple[str, str]]:
    """The client's end-to-end headers, the request id, and the target's key if it has one."""
    fwd = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in scope["headers"]
        if k not in _HOP_BY_HOP and not (api_key and k == b"authorization")
    ]
    fwd.append(("X-Request-Id", rid))
    if api_key:
        fwd.append(("Authorization", "Bearer " + api_key))
    return fwd


def _falls_back(
    plan: Plan,
    exp: CompiledExperiment,
    resp: UpstreamResponse | None,
    failure: UpstreamError | None,
) -> bool:
    return (
        plan.arm is not None
        and plan.arm.arm == "treatment"
        and exp.experiment.fallback_to_control
        and (
            failure is not None or (resp is not None and (resp.status >= 500 or resp.status == 404))
        )
    )


async def _fall_back(
    gw: GatewayPort,
    scope: Scope,
    path: str,
    plan: Plan,
    exp: CompiledExperiment,
    rid: str,
    extra: list[tuple[bytes, bytes]],
    resp: UpstreamResponse | None,
    failure: UpstreamError | None,
    out: Outcome,
) -> tuple[UpstreamResponse | None, UpstreamError | None]:
    """Nothing was sent to the client yet: serve control, count a treatment error."""
    if failure is not None:
        out.fail(OutcomeKind.FALLBACK_FAILURE, failure.reason)
    elif resp is not None:
        out.fail(OutcomeKind.FALLBACK_STATUS, str(resp.status))
        await resp.__aexit__(None, None, None)
    control = exp.control
    body = edit_request(
        plan.members,
        stream=plan.stream,
        client_wants_usage=plan.client_wants_usage,
        model_json=control.model_json,
        has_options=plan.has_options,
    )
    extra.append((b"x-abgate-fallback", b"control"))
    try:
        resp = await gw.replicas.set_for(control.urls).post(
            path,
            body,
            upstream_headers(scope, rid, control.target.api_key),
            timeouts=arm_timeouts(gw, control),
            model=control.target.model,
        )
    except UpstreamError as exc:
        return None, exc
    return resp, None


async def _unavailable(
    send: Send, failure: UpstreamError | None, extra: list[tuple[bytes, bytes]], out: Outcome
) -> None:
    """No response from any replica: 504 after a timeout, 503 with the pool exhausted, 502
    otherwise."""
    err = failure or UpstreamError("no response", base_url="")
    error = _client_error(err)
    out.status = error.status
    if not out.failed:  # a fallback keeps its own error
        out.fail(OutcomeKind.UPSTREAM_FAILURE, err.reason)
    await send_error(send, error, extra[0][1], extra)


def _client_error(err: UpstreamError) -> UpstreamUnavailable:
    """What the client is told about a failed upstream (never the replica's address)."""
    if isinstance(err, UpstreamTimeout):
        return UpstreamUnavailable(
            f"the model server for this request is unavailable ({err.reason})",
            status=504,
            code="upstream_timeout",
        )
    if isinstance(err, UpstreamPoolExhausted):
        return UpstreamUnavailable(
            f"the model server for this request is busy: all {err.connections} connections "
            f"of this gateway to it stayed in use for {err.waited:g} s; retry later",
            status=503,
            code="upstream_pool_exhausted",
        )
    if isinstance(err, UpstreamProtocolError):  # its message names no address
        return UpstreamUnavailable(f"the model server's response was refused: {err}")
    if isinstance(err, UpstreamTooLarge):
        return UpstreamUnavailable(
            f"the model server's response is larger than this gateway's limit of {err.limit} "
            "bytes (ABGATE_UPSTREAM_MAX_RESPONSE_BYTES)",
            code="upstream_response_too_large",
        )
    return UpstreamUnavailable(f"the model server for this request is unavailable ({err.reason})")


async def _relay_body(
    send: Send,
    plan: Plan,
    resp: UpstreamResponse,
    headers: list[tuple[bytes, bytes]],
    extra: list[tuple[bytes, bytes]],
    out: Outcome,
) -> None:
    """Read the whole response, note its usage or error, and pass it on."""
    try:
        payload = await resp.read()
    except UpstreamError as exc:
        out.status = 502
        out.fail(OutcomeKind.UPSTREAM_FAILURE, exc.reason)
        error = (
            _client_error(exc)
            if isinstance(exc, UpstreamTooLarge | UpstreamProtocolError)
            else UpstreamUnavailable("the model server closed the response")
        )
        await send_error(send, error, extra[0][1], extra)
        return
    if resp.status == 200:
        read_usage(payload, out)
        if plan.capture:
            out.captured = [payload]
    elif (resp.status >= 500 or resp.status == 404) and not out.failed:
        out.fail(OutcomeKind.UPSTREAM_STATUS, str(resp.status))
        info = parse_error_body(payload)
        if info is not None:
            logger.debug("upstream %s: %s", resp.status, info.message)
    headers.append((b"content-length", str(len(payload)).encode()))
    out.started = True
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def read_usage(payload: bytes, out: Outcome) -> None:
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
    out.note_usage(usage)

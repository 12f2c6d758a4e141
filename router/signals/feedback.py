"""`POST /v1/feedback`: outcome signals attributed to the experiment, arm and unit of a request.

The application sends the `X-Request-Id` it received with an answer; the gateway looks up the
request index (written by the event writer), checks the signal against the experiment, and runs
one Lua script that counts each (request id, signal) pair once and updates the per-arm and
unit-level aggregates (router/signals/lua.py). Single form: one object, answered 202 (accepted), 200
(duplicate), 404 (unknown or expired request id) or 422 (bad signal or value). Batch form: a
list of up to 1,000 objects, answered 200 with one result per item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from redis.exceptions import RedisError

from analysis.types import BUILTIN_SIGNALS
from router.dataplane.proxy import new_request_id
from router.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    StoreUnavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from router.runtime.gateway import Gateway
from router.signals.lua import FEEDBACK

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_ABS_VALUE = 1e12
PENDING_WAIT_SECONDS = 2.0
_RID = re.compile(r"^req_[0-9a-f]{32}$")
_FIELDS = frozenset({"request_id", "signal", "value"})


@dataclass(slots=True)
class _Item:
    request_id: str
    signal: str
    value: float


def _parse_item(raw: object) -> _Item:
    if not isinstance(raw, dict):
        raise Unprocessable("each feedback item must be a JSON object")
    extra = set(raw) - _FIELDS
    if extra:
        raise Unprocessable(f"unknown field(s): {', '.join(sorted(extra))}", param=min(extra))
    rid = raw.get("request_id")
    if not isinstance(rid, str) or not _RID.match(rid):
        raise Unprocessable(
            "request_id must be the X-Request-Id the gateway returned (req_ and 32 hex digits)",
            param="request_id",
        )
    signal = raw.get("signal")
    if not isinstance(signal, str) or not signal:
        raise Unprocessable("signal must be a non-empty string", param="signal")
    value = raw.get("value", 1)
    if value is None:
        value = 1
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unprocessable("value must be a number", param="value")
    if not math.isfinite(value) or abs(value) > MAX_ABS_VALUE:
        raise Unprocessable(
            f"value must be finite and at most {MAX_ABS_VALUE:g} in size", param="value"
        )
    return _Item(rid, signal, float(value))


class FeedbackService:
    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self._script = gateway.redis.register_script(FEEDBACK)

    async def record(self, raws: list[object]) -> list[tuple[int, dict[str, Any]]]:
        """(status, body) for each item, in order."""
        gw = self._gw
        results: list[tuple[int, dict[str, Any]] | None] = [None] * len(raws)
        items: dict[int, _Item] = {}
        for i, raw in enumerate(raws):
            try:
                item = _parse_item(raw)
            except GatewayError as exc:
                results[i] = _error(exc)
                continue
            items[i] = item
        indexes = await self._indexes({i: it.request_id for i, it in items.items()})
        calls: list[tuple[int, _Item, str, str, str]] = []
        now = time.time()
        table = gw.table
        for i, item in items.items():
            index = indexes.get(i)
            if index is None:
                results[i] = _error(
                    NotFound(
                        f"unknown or expired request id {item.request_id!r}",
                        param="request_id",
                    )
                )
                continue
            code, exp_name, unit = index
            arm = "treatment" if code == "t" else "control"
            exp = table.experiments.get(exp_name)
            if exp is None:
                results[i] = _error(
                    NotFound(f"the experiment {exp_name!r} of this request no longer exists")
                )
                continue
            if item.signal not in BUILTIN_SIGNALS and item.signal not in exp.signals:
                allowed = ", ".join([*BUILTIN_SIGNALS, *exp.signals])
                results[i] = _error(
                    Unprocessable(
                        f"unknown signal {item.signal!r} for experiment {exp_name!r}; "
                        f"accepted: {allowed}",
                        param="signal",
                    )
                )
                continue
            calls.append((i, item, exp_name, arm, unit))
        if calls:
            ttl_default = gw.settings.feedback_window_seconds
            keep = gw.settings.minute_retention_seconds
            minute = int(now // 60)
            try:
                async with gw.redis.pipeline(transaction=False) as pipe:
                    for _, item, exp_name, arm, unit in calls:
                        exp = table.experiments[exp_name]
                        ttl = exp.feedback_window_seconds or ttl_default
                        await self._script(
                            args=[exp_name, item.request_id, arm, unit, item.signal, item.value,
                                  ttl, minute, keep],
                            client=pipe,
                        )  # fmt: skip
                    outcomes = await pipe.execute()
            except RedisError as exc:
                gw.metrics.redis_errors.labels("feedback").inc()
                raise StoreUnavailable(
                    "Redis is unreachable: the feedback was not recorded; retry later"
                ) from exc
            for (i, item, exp_name, arm, _), fresh in zip(calls, outcomes, strict=True):
                body = {"request_id": item.request_id, "signal": item.signal, "arm": arm,
                        "experiment": exp_name}  # fmt: skip
                if fresh:
                    route = table.experiments[exp_name].route
                    gw.metrics.feedback.labels(route, exp_name, arm, item.signal).inc()
                    results[i] = (202, {**body, "result": "accepted"})
                else:
                    results[i] = (200, {**body, "result": "duplicate"})
        return [r for r in results if r is not None]

    async def _indexes(self, rids: dict[int, str]) -> dict[int, tuple[str, str, str]]:
        """Request index entries by item position; waits briefly for events still buffered.

        Whether an event is still on its way is checked *before* each read: checked after, an
        event written between the read and the check would look unknown."""
        if not rids:
            return {}
        writer, inflight = self._gw.writer, self._gw.inflight

        def on_its_way(r: str) -> bool:
            return r in writer.pending or r in inflight

        watch = {i for i, r in rids.items() if on_its_way(r)}
        found = await self._mget(rids)
        missing = {i: r for i, r in rids.items() if i not in found}
        deadline = time.monotonic() + PENDING_WAIT_SECONDS
        while True:
            retry = {i: r for i, r in missing.items() if i in watch}
            if not retry:
                return found
            if any(on_its_way(r) for r in retry.values()):
                if time.monotonic() > deadline:
                    raise StoreUnavailable(
                        "this request is not recorded yet (Redis is unreachable); retry later"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(writer.flushed.wait(), 0.2)
            watch = {i for i, r in retry.items() if on_its_way(r)}
            found |= await self._mget(retry)
            missing = {i: r for i, r in missing.items() if i not in found}

    async def _mget(self, rids: dict[int, str]) -> dict[int, tuple[str, str, str]]:
        positions = list(rids)
        try:
            values = await self._gw.redis.mget([f"abgate:req:{rids[i]}" for i in positions])
        except RedisError as exc:
            self._gw.metrics.redis_errors.labels("feedback").inc()
            raise StoreUnavailable("Redis is unreachable: the feedback was not recorded") from exc
        out: dict[int, tuple[str, str, str]] = {}
        for i, value in zip(positions, values, strict=True):
            if value is None:
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            code, _, rest = text.partition("|")
            exp_name, _, unit = rest.partition("|")
            out[i] = (code, exp_name, unit)
        return out


def _error(exc: GatewayError) -> tuple[int, dict[str, Any]]:
    return exc.status, {
        "error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
    }


def build_feedback_router(gateway: Gateway) -> APIRouter:
    service = FeedbackService(gateway)
    router = APIRouter(tags=["feedback"])
    limit = gateway.settings.max_feedback_bytes

    @router.post("/v1/feedback", status_code=202)
    async def feedback(request: Request) -> Response:
        """Report an outcome signal for a request (or a list of up to 1,000)."""
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("application/json"):
            raise UnsupportedMediaType("feedback must be sent as Content-Type: application/json")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"feedback body exceeds {limit} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise PayloadTooLarge(f"feedback body exceeds {limit} bytes")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"the feedback body is not valid JSON: {exc}") from None
        if isinstance(data, list):
            if not data:
                raise Unprocessable("the batch is empty")
            if len(data) > MAX_BATCH:
                raise PayloadTooLarge(f"a batch holds at most {MAX_BATCH} items, got {len(data)}")
            results = await service.record(data)
            batch = [{"index": i, "status": s, **b} for i, (s, b) in enumerate(results)]
            return Response(
                orjson.dumps({"results": batch}), status_code=200, media_type="application/json"
            )
        status, body = (await service.record([data]))[0]
        if status >= 400:
            error: dict[str, Any] = body["error"]
            error["request_id"] = new_request_id()
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    return router

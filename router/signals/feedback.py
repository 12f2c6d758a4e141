"""`POST /v1/feedback`: outcome signals attributed to the experiment, arm and unit of a request.

The application sends the `X-Request-Id` it received with an answer; the gateway looks up the
request index (written by the event writer), checks the signal against the experiment, and runs
one Lua script that counts each (request id, signal) pair once and updates the per-arm and
unit-level aggregates (router/signals/lua.py). Single form: one object, answered 202 (accepted), 200
(duplicate, or ignored: the request was served after its experiment ended, whose results are
final), 404 (unknown or expired request id) or 422 (bad signal or value). Batch form: a
list of up to 1,000 objects, answered 200 with one result per item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from fastapi import APIRouter, Request, Response
from redis.exceptions import RedisError

from analysis.types import BUILTIN_SIGNALS
from router import keys
from router.errors import GatewayError, NotFound, PayloadTooLarge, StoreUnavailable, Unprocessable
from router.experiments import Experiment
from router.http import JsonIntake, error_object, header_map, new_request_id
from router.metrics import GatewayMetrics
from router.signals.events import EventWriter
from router.signals.lua import FEEDBACK

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_ABS_VALUE = 1e12
PENDING_WAIT_SECONDS = 2.0
_RID = re.compile(r"^req_[0-9a-f]{32}$")
_FIELDS = frozenset({"request_id", "signal", "value"})
_INTAKE = JsonIntake(
    noun="feedback body",
    media_type_message="feedback must be sent as Content-Type: application/json",
)


class ExperimentsTable(Protocol):
    """The routing table's experiments by name (what a request id's experiment must be)."""

    @property
    def experiments(self) -> Mapping[str, Experiment]: ...


class FeedbackSettings(Protocol):
    @property
    def max_feedback_bytes(self) -> int: ...

    @property
    def feedback_window_seconds(self) -> int: ...

    @property
    def minute_retention_seconds(self) -> int: ...


class FeedbackGateway(Protocol):
    """What the feedback route reads from the gateway process object."""

    @property
    def redis(self) -> aioredis.Redis: ...

    @property
    def table(self) -> ExperimentsTable: ...

    @property
    def settings(self) -> FeedbackSettings: ...

    @property
    def metrics(self) -> GatewayMetrics: ...

    @property
    def writer(self) -> EventWriter:
        """Its `pending` events and `flushed` pulse tell whether a request is on its way."""

    @property
    def inflight(self) -> set[str]:
        """Request ids whose event is not submitted yet."""


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


@dataclass(slots=True)
class _Call:
    """One feedback item attributed to its request: the script's arguments."""

    pos: int  # the item's position in the batch
    item: _Item
    experiment: str
    arm: str
    unit: str
    counted: bool = True  # False: served after its experiment ended (answered, not counted)


def _attribute(
    pos: int, item: _Item, index: tuple[str, str, str] | None, table: ExperimentsTable
) -> _Call:
    """The experiment, arm and unit of the item's request, after checking the signal."""
    if index is None:
        raise NotFound(f"unknown or expired request id {item.request_id!r}", param="request_id")
    code, exp_name, unit = index
    exp = table.experiments.get(exp_name)
    if exp is None:
        raise NotFound(f"the experiment {exp_name!r} of this request no longer exists")
    if item.signal not in BUILTIN_SIGNALS and item.signal not in exp.signals:
        allowed = ", ".join([*BUILTIN_SIGNALS, *exp.signals])
        raise Unprocessable(
            f"unknown signal {item.signal!r} for experiment {exp_name!r}; accepted: {allowed}",
            param="signal",
        )
    arm = "treatment" if code in ("t", "T") else "control"
    return _Call(pos, item, exp_name, arm, unit, counted=code.islower())


class FeedbackService:
    def __init__(self, gateway: FeedbackGateway) -> None:
        self._gw = gateway
        self._script = gateway.redis.register_script(FEEDBACK)

    async def record(self, raws: list[object]) -> list[tuple[int, dict[str, Any]]]:
        """(status, body) for each item, in order."""
        results: list[tuple[int, dict[str, Any]] | None] = [None] * len(raws)
        items: dict[int, _Item] = {}
        for i, raw in enumerate(raws):
            try:
                items[i] = _parse_item(raw)
            except GatewayError as exc:
                results[i] = _error(exc)
        indexes = await self._indexes({i: it.request_id for i, it in items.items()})
        now = time.time()
        table = self._gw.table
        calls: list[_Call] = []
        for i, item in items.items():
            try:
                calls.append(_attribute(i, item, indexes.get(i), table))
            except GatewayError as exc:
                results[i] = _error(exc)
        for call in calls:
            if not call.counted:
                results[call.pos] = 200, {**_body(call), "result": "ignored"}
        calls = [c for c in calls if c.counted]
        if calls:
            counted = await self._count(calls, table, now)
            for call, fresh in zip(calls, counted, strict=True):
                results[call.pos] = self._answer(call, bool(fresh), table)
        return [r for r in results if r is not None]

    async def _count(self, calls: list[_Call], table: ExperimentsTable, now: float) -> list[Any]:
        """Run the feedback script for each call in one pipeline; truthy: counted now."""
        gw = self._gw
        ttl_default = gw.settings.feedback_window_seconds
        keep = gw.settings.minute_retention_seconds
        minute = int(now // 60)
        try:
            async with gw.redis.pipeline(transaction=False) as pipe:
                for call in calls:
                    item = call.item
                    ttl = table.experiments[call.experiment].feedback_window_seconds or ttl_default
                    await self._script(
                        args=[call.experiment, item.request_id, call.arm, call.unit, item.signal,
                              item.value, ttl, minute, keep],
                        client=pipe,
                    )  # fmt: skip
                return list(await pipe.execute())
        except RedisError as exc:
            gw.metrics.redis_errors.labels("feedback").inc()
            raise StoreUnavailable(
                "Redis is unreachable: the feedback was not recorded; retry later"
            ) from exc

    def _answer(
        self, call: _Call, fresh: bool, table: ExperimentsTable
    ) -> tuple[int, dict[str, Any]]:
        item = call.item
        body = _body(call)
        if not fresh:
            return 200, {**body, "result": "duplicate"}
        route = table.experiments[call.experiment].route
        self._gw.metrics.feedback.labels(route, call.experiment, call.arm, item.signal).inc()
        return 202, {**body, "result": "accepted"}

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
            values = await self._gw.redis.mget([keys.request(rids[i]) for i in positions])
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


def _body(call: _Call) -> dict[str, Any]:
    item = call.item
    return {"request_id": item.request_id, "signal": item.signal, "arm": call.arm,
            "experiment": call.experiment}  # fmt: skip


def _error(exc: GatewayError) -> tuple[int, dict[str, Any]]:
    return exc.status, error_object(exc.message, exc.type, exc.param, exc.code)


def build_feedback_router(gateway: FeedbackGateway) -> APIRouter:
    service = FeedbackService(gateway)
    router = APIRouter(tags=["feedback"])
    limit = gateway.settings.max_feedback_bytes

    @router.post("/v1/feedback", status_code=202)
    async def feedback(request: Request) -> Response:
        """Report an outcome signal for a request (or a list of up to 1,000)."""
        raw = await _INTAKE.read(header_map(request.scope["headers"]), request.receive, limit)
        data = _INTAKE.parse(raw)
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

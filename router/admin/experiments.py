"""The admin API under /admin: experiments, lifecycle actions and the audit log.

Every route needs `Authorization: Bearer $ABGATE_ADMIN_TOKEN` (compared in constant time).
Changes go through `ConfigStore.update` (one versioned document, audited, published), are
applied on this replica at once, and reach the other replicas through pub/sub and polling.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from analysis.report import Report, build_report
from analysis.types import Decision, ExperimentSnapshot
from router.control.changes import ChangeFn, apply_change
from router.control.controller import decisions_key
from router.control.evalgate import EvalRecord, check_start, load_records
from router.control.lifecycle import Action, ActionRequest, ExperimentPatch, patch, transition
from router.control.store import read_audit
from router.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    StoreUnavailable,
    Unauthorized,
    Unprocessable,
)
from router.experiments import Experiment
from router.runtime.gateway import Gateway
from router.settings import Settings
from router.signals.readmodel import read_snapshot

logger = logging.getLogger(__name__)

ExperimentName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ArmCounts(BaseModel):
    requests: int = 0
    errors: int = 0
    feedback: int = 0


class ExperimentStatus(BaseModel):
    experiment: Experiment
    arms: dict[str, ArmCounts]


class ExperimentList(BaseModel):
    version: int = Field(description="Version of the whole configuration document")
    experiments: list[ExperimentStatus]


class AuditRecord(BaseModel):
    id: str
    ts: float
    version: int
    actor: str
    action: str
    experiment: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str


class AuditList(BaseModel):
    entries: list[AuditRecord]


class Deleted(BaseModel):
    deleted: str


ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "Malformed header"),
        (401, "Missing or wrong bearer token"),
        (404, "No such experiment"),
        (409, "Conflicts with the current state"),
        (412, "If-Match names a stale version"),
        (422, "Invalid body or parameters"),
        (503, "Redis unreachable, or the admin API is disabled"),
    )
}


def _parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    raw = value.strip().removeprefix("W/").strip('"')
    if not raw.isdigit():
        raise InvalidRequest('If-Match must carry the experiment\'s version, e.g. "3"')
    return int(raw)


def admin_auth(settings: Settings) -> Callable[..., Awaitable[None]]:
    """The dependency every admin route carries: the bearer token, compared in constant time."""
    token = settings.admin_token.get_secret_value().encode() if settings.admin_token else None

    async def require_admin(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            if settings.insecure_admin:
                return
            raise StoreUnavailable(
                "the admin API is disabled: start the gateway with ABGATE_ADMIN_TOKEN set"
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token):
            raise Unauthorized("a valid `Authorization: Bearer <admin token>` header is required")

    return require_admin


def build_admin_router(gateway: Gateway) -> APIRouter:
    settings = gateway.settings
    if settings.admin_token is None and not settings.insecure_admin:
        logger.warning(
            "admin API disabled: ABGATE_ADMIN_TOKEN is not set (use --insecure-admin for a "
            "local setup without a token)"
        )
    elif settings.admin_token is None:
        logger.warning("admin API running WITHOUT authentication (--insecure-admin)")
    router = APIRouter(
        prefix="/admin",
        tags=["admin"],
        dependencies=[Depends(admin_auth(settings))],
        responses=ADMIN_ERRORS,
    )

    async def change(
        name: str,
        fn: ChangeFn,
        *,
        actor: str,
        action: str,
        reason: str,
        if_match: int | None = None,
    ) -> Experiment | None:
        """Apply `fn` through the store, then on this replica at once."""
        doc = await apply_change(
            gateway.store, name, fn, actor=actor, action=action, reason=reason, if_match=if_match
        )
        gateway.apply(doc)
        return doc.experiments.get(name)

    async def _eval_records(exp: Experiment | None) -> dict[str, EvalRecord]:
        if exp is not None and not exp.requires_eval_report:
            return {}
        try:
            return await load_records(gateway.redis)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis is unreachable ({exc})") from exc

    def _require(name: str, exp: Experiment | None) -> Experiment:
        if exp is None:
            raise NotFound(f"no experiment named {name!r}")
        return exp

    @router.get("/experiments", response_model=ExperimentList)
    async def list_experiments() -> ExperimentList:
        try:
            doc = await gateway.store.load()
            counts = await _arm_counts(gateway, list(doc.experiments))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis is unreachable ({exc})") from exc
        return ExperimentList(
            version=doc.version,
            experiments=[
                ExperimentStatus(experiment=e, arms=counts[n]) for n, e in doc.experiments.items()
            ],
        )

    @router.post("/experiments", status_code=201, response_model=Experiment)
    async def create_experiment(
        body: Experiment,
        response: Response,
        x_abgate_actor: Annotated[str, Header(max_length=200)] = "admin-api",
    ) -> Experiment:
        if body.state not in ("draft", "running"):
            raise Unprocessable(
                f"state: an experiment is created as draft or running, not {body.state}",
                param="state",
            )

        records = await _eval_records(body) if body.state == "running" else {}

        def create(current: Experiment | None, exps: dict[str, Experiment]) -> Experiment:
            if current is not None:
                raise Conflict(f"an experiment named {body.name!r} already exists")
            if body.state == "running":
                check_start(body, records)
            return body.model_copy(
                update={"version": 1, "updated_at": time.time(), "state_reason": "created"}
            )

        exp = _require(
            body.name,
            await change(body.name, create, actor=x_abgate_actor, action="create", reason=""),
        )
        response.headers["ETag"] = f'"{exp.version}"'
        return exp

    @router.get("/experiments/{name}", response_model=Experiment)
    async def get_experiment(name: ExperimentName, response: Response) -> Experiment:
        try:
            doc = await gateway.store.load()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis is unreachable ({exc})") from exc
        exp = _require(name, doc.experiments.get(name))
        response.headers["ETag"] = f'"{exp.version}"'
        return exp

    @router.patch("/experiments/{name}", response_model=Experiment)
    async def patch_experiment(
        name: ExperimentName,
        body: ExperimentPatch,
        response: Response,
        if_match: Annotated[str | None, Header(pattern=r'^(W/)?"?[0-9]{1,15}"?$')] = None,
        x_abgate_actor: Annotated[str, Header(max_length=200)] = "admin-api",
    ) -> Experiment:
        version = _parse_if_match(if_match)
        gated = body.treatment is not None or body.requires_eval_report is not None
        records = await _eval_records(None) if gated else {}

        def apply(current: Experiment | None, exps: dict[str, Experiment]) -> Experiment:
            before = _require(name, current)
            after = patch(before, body)
            live = after.state in ("running", "paused")
            if live and after.treatment.model != before.treatment.model:
                check_start(after, records)  # a new treatment model goes live: same gate
            return after

        exp = _require(
            name,
            await change(
                name, apply, actor=x_abgate_actor, action="patch", reason=body.reason,
                if_match=version,
            ),
        )  # fmt: skip
        response.headers["ETag"] = f'"{exp.version}"'
        return exp

    @router.delete("/experiments/{name}", response_model=Deleted)
    async def delete_experiment(
        name: ExperimentName,
        if_match: Annotated[str | None, Header(pattern=r'^(W/)?"?[0-9]{1,15}"?$')] = None,
        x_abgate_actor: Annotated[str, Header(max_length=200)] = "admin-api",
    ) -> Deleted:
        version = _parse_if_match(if_match)

        def remove(current: Experiment | None, exps: dict[str, Experiment]) -> None:
            exp = _require(name, current)
            if exp.state in ("running", "paused"):
                raise Conflict(
                    f"experiment {name!r} is {exp.state}; roll it back or promote it before "
                    "deleting it"
                )
            return None

        await change(
            name, remove, actor=x_abgate_actor, action="delete", reason="", if_match=version
        )
        return Deleted(deleted=name)

    def action_route(action: Action) -> None:
        async def act(
            name: ExperimentName,
            response: Response,
            body: ActionRequest | None = None,
            if_match: Annotated[str | None, Header(pattern=r'^(W/)?"?[0-9]{1,15}"?$')] = None,
            x_abgate_actor: Annotated[str, Header(max_length=200)] = "admin-api",
        ) -> Experiment:
            version = _parse_if_match(if_match)
            reason = body.reason if body is not None else ""
            gated = action in ("start", "resume")
            records = await _eval_records(None) if gated else {}

            def apply(current: Experiment | None, exps: dict[str, Experiment]) -> Experiment:
                exp = transition(_require(name, current), action, reason)
                if gated:
                    check_start(exp, records)
                return exp

            exp = _require(
                name,
                await change(
                    name, apply, actor=x_abgate_actor, action=action, reason=reason,
                    if_match=version,
                ),
            )  # fmt: skip
            response.headers["ETag"] = f'"{exp.version}"'
            return exp

        act.__name__ = f"{action}_experiment"
        router.add_api_route(
            f"/experiments/{{name}}/{action}",
            act,
            methods=["POST"],
            response_model=Experiment,
            summary=f"{action.capitalize()} an experiment",
        )

    actions: tuple[Action, ...] = ("start", "pause", "resume", "promote", "rollback", "advance")
    for action in actions:
        action_route(action)

    @router.get("/experiments/{name}/snapshot", response_model=ExperimentSnapshot)
    async def snapshot(
        name: ExperimentName, minutes: Annotated[int, Query(ge=0, le=10080)] = 0
    ) -> ExperimentSnapshot:
        """The experiment's aggregates as the analysis reads them."""
        exp = gateway.table.experiments.get(name)
        if exp is None:
            raise NotFound(f"no experiment named {name!r}")
        try:
            return await read_snapshot(gateway.redis, exp, minutes=minutes)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis is unreachable ({exc})") from exc

    @router.get("/audit", response_model=AuditList)
    async def audit(
        experiment: Annotated[str | None, Query(max_length=100)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> AuditList:
        try:
            rows = await read_audit(gateway.redis, experiment, limit)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis is unreachable ({exc})") from exc
        return AuditList(entries=[AuditRecord.model_validate(r) for r in rows])

    @router.get("/experiments/{name}/report", response_model=Report)
    async def report(name: ExperimentName) -> Report:
        """Per metric the arms, the difference, always-valid and fixed-horizon intervals and
        the verdict; the SRM check; the controller's decisions; the audit trail."""
        try:
            doc = await gateway.store.load()
            exp = doc.experiments.get(name)
            if exp is None:
                raise NotFound(f"no experiment named {name!r}")
            snapshot = await read_snapshot(gateway.redis, exp)
            raw = await gateway.redis.xrange(decisions_key(name))
            audit_rows = await read_audit(gateway.redis, name, 1000)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis is unreachable ({exc})") from exc
        decisions = [Decision.model_validate_json(f[b"json"]) for _, f in raw or [] if f]
        return build_report(
            exp.model_dump(mode="json"), snapshot, decisions, list(reversed(audit_rows)),
            time.time(),
        )  # fmt: skip

    return router


async def _arm_counts(gateway: Gateway, names: list[str]) -> dict[str, dict[str, ArmCounts]]:
    async with gateway.redis.pipeline(transaction=False) as pipe:
        for name in names:
            for arm in ("control", "treatment"):
                pipe.hmget(f"abgate:{{{name}}}:arm:{arm}", ["requests", "errors", "feedback"])
        rows = await pipe.execute()
    out: dict[str, dict[str, ArmCounts]] = {}
    it = iter(rows)
    for name in names:
        out[name] = {}
        for arm in ("control", "treatment"):
            req, err, fb = next(it)
            out[name][arm] = ArmCounts(
                requests=int(req or 0), errors=int(err or 0), feedback=int(fb or 0)
            )
    return out

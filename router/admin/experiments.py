"""Admin routes for the experiment documents: list, read, create, patch and delete, and
`POST /admin/experiments/{name}/share` (a PATCH of the treatment's share alone, audited as
`set-share`).

A write is audited with the name of the admin token it came with as its actor, and may carry
`If-Match` with the experiment's version (412 when stale); the answer carries the new version as
`ETag`. Experiments are answered with the targets' `api_key` masked (router/secrets.py).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from router import keys
from router.admin.deps import (
    ADMIN_AUTH,
    ADMIN_ERRORS,
    AdminActor,
    ExperimentName,
    GatewayDep,
    IfMatch,
    change,
    eval_records,
    parse_if_match,
    require_experiment,
)
from router.control.evalgate import check_start
from router.control.lifecycle import ExperimentPatch, ShareRequest, dropped_redaction, patch
from router.errors import Conflict, Unprocessable
from router.experiments import Experiment
from router.runtime.gateway import Gateway
from router.secrets import mask_experiment

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=ADMIN_AUTH, responses=ADMIN_ERRORS)

ARMS = ("control", "treatment")


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


class Deleted(BaseModel):
    deleted: str


@router.get("/experiments", response_model=ExperimentList)
async def list_experiments(gateway: GatewayDep) -> ExperimentList:
    doc = await gateway.store.load()
    counts = await _arm_counts(gateway, list(doc.experiments))
    return ExperimentList(
        version=doc.version,
        experiments=[
            ExperimentStatus(experiment=mask_experiment(e), arms=counts[n])
            for n, e in doc.experiments.items()
        ],
    )


@router.post("/experiments", status_code=201, response_model=Experiment)
async def create_experiment(
    body: Experiment,
    response: Response,
    gateway: GatewayDep,
    actor: AdminActor,
) -> Experiment:
    if body.state not in ("draft", "running"):
        raise Unprocessable(
            f"state: an experiment is created as draft or running, not {body.state}",
            param="state",
        )

    records = await eval_records(gateway, body) if body.state == "running" else {}

    def create(current: Experiment | None, exps: dict[str, Experiment]) -> Experiment:
        if current is not None:
            raise Conflict(f"an experiment named {body.name!r} already exists")
        if body.state == "running":
            check_start(body, records)
        return body.model_copy(
            update={"version": 1, "updated_at": time.time(), "state_reason": "created"}
        )

    exp = require_experiment(
        body.name,
        await change(gateway, body.name, create, actor=actor, action="create", reason=""),
    )
    response.headers["ETag"] = f'"{exp.version}"'
    return exp


@router.get("/experiments/{name}", response_model=Experiment)
async def get_experiment(
    name: ExperimentName, response: Response, gateway: GatewayDep
) -> Experiment:
    doc = await gateway.store.load()
    exp = require_experiment(name, doc.experiments.get(name))
    response.headers["ETag"] = f'"{exp.version}"'
    return mask_experiment(exp)


@router.patch("/experiments/{name}", response_model=Experiment)
async def patch_experiment(
    name: ExperimentName,
    body: ExperimentPatch,
    response: Response,
    gateway: GatewayDep,
    actor: AdminActor,
    if_match: IfMatch = None,
) -> Experiment:
    """A JSON merge patch (RFC 7396) of the experiment: objects merged member by member, `null`
    resets a member to its default, arrays and values replace (docs/admin.md). Sent as
    `application/json` or `application/merge-patch+json`. A change that removes redaction rules
    from a capture that stays on is audited as `drop-redaction` rather than `patch`."""
    version = parse_if_match(if_match)
    gated = body.treatment is not None or body.requires_eval_report is not None
    records = await eval_records(gateway, None) if gated else {}
    # The audit action depends on the current document: decided on a read here, and checked
    # again inside the transaction (a concurrent change that flips it answers 409).
    action = _patch_action((await gateway.store.load()).experiments.get(name), body)

    def apply(current: Experiment | None, exps: dict[str, Experiment]) -> Experiment:
        before = require_experiment(name, current)
        after = patch(before, body)
        if ("drop-redaction" if dropped_redaction(before, after) else "patch") != action:
            raise Conflict(
                f"experiment {name!r} changed while this PATCH was applied; read it and retry"
            )
        live = after.state in ("running", "paused")
        if live and after.treatment.model != before.treatment.model:
            check_start(after, records)  # a new treatment model goes live: same gate
        return after

    exp = require_experiment(
        name,
        await change(
            gateway, name, apply, actor=actor, action=action, reason=body.reason,
            if_match=version,
        ),
    )  # fmt: skip
    response.headers["ETag"] = f'"{exp.version}"'
    return exp


def _patch_action(current: Experiment | None, body: ExperimentPatch) -> str:
    """`drop-redaction` when the PATCH removes redaction rules from a capture that stays on,
    else `patch` (also when it is refused: the transaction then says why)."""
    if current is None:
        return "patch"
    try:
        after = patch(current, body)
    except (Conflict, Unprocessable):
        return "patch"
    return "drop-redaction" if dropped_redaction(current, after) else "patch"


@router.post(
    "/experiments/{name}/share", response_model=Experiment, summary="Set the treatment's share"
)
async def set_share(
    name: ExperimentName,
    body: ShareRequest,
    response: Response,
    gateway: GatewayDep,
    actor: AdminActor,
    if_match: IfMatch = None,
) -> Experiment:
    """What `abgate set-share` calls: the same change and checks as a PATCH of
    `treatment_percent`, named `set-share` in the audit log."""
    version = parse_if_match(if_match)
    share = ExperimentPatch(treatment_percent=body.treatment_percent)

    def apply(current: Experiment | None, exps: dict[str, Experiment]) -> Experiment:
        return patch(require_experiment(name, current), share)

    exp = require_experiment(
        name,
        await change(
            gateway, name, apply, actor=actor, action="set-share", reason=body.reason,
            if_match=version,
        ),
    )  # fmt: skip
    response.headers["ETag"] = f'"{exp.version}"'
    return exp


@router.delete("/experiments/{name}", response_model=Deleted)
async def delete_experiment(
    name: ExperimentName,
    gateway: GatewayDep,
    actor: AdminActor,
    if_match: IfMatch = None,
) -> Deleted:
    version = parse_if_match(if_match)

    def remove(current: Experiment | None, exps: dict[str, Experiment]) -> None:
        exp = require_experiment(name, current)
        if exp.state in ("running", "paused"):
            raise Conflict(
                f"experiment {name!r} is {exp.state}; roll it back or promote it before deleting it"
            )
        return None

    await change(gateway, name, remove, actor=actor, action="delete", reason="", if_match=version)
    return Deleted(deleted=name)


async def _arm_counts(gateway: Gateway, names: list[str]) -> dict[str, dict[str, ArmCounts]]:
    """Requests, errors and feedback per arm of each experiment, in one round trip."""
    async with gateway.redis.pipeline(transaction=False) as pipe:
        for name in names:
            for arm in ARMS:
                pipe.hmget(keys.arm_totals(name, arm), ["requests", "errors", "feedback"])
        rows = await pipe.execute()
    out: dict[str, dict[str, ArmCounts]] = {}
    it = iter(rows)
    for name in names:
        out[name] = {}
        for arm in ARMS:
            req, err, fb = next(it)
            out[name][arm] = ArmCounts(
                requests=int(req or 0), errors=int(err or 0), feedback=int(fb or 0)
            )
    return out

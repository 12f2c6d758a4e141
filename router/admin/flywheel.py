"""Admin routes of the offline gate and the data flywheel.

- `GET /admin/experiments/{name}/captures`: the experiment's captured requests and responses
  (redacted when they were stored) with the feedback signals they received; ``signals`` keeps
  only those that received at least one of the listed signals.
- `POST /admin/eval-reports`: register an `abgate eval` report; its verdicts are re-derived
  from the per-case grades and the gate recomputed (router/control/evalgate.py) in a worker
  process, so the event loop keeps proxying meanwhile; an older report than the one registered
  is refused (409). The body is read as bytes and parsed in that process too: parsing a
  report of megabytes is itself a stall.
- `GET /admin/eval-reports`: the registered reports, one per candidate model (the newest).

An experiment with ``requires_eval_report: true`` is refused a start (409) unless the newest
report registered for its treatment's model passed (router/control/evalgate.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from analysis.types import BUILTIN_SIGNALS
from router.admin.deps import (
    ADMIN_AUTH,
    ADMIN_ERRORS,
    ExperimentName,
    GatewayDep,
    require_experiment,
)
from router.control.evalgate import EvalRecord, Verifier, list_records, register_record
from router.errors import Conflict, Unprocessable
from router.signals.capture import read_captures

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=ADMIN_AUTH, responses=ADMIN_ERRORS)

# One per gateway process: its worker starts with the first registration.
_verifier = Verifier()


def stop_verifier() -> None:
    """Stop the verification worker at shutdown (it would otherwise outlive the app until exit)."""
    _verifier.close()


# The body is read raw (see the module's docstring); this documents it in the OpenAPI.
_REPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The report.json written by `abgate eval`",
        "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}}
        },
    }
}


class CaptureList(BaseModel):
    experiment: str
    items: list[dict[str, Any]]


class EvalRecordList(BaseModel):
    reports: list[EvalRecord]


@router.get("/experiments/{name}/captures", response_model=CaptureList)
async def captures(
    name: ExperimentName,
    gateway: GatewayDep,
    signals: Annotated[
        str | None,
        Query(max_length=1000, description="Comma-separated; keep items with any of them"),
    ] = None,
    arm: Annotated[str | None, Query(pattern="^(control|treatment)$")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> CaptureList:
    wanted = {s.strip() for s in signals.split(",") if s.strip()} if signals else set()
    doc = await gateway.store.load()
    exp = require_experiment(name, doc.experiments.get(name))
    unknown = sorted(wanted - set(BUILTIN_SIGNALS) - set(exp.signals))
    if unknown:
        raise Unprocessable(
            f"signals: {', '.join(unknown)} is not a signal of experiment {name!r}",
            param="signals",
        )
    items = await read_captures(gateway.redis, name, limit)
    if wanted:
        items = [i for i in items if wanted & set(i["signals"])]
    if arm:
        items = [i for i in items if i["arm"] == arm]
    return CaptureList(experiment=name, items=items)


@router.post(
    "/eval-reports", status_code=201, response_model=EvalRecord, openapi_extra=_REPORT_BODY
)
async def register(request: Request, gateway: GatewayDep) -> EvalRecord:
    record = await _verifier.verify(await request.body())
    kept = await register_record(gateway.redis, record)
    if kept is not record:
        raise Conflict(
            f"a report on {record.candidate!r} that finished later ({kept.finished_at}) is "
            "already registered; the newest result stands"
        )
    return record


@router.get("/eval-reports", response_model=EvalRecordList)
async def reports(
    gateway: GatewayDep,
    model: Annotated[str | None, Query(max_length=300)] = None,
) -> EvalRecordList:
    records = await list_records(gateway.redis)
    if model is not None:
        records = [r for r in records if r.candidate == model]
    return EvalRecordList(reports=records)

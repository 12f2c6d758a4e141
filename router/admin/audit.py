"""`GET /admin/audit`: the newest entries of the audit log (every change, by whom and why),
optionally of one experiment."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from router.admin.deps import ADMIN_AUTH, ADMIN_ERRORS, GatewayDep
from router.control.store import read_audit

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=ADMIN_AUTH, responses=ADMIN_ERRORS)


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


@router.get("/audit", response_model=AuditList)
async def audit(
    gateway: GatewayDep,
    experiment: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditList:
    rows = await read_audit(gateway.redis, experiment, limit)
    return AuditList(entries=[AuditRecord.model_validate(r) for r in rows])

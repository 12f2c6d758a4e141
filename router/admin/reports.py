"""Admin routes that read an experiment's results: the raw aggregates (`snapshot`) and the full
report (per-metric intervals and verdicts, the SRM check, the controller's decisions, the audit
trail)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query

from analysis.report import Report, build_report
from analysis.types import Decision, ExperimentSnapshot
from router import keys
from router.admin.deps import (
    ADMIN_AUTH,
    ADMIN_ERRORS,
    ExperimentName,
    GatewayDep,
    require_experiment,
)
from router.control.controller import read_looks, read_step
from router.control.periods import read_periods
from router.control.store import read_audit
from router.secrets import mask_experiment
from router.signals.readmodel import read_snapshot

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=ADMIN_AUTH, responses=ADMIN_ERRORS)


@router.get("/experiments/{name}/snapshot", response_model=ExperimentSnapshot)
async def snapshot(
    name: ExperimentName,
    gateway: GatewayDep,
    minutes: Annotated[int, Query(ge=0, le=10080)] = 0,
) -> ExperimentSnapshot:
    """The experiment's aggregates as the analysis reads them."""
    exp = require_experiment(name, gateway.table.experiments.get(name))
    return await read_snapshot(gateway.redis, exp, minutes=minutes)


@router.get("/experiments/{name}/report", response_model=Report)
async def report(name: ExperimentName, gateway: GatewayDep) -> Report:
    """Per metric the arms, the difference, always-valid and fixed-horizon intervals and
    the verdict (tested from the policy's `min_evidence_units`, as the controller does); the
    controller's SRM check on the current ramp step; every share change and adapter swap; the
    controller's decisions; the audit trail."""
    doc = await gateway.store.load()
    exp = require_experiment(name, doc.experiments.get(name))
    snap = await read_snapshot(gateway.redis, exp)
    raw = await gateway.redis.xrange(keys.decisions(name))
    audit_rows = await read_audit(gateway.redis, name, 1000)
    decisions = [Decision.model_validate_json(f[b"json"]) for _, f in raw or [] if f]
    step = await read_step(gateway.redis, name)  # the controller's: same SRM, same units
    looks = await read_looks(gateway.redis, name)  # and the same always-valid tests
    shown = mask_experiment(exp).model_dump(mode="json")
    periods = await read_periods(gateway.redis, name)
    return build_report(
        shown, snap, decisions, list(reversed(audit_rows)), time.time(), step, looks,
        periods=periods,
    )  # fmt: skip

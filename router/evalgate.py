"""The link between the offline gate and the online experiment.

`abgate eval ... --register` posts its report to the admin API; the gateway re-checks it (the
gate verdict is recomputed from the report's suites with `analysis.eval.verdict.gate`, so a
hand-edited ``passed`` flag changes nothing) and keeps the newest record per candidate model in
the Redis hash ``abgate:eval:reports``. An experiment with ``requires_eval_report: true`` can only
start (or be created running) when the newest record for its treatment's model passed.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, ValidationError

from analysis.eval.report import EvalReport
from analysis.eval.verdict import gate
from router.errors import Conflict, Unprocessable
from router.experiments import Experiment

__all__ = ["REPORTS_KEY", "EvalRecord", "check_start", "list_records", "record_from_report"]

REPORTS_KEY = "abgate:eval:reports"


class SuiteVerdict(BaseModel):
    suite: str
    role: str
    verdict: str
    delta_points: float
    n: int


class EvalRecord(BaseModel):
    """What the gateway keeps of a registered report."""

    candidate: str
    base: str
    spec: str
    passed: bool
    reasons: list[str]
    fingerprint: str
    grader_config_hash: str
    report_sha256: str
    finished_at: str
    registered_at: float
    suites: list[SuiteVerdict]


def record_from_report(raw: dict[str, Any]) -> EvalRecord:
    """Validate a posted report and recompute its gate; `Unprocessable` names the problem."""
    try:
        report = EvalReport.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise Unprocessable(f"not an abgate eval report: {where}: {first['msg']}") from None
    # Contamination and fingerprint problems are in the reasons the runner recorded; suite
    # verdicts are re-derived here.
    recomputed = gate(
        report.suites,
        contamination_ok=not any(r.startswith("contamination") for r in report.gate.reasons),
        fingerprint_ok=not any(r.startswith("fingerprint") for r in report.gate.reasons),
    )
    return EvalRecord(
        candidate=report.candidate_model,
        base=report.base_model,
        spec=report.spec_name,
        passed=recomputed.passed,
        reasons=recomputed.reasons,
        fingerprint=report.fingerprint,
        grader_config_hash=report.grader_config_hash,
        report_sha256=hashlib.sha256(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)).hexdigest(),
        finished_at=report.finished_at.isoformat(),
        registered_at=time.time(),
        suites=[
            SuiteVerdict(
                suite=s.name, role=s.role, verdict=s.verdict, delta_points=s.delta_points, n=s.n
            )
            for s in report.suites
        ],
    )


async def register_record(redis: aioredis.Redis, record: EvalRecord) -> None:
    await redis.hset(REPORTS_KEY, record.candidate, record.model_dump_json())


async def list_records(redis: aioredis.Redis) -> list[EvalRecord]:
    raw = await redis.hgetall(REPORTS_KEY)
    records = [EvalRecord.model_validate_json(v) for v in raw.values()]
    return sorted(records, key=lambda r: r.registered_at, reverse=True)


async def load_records(redis: aioredis.Redis) -> dict[str, EvalRecord]:
    return {r.candidate: r for r in await list_records(redis)}


def check_start(exp: Experiment, records: dict[str, EvalRecord]) -> None:
    """`Conflict` when ``exp`` needs a passing eval report for its treatment and has none."""
    if not exp.requires_eval_report:
        return
    model = exp.treatment.model
    record = records.get(model)
    if record is None:
        raise Conflict(
            f"experiment {exp.name!r} requires a passing offline eval report for its treatment "
            f"model {model!r}, and none is registered: run `abgate eval ... --candidate {model} "
            "--register`"
        )
    if not record.passed:
        raise Conflict(
            f"experiment {exp.name!r} requires a passing offline eval report for {model!r}; the "
            f"newest one (spec {record.spec!r}, {record.finished_at}) failed: "
            + "; ".join(record.reasons)
        )

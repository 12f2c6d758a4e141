"""The link between the offline gate and the online experiment.

`abgate eval ... --register` posts its report to the admin API; the gateway re-checks it: every
suite's verdict is re-derived from its per-case grades and thresholds (a report whose verdicts do
not follow is refused with 422), the gate is recomputed from the suites, and the report passes
only if both the runner's gate and the recomputed one passed (so a hand-edited ``passed`` flag or
verdict changes nothing). The record with the newest ``finished_at`` per candidate model is kept
in one Redis hash (`keys.EVAL_REPORTS`). An experiment with ``requires_eval_report: true`` can
only start, resume, be created running, or get a new treatment model while live, when that record
passed and compared the candidate with the experiment's control model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, ValidationError
from redis.exceptions import WatchError

from analysis.eval.report import EvalReport
from analysis.eval.verdict import gate, judge_suite
from router import keys
from router.errors import Conflict, Unprocessable
from router.experiments import Experiment

__all__ = ["REPORTS_KEY", "EvalRecord", "check_start", "list_records", "record_from_report"]

REPORTS_KEY = keys.EVAL_REPORTS


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
    # Each suite's verdict must follow from its per-case grades with its own thresholds.
    for suite in report.suites:
        redone = judge_suite(
            suite.name, suite.role, suite.thresholds, suite.kind,
            [None if r.base_error else r.base for r in suite.rows],
            [None if r.candidate_error else r.candidate for r in suite.rows],
        )  # fmt: skip
        if redone.verdict != suite.verdict:
            raise Unprocessable(
                f"suite {suite.name!r}: the report says {suite.verdict!r}, its per-case grades "
                f"say {redone.verdict!r}"
            )
    recomputed = gate(report.suites)
    # the runner's own reasons (contamination, fingerprint, a changed grader) stand as well
    reasons = list(dict.fromkeys([*report.gate.reasons, *recomputed.reasons]))
    return EvalRecord(
        candidate=report.candidate_model,
        base=report.base_model,
        spec=report.spec_name,
        passed=report.gate.passed and recomputed.passed,
        reasons=reasons,
        fingerprint=report.fingerprint,
        grader_config_hash=report.grader_config_hash,
        report_sha256=hashlib.sha256(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)).hexdigest(),
        finished_at=report.finished_at.astimezone(dt.UTC).isoformat(),
        registered_at=time.time(),
        suites=[
            SuiteVerdict(
                suite=s.name, role=s.role, verdict=s.verdict, delta_points=s.delta_points, n=s.n
            )
            for s in report.suites
        ],
    )


async def register_record(redis: aioredis.Redis, record: EvalRecord) -> EvalRecord:
    """Keep ``record`` unless a report that finished later is already registered for the same
    candidate; the one kept is returned."""
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(REPORTS_KEY)
                raw = await pipe.hget(REPORTS_KEY, record.candidate)
                current = EvalRecord.model_validate_json(raw) if raw else None
                if current is not None and current.finished_at > record.finished_at:
                    await pipe.unwatch()  # type: ignore[no-untyped-call]
                    return current
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.hset(REPORTS_KEY, record.candidate, record.model_dump_json())
                await pipe.execute()
                return record
            except WatchError:
                continue


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
    if record.base != exp.control.model:
        raise Conflict(
            f"experiment {exp.name!r}: the newest eval report for {model!r} compared it with "
            f"{record.base!r}, but the experiment's control is {exp.control.model!r}; run "
            f"`abgate eval --base {exp.control.model} --candidate {model} ... --register`"
        )
    if not record.passed:
        raise Conflict(
            f"experiment {exp.name!r} requires a passing offline eval report for {model!r}; the "
            f"newest one (spec {record.spec!r}, {record.finished_at}) failed: "
            + "; ".join(record.reasons)
        )

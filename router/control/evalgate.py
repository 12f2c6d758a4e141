"""The link between the offline gate and the online experiment.

`abgate eval ... --register` posts its report to the admin API; the gateway re-checks it: every
suite's verdict is re-derived from its per-case grades and thresholds (a report whose verdicts do
not follow is refused with 422), the gate is recomputed from the suites, and the report passes
only if both the runner's gate and the recomputed one passed (so a hand-edited ``passed`` flag or
verdict changes nothing). The record with the newest ``finished_at`` per candidate model is
kept in one Redis hash (`keys.EVAL_REPORTS`). An experiment with ``requires_eval_report: true``
can only start, resume, be created running, or get a new treatment model while live, when that
record passed and compared the candidate with the experiment's control model.

Re-deriving a verdict is a bootstrap of 10,000 resamples per suite: seconds of CPU for a large
report. `Verifier` runs it in a worker process of its own, not on the event loop that proxies
traffic, and not in a thread either: validating the report (pydantic) holds the GIL for its
whole call, which stalled the loop for 150 ms on a 15 MB report, and a CPU-bound thread makes
every I/O wake-up of the loop wait for the GIL. The process is started on first use (spawn:
forking a process that runs an event loop and threads is unsafe) and stopped when idle.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import multiprocessing
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, ValidationError
from redis.exceptions import WatchError

from router import keys
from router.errors import Conflict, GatewayError, Unprocessable
from router.experiments import Experiment

__all__ = [
    "REPORTS_KEY",
    "EvalRecord",
    "Verifier",
    "check_start",
    "list_records",
    "record_from_report",
    "verify_report",
]

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
    # imported here: only the verifying process needs the statistics stack
    from analysis.eval.report import EvalReport
    from analysis.eval.verdict import gate, judge_suite

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


def verify_report(body: bytes) -> EvalRecord:
    """A posted body as a verified record (what the verifying process runs)."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"not an abgate eval report: the body is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise Unprocessable("not an abgate eval report: body: must be a JSON object")
    return record_from_report(raw)


class VerifierUnavailable(GatewayError):
    """The worker died while verifying (503): nothing was registered; a retry starts another."""

    status = 503
    type = "unavailable_error"
    code = "unavailable"


def _ignore_interrupts() -> None:
    """Ctrl-C in a terminal reaches the whole process group: the gateway shuts its worker
    down itself, so the worker must not die mid-task with a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Verifier:
    """`verify_report` in one worker process, started on first use and stopped after
    `idle_seconds` without work (it holds the statistics stack: tens of MiB). One worker: a
    gateway instance verifies one report at a time, the others wait their turn."""

    def __init__(self, idle_seconds: float = 60.0) -> None:
        self.idle_seconds = idle_seconds
        self._pool: ProcessPoolExecutor | None = None
        self._running = 0
        self._idle: asyncio.TimerHandle | None = None

    async def verify(self, body: bytes) -> EvalRecord:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._running += 1
        try:
            return await self._run(body)
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle = asyncio.get_running_loop().call_later(self.idle_seconds, self.close)

    async def _run(self, body: bytes) -> EvalRecord:
        loop = asyncio.get_running_loop()
        pool = self._start()
        try:
            job = loop.run_in_executor(pool, verify_report, body)
        except BrokenProcessPool:  # the worker died while idle: this report is not the cause
            self._discard(pool)
            pool = self._start()
            job = loop.run_in_executor(pool, verify_report, body)
        try:
            return await job
        except BrokenProcessPool as exc:
            self._discard(pool)
            raise VerifierUnavailable(
                "the process verifying eval reports stopped while it verified this one (out of "
                "memory?); nothing was registered"
            ) from exc

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_interrupts,
            )
        return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker (a later `verify` starts another); does not wait for it."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._pool is not None:
            self._discard(self._pool)


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

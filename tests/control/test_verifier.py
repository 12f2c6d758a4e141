"""The eval report verifier's worker process: the same answers as verifying in the caller,
refusals that keep their message, and a worker that stops when idle or dies comes back."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal

import orjson
import pytest

from analysis.eval.report import EvalReport
from analysis.eval.spec import Thresholds
from analysis.eval.types import Grade
from analysis.eval.verdict import gate, judge_suite
from router.control.evalgate import Verifier, record_from_report
from router.errors import Unprocessable

PASS = Grade(passed=True, score=1.0)
FAIL = Grade(passed=False, score=0.0)


def small_report() -> bytes:
    base = [PASS] * 60 + [FAIL] * 40
    cand = [PASS] * 90 + [FAIL] * 10
    suites = [judge_suite("target", "target", Thresholds(), "pass_fail", base, cand)]
    start = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
    report = EvalReport(
        spec_name="small", base_model="base", candidate_model="cand-small",
        started_at=start, finished_at=start + dt.timedelta(minutes=1),
        fingerprint="ab" * 32, grader_config_hash="cd" * 32, suites=suites, gate=gate(suites),
    )  # fmt: skip
    return report.to_json().encode()


async def test_the_worker_verifies_stops_when_idle_and_comes_back() -> None:
    body = small_report()
    expected = record_from_report(orjson.loads(body))
    verifier = Verifier(idle_seconds=0.3)
    try:
        got = await verifier.verify(body)
        assert got.model_dump(exclude={"registered_at"}) == expected.model_dump(
            exclude={"registered_at"}
        )
        assert got.passed and got.suites[0].verdict == "win"

        with pytest.raises(Unprocessable, match="the report says 'forgetting'"):
            forged = orjson.loads(body)
            forged["suites"][0]["verdict"] = "forgetting"
            await verifier.verify(orjson.dumps(forged))
        with pytest.raises(Unprocessable, match="not an abgate eval report: the body is not JSON"):
            await verifier.verify(b"{nope")

        await asyncio.sleep(0.6)
        assert verifier._pool is None, "the idle worker was not stopped"
        assert (await verifier.verify(body)).passed  # a new worker

        # a worker killed while idle is replaced; the report is not blamed for it
        pool = verifier._pool
        assert pool is not None
        for pid in list(pool._processes):
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        assert (await verifier.verify(body)).passed
    finally:
        verifier.close()

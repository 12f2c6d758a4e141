"""Registering an eval report does not stall the gateway: the verification (a bootstrap of 10,000
resamples per suite) runs outside the event loop that answers requests."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from analysis.eval.report import EvalReport
from analysis.eval.spec import Thresholds
from analysis.eval.types import Grade
from analysis.eval.verdict import Role, SuiteResult, gate, judge_suite
from router.control.evalgate import record_from_report
from router.runtime.embedded_redis import EmbeddedRedis
from tests.procs import Proc, gateway

pytestmark = pytest.mark.integration

TOKEN = "offloop-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
SUITES, CASES = 8, 2000  # about 1.5 s of verification on these machines


def big_report() -> bytes:
    """A report of score-graded suites: each one costs the gateway a full bootstrap."""

    def suite(i: int) -> SuiteResult:
        rnd = random.Random(i)
        base = [Grade(passed=True, score=round(rnd.random(), 3)) for _ in range(CASES)]
        cand = [Grade(passed=True, score=round(rnd.random(), 3)) for _ in range(CASES)]
        role: Role = "target" if i == 0 else "regression"
        return judge_suite(f"suite-{i}", role, Thresholds(), "score", base, cand)

    suites = [suite(i) for i in range(SUITES)]
    start = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
    report = EvalReport(
        spec_name="offloop", base_model="base", candidate_model="cand-offloop",
        started_at=start, finished_at=start + dt.timedelta(minutes=5),
        fingerprint="ab" * 32, grader_config_hash="cd" * 32,
        suites=suites, gate=gate(suites),
    )  # fmt: skip
    return report.to_json().encode()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("offloop")
    with (
        EmbeddedRedis(appendonly=False, data_dir=tmp / "redis") as rds,
        gateway(tmp, {}, rds.url, admin_token=TOKEN) as proc,
    ):
        yield proc


class Prober(threading.Thread):
    """Asks the gateway's `/healthz` without pause; keeps the slowest answer's time."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.slowest = 0.0
        self.count = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                assert client.get(self.url + "/healthz").status_code == 200
                self.slowest = max(self.slowest, time.perf_counter() - t0)
                self.count += 1
                time.sleep(0.005)


def register(gw: Proc, body: bytes) -> tuple[httpx.Response, Prober]:
    prober = Prober(gw.url)
    prober.start()
    time.sleep(0.1)
    try:
        resp = httpx.post(gw.url + "/admin/eval-reports", content=body, headers=AUTH, timeout=120)
    finally:
        prober.stop.set()
        prober.join()
    return resp, prober


def test_the_loop_keeps_answering_while_a_report_is_verified(gw: Proc) -> None:
    body = big_report()
    t0 = time.perf_counter()
    expected = record_from_report(orjson.loads(body))
    verification = time.perf_counter() - t0
    assert verification > 0.5, f"the report is too small to show a stall ({verification:.2f} s)"

    # twice: the first registration also starts the verifying process
    for _ in range(2):
        resp, prober = register(gw, body)
        assert resp.status_code == 201, resp.text
        got = resp.json()
        assert (got["passed"], got["report_sha256"]) == (expected.passed, expected.report_sha256)
        assert [s["verdict"] for s in got["suites"]] == [s.verdict for s in expected.suites]
        assert prober.count > 10
        assert prober.slowest < verification / 5, (
            f"/healthz waited {prober.slowest:.3f} s during a verification of "
            f"{verification:.3f} s: the event loop was blocked"
        )


def test_refusals_still_name_the_problem(gw: Proc) -> None:
    """What the verifying process refuses reaches the client as before (422, the reason)."""
    url = gw.url + "/admin/eval-reports"
    for content, says in (
        (b'{"spec_name": "x"}', "not an abgate eval report"),
        (b"[1, 2]", "not an abgate eval report"),
        (b"{not json", "not an abgate eval report"),
    ):
        resp = httpx.post(url, content=content, headers=AUTH, timeout=30)
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert says in error["message"] and error["request_id"] == resp.headers["x-request-id"]
